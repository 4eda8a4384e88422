//! The issue's bad-input list against a live `tributary dev --base-model`: each request gets
//! a 4xx in OpenAI's error shape naming the problem, and the server keeps serving (a
//! valid request after each one is answered; an abandoned stream frees its slot).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// One raw HTTP/1.1 request (body as bytes, so invalid UTF-8 can be sent).
fn raw(port: u16, path: &str, key: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body; a reset then is fine.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// What is wrong, the path, the body, the key, the status expected, and a word the error
/// message must contain.
type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<&'a str>, u16, &'a str);

fn chat_with(extra: &str) -> String {
    format!(r#"{{"model":"tiny-llama","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#)
}

#[test]
fn every_bad_input_gets_a_4xx_naming_it_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-llama");
    let dev = Dev::start_with(tmp.path(), 1, &["--base-model", base.to_str().unwrap()]);
    let key = dev.key();
    let (port, k) = (dev.port, Some(key.as_str()));
    let chat = "/v1/chat/completions";
    let nested = format!(
        r#"{{"model":"tiny-llama","messages":[{{"role":"user","content":{}1{}}}]}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let stops: Vec<String> = (0..10_000).map(|i| format!("\"s{i}\"")).collect();
    let many_stops = chat_with(&format!(r#","stop":[{}]"#, stops.join(",")));
    let huge_stop = chat_with(&format!(r#","stop":"{}""#, "y".repeat(1 << 20)));
    let mut bad_utf8 = br#"{"model":"tiny-llama","messages":[{"role":"user","content":"a"#.to_vec();
    bad_utf8.extend_from_slice(&[0xc3, 0x28]);
    bad_utf8.extend_from_slice(br#""}]}"#);
    let over_limit = chat_with(&format!(r#","user":"{}""#, "u".repeat(5 << 20)));
    let long_prompt = format!(
        r#"{{"model":"tiny-llama","prompt":"{}","max_tokens":200}}"#,
        "word ".repeat(200)
    );
    let cases: Vec<Case> = vec![
        ("empty body", chat, b"".to_vec(), k, 400, "empty"),
        (
            "truncated JSON",
            chat,
            br#"{"model":"tiny-llama","messa"#.to_vec(),
            k,
            400,
            "not valid JSON",
        ),
        (
            "deeply nested JSON",
            chat,
            nested.into_bytes(),
            k,
            400,
            "recursion limit",
        ),
        (
            "wrong type",
            chat,
            chat_with(r#","temperature":"hot""#).into_bytes(),
            k,
            400,
            "temperature",
        ),
        (
            "unknown field",
            chat,
            chat_with(r#","tools":[]"#).into_bytes(),
            k,
            400,
            "unknown field `tools`",
        ),
        (
            "unknown model",
            chat,
            br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            k,
            404,
            "`nope`",
        ),
        (
            "max_tokens 0",
            chat,
            chat_with(r#","max_tokens":0"#).into_bytes(),
            k,
            400,
            "max_tokens",
        ),
        (
            "max_tokens negative",
            chat,
            chat_with(r#","max_tokens":-1"#).into_bytes(),
            k,
            400,
            "max_tokens",
        ),
        (
            "max_tokens 2^63",
            chat,
            chat_with(r#","max_tokens":9223372036854775808"#).into_bytes(),
            k,
            400,
            "9223372036854775808",
        ),
        (
            "temperature < 0",
            chat,
            chat_with(r#","temperature":-0.5"#).into_bytes(),
            k,
            400,
            "temperature",
        ),
        (
            "temperature NaN",
            chat,
            chat_with(r#","temperature":NaN"#).into_bytes(),
            k,
            400,
            "not valid JSON",
        ),
        (
            "top_p > 1",
            chat,
            chat_with(r#","top_p":1.5"#).into_bytes(),
            k,
            400,
            "top_p",
        ),
        (
            "n 10000",
            chat,
            chat_with(r#","n":10000"#).into_bytes(),
            k,
            400,
            "n = 10000",
        ),
        (
            "10,000 stop strings",
            chat,
            many_stops.into_bytes(),
            k,
            400,
            "stop has 10000",
        ),
        (
            "1 MB stop string",
            chat,
            huge_stop.into_bytes(),
            k,
            400,
            "stop[0] is 1048576 bytes",
        ),
        ("invalid UTF-8", chat, bad_utf8, k, 400, "UTF-8"),
        (
            "NUL byte",
            chat,
            chat_with("").replace("hi", "h\\u0000i").into_bytes(),
            k,
            400,
            "NUL",
        ),
        (
            "body over the limit",
            chat,
            over_limit.into_bytes(),
            k,
            413,
            "limit",
        ),
        (
            "empty messages",
            chat,
            br#"{"model":"tiny-llama","messages":[]}"#.to_vec(),
            k,
            400,
            "messages is empty",
        ),
        (
            "unknown role",
            chat,
            br#"{"model":"tiny-llama","messages":[{"role":"robot","content":"x"}]}"#.to_vec(),
            k,
            400,
            "robot",
        ),
        (
            "penalty",
            chat,
            chat_with(r#","presence_penalty":1"#).into_bytes(),
            k,
            400,
            "presence_penalty",
        ),
        (
            "max_tokens over the window",
            chat,
            chat_with(r#","max_tokens":100000"#).into_bytes(),
            k,
            400,
            "context window",
        ),
        (
            "prompt + max_tokens over the window",
            "/v1/completions",
            long_prompt.into_bytes(),
            k,
            400,
            "200",
        ),
        (
            "missing key",
            chat,
            chat_with("").into_bytes(),
            None,
            401,
            "API key",
        ),
        (
            "wrong key",
            chat,
            chat_with("").into_bytes(),
            Some("trib_wrongwrongwrongwrong"),
            401,
            "not valid",
        ),
    ];
    let good = chat_with(r#","max_tokens":2"#);
    for (what, path, body, key, status, needle) in &cases {
        let (code, text) = raw(port, path, *key, body);
        assert_eq!(code, *status, "{what}: {text}\n{}", dev.logs());
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{what}: {needle:?} not in {msg:?}");
        assert!(v["error"]["type"].is_string(), "{what}: {v}");
        // Still serving.
        let (code, text) = raw(port, chat, k, good.as_bytes());
        assert_eq!(code, 200, "after {what}: {text}");
    }

    // A key without the inference scope: 403.
    let (code, text) = dev.request(
        "POST",
        "/v1/keys",
        "application/json",
        r#"{"owner":"builder","scopes":["build"]}"#,
    );
    assert_eq!(code, 201, "{text}");
    let build_key = serde_json::from_str::<serde_json::Value>(&text).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, text) = raw(port, chat, Some(&build_key), good.as_bytes());
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("`inference` scope"), "{text}");

    // A stream abandoned after its first token: the server frees the request's slot and
    // keeps serving.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = r#"{"model":"tiny-llama","prompt":"Once","max_tokens":200,"stream":true}"#;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = String::new();
    while !got.contains("data: ") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    let t0 = Instant::now();
    loop {
        let (_, metrics) = http_get(port, "/metrics").unwrap();
        if metrics.contains("tributary_requests_in_flight 0") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the abandoned stream still holds its slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _) = raw(port, chat, k, good.as_bytes());
    assert_eq!(code, 200);
}
