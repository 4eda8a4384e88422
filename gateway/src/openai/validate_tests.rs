//! Validation of the issue's bad-input list, one case at a time: each is refused with a
//! message naming the field (and the limit where there is one).

use super::*;

const CTX: u32 = 2048;

fn chat_err(body: &str) -> ApiError {
    chat(body.as_bytes(), &Limits::default(), CTX).expect_err(body)
}

fn param(e: &ApiError) -> String {
    e.param().unwrap_or("").to_string()
}

fn ok_chat(extra: &str) -> ValidRequest {
    let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
    chat(body.as_bytes(), &Limits::default(), CTX).unwrap()
}

#[test]
fn a_plain_chat_gets_defaults() {
    let v = ok_chat("");
    assert_eq!(v.endpoint, Endpoint::Chat);
    assert_eq!(v.params.n, 1);
    assert_eq!(v.params.max_tokens, 256);
    assert_eq!(v.params.temperature, 1.0);
    assert!(!v.stream && !v.include_usage);
    assert_eq!(
        v.prompt,
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "hi".into()
        }])
    );
}

#[test]
fn every_field_the_issue_lists_is_accepted() {
    let v = ok_chat(
        r#","max_completion_tokens":7,"max_tokens":99,"temperature":0,"top_p":0.5,"seed":-3,
            "stop":["a","b"],"n":2,"presence_penalty":0,"frequency_penalty":0.0,
            "logprobs":true,"top_logprobs":3,"user":"u1","stream":true,
            "stream_options":{"include_usage":true}"#,
    );
    assert_eq!(v.params.max_tokens, 7, "max_completion_tokens wins");
    assert_eq!(v.params.temperature, 0.0);
    assert_eq!(v.params.top_p, 0.5);
    assert_eq!(v.params.seed, Some((-3i64) as u64));
    assert_eq!(v.params.stop, vec!["a".to_string(), "b".into()]);
    assert_eq!(v.params.n, 2);
    assert_eq!(v.params.logprobs, Some(3));
    assert_eq!(v.user.as_deref(), Some("u1"));
    assert!(v.stream && v.include_usage);
    let v = ok_chat(r#","stop":"END""#);
    assert_eq!(v.params.stop, vec!["END".to_string()]);
    // Content as a list of text parts is flattened.
    let body = r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#;
    let v = chat(body.as_bytes(), &Limits::default(), CTX).unwrap();
    assert_eq!(
        v.prompt,
        Prompt::Chat(vec![ChatMessage {
            role: "system".into(),
            content: "ab".into()
        }])
    );
}

#[test]
fn malformed_bodies_are_refused_naming_the_problem() {
    for (body, needle) in [
        ("", "empty"),
        ("   ", "empty"),
        (r#"{"model":"m","messages":[{"ro"#, "not valid JSON"),
        ("[1,2]", "does not match"),
        (r#"{"model":"m","messages":[]} x"#, "trailing"),
    ] {
        let e = chat_err(body);
        assert_eq!(e.status().as_u16(), 400, "{body}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    // Deeply nested JSON stops at serde_json's recursion limit, not the stack.
    let deep = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":{}1{}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = chat_err(&deep);
    assert!(e.to_string().contains("recursion limit"), "{e}");
    // Invalid UTF-8.
    let mut bytes = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#""}]}"#);
    let e = chat(&bytes, &Limits::default(), CTX).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
}

#[test]
fn wrong_types_and_unknown_fields_name_the_field() {
    let e =
        chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#);
    assert_eq!(param(&e), "temperature", "{e}");
    let e = chat_err(r#"{"model":5,"messages":[]}"#);
    assert_eq!(param(&e), "model", "{e}");
    let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[]}"#);
    assert!(e.to_string().contains("unknown field `tools`"), "{e}");
    let e = chat_err(r#"{"model":"m"}"#);
    assert!(e.to_string().contains("missing field `messages`"), "{e}");
    let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#);
    assert_eq!(param(&e), "stream", "{e}");
}

#[test]
fn out_of_range_numbers_name_the_field_and_the_range() {
    for (extra, field, needle) in [
        (r#","max_tokens":0"#, "max_tokens", "1..=2048"),
        (r#","max_tokens":-5"#, "max_tokens", "1..=2048"),
        (
            r#","max_tokens":9223372036854775808"#,
            "max_tokens",
            "9223372036854775808",
        ),
        (r#","max_tokens":1.5"#, "max_tokens", "integer"),
        (
            r#","max_completion_tokens":4096"#,
            "max_completion_tokens",
            "context window",
        ),
        (r#","temperature":-0.1"#, "temperature", "0..=2"),
        (r#","top_p":1.5"#, "top_p", "(0, 1]"),
        (r#","top_p":0"#, "top_p", "(0, 1]"),
        (r#","n":10000"#, "n", "1..=16"),
        (r#","n":0"#, "n", "1..=16"),
        (
            r#","top_logprobs":50,"logprobs":true"#,
            "top_logprobs",
            "0..=20",
        ),
        (r#","top_logprobs":2"#, "top_logprobs", "needs logprobs"),
        (
            r#","presence_penalty":0.5"#,
            "presence_penalty",
            "not supported",
        ),
        (
            r#","frequency_penalty":-1"#,
            "frequency_penalty",
            "not supported",
        ),
        (
            r#","stream_options":{"include_usage":true}"#,
            "stream_options",
            "stream is true",
        ),
    ] {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}]{extra}}}"#);
        let e = chat_err(&body);
        assert_eq!(e.status().as_u16(), 400, "{extra}");
        assert_eq!(param(&e), field, "{extra}: {e}");
        assert!(e.to_string().contains(needle), "{extra}: {e}");
    }
    // NaN is not JSON; a huge exponent does not parse either.
    let e =
        chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":NaN}"#);
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let e =
        chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":1e999}"#);
    assert_eq!(e.status().as_u16(), 400, "{e}");
}

#[test]
fn stop_strings_are_bounded() {
    let many: Vec<String> = (0..10_000).map(|i| format!("\"s{i}\"")).collect();
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stop":[{}]}}"#,
        many.join(",")
    );
    let e = chat_err(&body);
    assert_eq!(param(&e), "stop");
    assert!(
        e.to_string().contains("10000") && e.to_string().contains("at most 4"),
        "{e}"
    );
    let big = "y".repeat(1 << 20);
    let body =
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"stop":"{big}"}}"#);
    let e = chat_err(&body);
    assert_eq!(param(&e), "stop[0]");
    assert!(
        e.to_string().contains("1048576 bytes") && e.to_string().contains("256"),
        "{e}"
    );
    let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[""]}"#);
    assert_eq!(param(&e), "stop[0]");
}

#[test]
fn messages_are_checked_one_by_one() {
    let e = chat_err(r#"{"model":"m","messages":[]}"#);
    assert_eq!(param(&e), "messages");
    assert!(e.to_string().contains("empty"));
    let e = chat_err(
        r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]}"#,
    );
    assert_eq!(param(&e), "messages[1].role");
    assert!(e.to_string().contains("wizard"), "{e}");
    let e = chat_err(r#"{"model":"m","messages":[{"role":"user","content":"a\u0000b"}]}"#);
    assert_eq!(param(&e), "messages[0].content");
    assert!(e.to_string().contains("NUL"), "{e}");
    let e = chat_err(r#"{"model":"m","messages":[{"role":"user"}]}"#);
    assert_eq!(param(&e), "messages[0].content");
    let e =
        chat_err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#);
    assert_eq!(param(&e), "messages[0].content[0]");
}

#[test]
fn completions_take_one_text_prompt() {
    let l = Limits::default();
    let v = completion(
        br#"{"model":"m","prompt":"Once","logprobs":2,"max_tokens":5}"#,
        &l,
        CTX,
    )
    .unwrap();
    assert_eq!(v.endpoint, Endpoint::Completion);
    assert_eq!(v.prompt, Prompt::Text("Once".into()));
    assert_eq!(v.params.logprobs, Some(2));
    assert_eq!(v.params.max_tokens, 5);
    let v = completion(br#"{"model":"m","prompt":["Once"]}"#, &l, CTX).unwrap();
    assert_eq!(v.prompt, Prompt::Text("Once".into()));
    for (body, needle) in [
        (
            r#"{"model":"m","prompt":["a","b"]}"#,
            "one prompt per request",
        ),
        (r#"{"model":"m","prompt":[[1,2,3]]}"#, "token-id"),
        (r#"{"model":"m","prompt":[]}"#, "empty list"),
        (r#"{"model":"m","prompt":"a\u0000"}"#, "NUL"),
        (r#"{"model":"m","prompt":"a","logprobs":6}"#, "0..=5"),
        (
            r#"{"model":"m","prompt":"a","echo":true}"#,
            "unknown field `echo`",
        ),
    ] {
        let e = completion(body.as_bytes(), &l, CTX).unwrap_err();
        assert_eq!(e.status().as_u16(), 400, "{body}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
}
