//! JSONL instruction data in the three formats, tokenized with the fixture tokenizer:
//! which tokens are trained, truncation, errors naming line and field, and the seeded
//! held-out split and batch order.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use common::model_dir;
use tributary_model::data::{
    BatchPlan, DataError, DataOptions, Format, IGNORE_INDEX, alpaca_prompt, parse_jsonl, split_eval,
};
use tributary_model::tokenizer::Tokenizer;

fn tok() -> Tokenizer {
    Tokenizer::from_dir(&model_dir("tiny-qwen2")).expect("fixture tokenizer")
}

fn opts(max_seq_len: usize) -> DataOptions {
    DataOptions {
        max_seq_len,
        eos_token_id: Some(2),
    }
}

/// The ids whose label is not ignored.
fn trained(labels: &[i64]) -> Vec<u32> {
    labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect()
}

#[test]
fn alpaca_and_prompt_completion_mask_the_prompt() {
    let t = tok();
    let text = concat!(
        r#"{"instruction": "Name a colour.", "input": "", "output": "Blue."}"#,
        "\n\n",
        r#"{"instruction": "Add.", "input": "2 and 3", "output": "5"}"#,
        "\n",
        r#"{"prompt": "Q: who pays?", "completion": " The fee."}"#,
        "\n"
    );
    let ds = parse_jsonl(text, "mem.jsonl", &t, &opts(4096)).unwrap();
    assert_eq!(ds.examples.len(), 3);
    assert_eq!(
        ds.examples.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    let cases = [
        (alpaca_prompt("Name a colour.", ""), "Blue.", Format::Alpaca),
        (alpaca_prompt("Add.", "2 and 3"), "5", Format::Alpaca),
        (
            "Q: who pays?".to_owned(),
            " The fee.",
            Format::PromptCompletion,
        ),
    ];
    for (e, (prompt, completion, format)) in ds.examples.iter().zip(cases) {
        assert_eq!(e.format, format);
        let p = t.encode(&prompt).unwrap();
        let mut c = t.encode(completion).unwrap();
        c.push(2);
        assert_eq!(e.example.input_ids, [p.clone(), c.clone()].concat());
        assert!(
            e.example.labels[..p.len()]
                .iter()
                .all(|&l| l == IGNORE_INDEX)
        );
        assert_eq!(trained(&e.example.labels), c);
        assert!(!e.truncated);
    }
    assert!(alpaca_prompt("x", "y").contains("### Input:\ny"));
    let (total, train) = ds.token_counts();
    assert!(train > 0 && total > train);
}

#[test]
fn messages_train_only_the_assistant_turns() {
    let t = tok();
    let line = serde_json::json!({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Who trains?"},
        {"role": "assistant", "content": "Builders."},
        {"role": "user", "content": "Who pays?"},
        {"role": "assistant", "content": "The gateway."}
    ]})
    .to_string();
    let ds = parse_jsonl(&line, "chat.jsonl", &t, &opts(4096)).unwrap();
    let e = &ds.examples[0];
    assert_eq!(e.format, Format::Messages);
    let msgs: Vec<serde_json::Value> =
        serde_json::from_str::<serde_json::Value>(&line).unwrap()["messages"]
            .as_array()
            .unwrap()
            .clone();
    assert_eq!(e.example.input_ids, t.encode_chat(&msgs, false).unwrap());
    // Trained: each assistant reply and its <|im_end|>, nothing else.
    let trained_text = t.decode(&trained(&e.example.labels), false).unwrap();
    assert_eq!(trained_text, "Builders.<|im_end|>The gateway.<|im_end|>");
    // Labels are unshifted copies of the ids where trained.
    for (id, l) in e.example.input_ids.iter().zip(&e.example.labels) {
        assert!(*l == IGNORE_INDEX || *l == i64::from(*id));
    }
}

