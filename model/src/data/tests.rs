//! Hostile data lines and options: errors naming the line and field, no panic or overflow.

use super::*;

const VOCAB: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
  "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
  "model":{"type":"WordLevel","vocab":{"a":0,"b":1,"é":2,"[UNK]":3},"unk_token":"[UNK]"}}"#;

fn tokenizer(template: &str) -> Tokenizer {
    Tokenizer::from_parts(VOCAB, None, Some(template), "mini").expect("tokenizer")
}

fn parse(line: &str, tok: &Tokenizer) -> Result<Dataset, DataError> {
    let options = DataOptions {
        max_seq_len: 16,
        eos_token_id: None,
    };
    parse_jsonl(line, "d.jsonl", tok, &options)
}

#[test]
fn a_template_that_does_not_grow_by_prefix_names_the_turn() {
    // The message count comes first, so a shorter chat is not a prefix of the whole.
    let tok =
        tokenizer("{{ messages|length }} {% for m in messages %}{{ m.content }} {% endfor %}");
    let line = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "é b"}]}"#;
    let msg = parse(line, &tok).expect_err("not a prefix").to_string();
    assert!(msg.contains("d.jsonl:1: field `messages[1]`"), "{msg}");
    assert!(msg.contains("growing prefix"), "{msg}");
    // A template that does grow by prefix trains the turn, multi-byte text included.
    let tok = tokenizer("{% for m in messages %}{{ m.content }} {% endfor %}");
    let ds = parse(line, &tok).expect("prefix template");
    assert_eq!(ds.examples.len(), 1);
}

#[test]
fn bad_message_fields_name_the_index() {
    let tok = tokenizer("{% for m in messages %}{{ m.content }}{% endfor %}");
    for (line, field) in [
        (r#"{"messages": 3}"#, "field `messages`"),
        (r#"{"messages": [1]}"#, "field `messages[0]`"),
        (
            r#"{"messages": [{"role": 1, "content": "a"}]}"#,
            "`messages[0].role`",
        ),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            "`messages[0].content`",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}]}"#,
            "no message has role",
        ),
    ] {
        let msg = parse(line, &tok).expect_err(line).to_string();
        assert!(msg.contains(field), "{line}: {msg}");
    }
}

#[test]
fn batch_sizes_that_overflow_are_refused_and_huge_steps_do_not_panic() {
    let err = BatchPlan::new(10, usize::MAX, 2, 0).expect_err("overflowing product");
    let msg = err.to_string();
    assert!(msg.contains("`grad_accum` = 2"), "{msg}");
    assert!(msg.contains("batch_size × grad_accum"), "{msg}");
    let plan = BatchPlan::new(3, usize::MAX / 2, 1, 0).expect("fits");
    assert_eq!(plan.steps_for_epochs(usize::MAX), 3);
    let plan = BatchPlan::new(3, 2, 1, 0).expect("plan");
    let last = plan.step(usize::MAX);
    assert_eq!(last.len(), 1);
    assert!(last.iter().flatten().all(|&i| i < 3));
}