#[test]
fn truncation_states_the_limit() {
    let t = tok();
    let line = r#"{"prompt": "Short prompt.", "completion": " A rather long completion that goes on and on and on."}"#;
    let limit = t.encode("Short prompt.").unwrap().len() + 3;
    let ds = parse_jsonl(line, "d.jsonl", &t, &opts(limit)).unwrap();
    assert_eq!(ds.examples[0].example.input_ids.len(), limit);
    assert_eq!(ds.examples[0].example.labels.len(), limit);
    assert_eq!(trained(&ds.examples[0].example.labels).len(), 3);
    assert!(ds.examples[0].truncated);
    assert_eq!(ds.truncated(), 1);
    let long =
        r#"{"prompt": "A prompt far longer than the limit allows here.", "completion": " x"}"#;
    let err = parse_jsonl(long, "d.jsonl", &t, &opts(4)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("d.jsonl:1") && msg.contains("max_seq_len = 4"),
        "{msg}"
    );
}

#[test]
fn bad_lines_name_line_and_field() {
    let t = tok();
    let check = |text: &str, want: &[&str]| {
        let err = parse_jsonl(text, "bad.jsonl", &t, &opts(64)).unwrap_err();
        let msg = err.to_string();
        for w in want {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
        err
    };
    let ok = r#"{"prompt": "a", "completion": "b"}"#;
    let err = check(&format!("{ok}\n{{not json"), &["bad.jsonl:2"]);
    assert!(matches!(err, DataError::Json { line: 2, .. }));
    check(
        &format!("{ok}\n{ok}\n{{\"prompt\": \"a\"}}"),
        &["bad.jsonl:3", "`completion`", "missing"],
    );
    check(
        r#"{"instruction": "a", "output": 5}"#,
        &[":1", "`output`", "a number"],
    );
    check(r#"{"text": "a"}"#, &["unknown format", "[text]"]);
    check(r#"[1, 2]"#, &["expected a JSON object"]);
    check(
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        &["no message has role `assistant`"],
    );
    check(
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}]}"#,
        &["messages[1].content"],
    );
    check(
        r#"{"prompt": "a", "completion": ""}"#,
        &["`completion`", "empty"],
    );
    check("\n  \n", &["no examples"]);
    let err = parse_jsonl(ok, "x", &t, &opts(1)).unwrap_err();
    assert!(err.to_string().contains("max_seq_len"), "{err}");
}

#[test]
fn held_out_split_is_seeded_and_complete() {
    let items: Vec<usize> = (0..50).collect();
    let (train, eval) = split_eval(&items, 0.1, 7).unwrap();
    assert_eq!(eval.len(), 5);
    assert_eq!(train.len(), 45);
    assert_eq!(
        split_eval(&items, 0.1, 7).unwrap(),
        (train.clone(), eval.clone())
    );
    let mut all = [train.clone(), eval.clone()].concat();
    all.sort_unstable();
    assert_eq!(all, items);
    assert!(train.windows(2).all(|w| w[0] < w[1]), "file order kept");
    assert_ne!(split_eval(&items, 0.1, 8).unwrap().1, eval);
    assert_eq!(
        split_eval(&items[..3], 0.01, 1).unwrap().1.len(),
        1,
        "at least one"
    );
    assert!(split_eval(&items[..1], 0.5, 1).is_err());
    assert!(
        split_eval(&items, 1.0, 1)
            .unwrap_err()
            .to_string()
            .contains("eval_fraction")
    );
    assert_eq!(split_eval(&items, 0.0, 1).unwrap().1.len(), 0);
}

#[test]
fn batch_plan_covers_each_epoch_and_is_a_function_of_the_step() {
    let plan = BatchPlan::new(10, 2, 3, 5).unwrap();
    assert_eq!(plan.examples_per_step(), 6);
    assert_eq!(plan.steps_for_epochs(3), 5);
    let stream: Vec<usize> = (0..5)
        .flat_map(|s| plan.step(s).into_iter().flatten())
        .collect();
    assert_eq!(stream.len(), 30);
    for epoch in stream.chunks(10) {
        let mut e = epoch.to_vec();
        e.sort_unstable();
        assert_eq!(e, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(stream[..10], stream[10..20], "each epoch is reshuffled");
    assert_eq!(plan.step(3), BatchPlan::new(10, 2, 3, 5).unwrap().step(3));
    assert!(plan.step(0).iter().all(|m| m.len() == 2) && plan.step(0).len() == 3);
    assert!(
        BatchPlan::new(10, 0, 1, 0)
            .unwrap_err()
            .to_string()
            .contains("batch_size")
    );
}
