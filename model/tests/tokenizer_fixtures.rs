//! The tokenizer and chat template against the reference fixtures: ids of every case in
//! `tokenizer_cases.json`, and the chat rendering with its ids, for both fixture models
//! (tiny-llama's template comes from `chat_template.jinja`, tiny-qwen2's from
//! `tokenizer_config.json`).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use common::{MODELS, model_dir};
use tributary_model::tokenizer::{ChatMessage, Tokenizer};

fn cases(name: &str) -> serde_json::Value {
    let path = model_dir(name).join("tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).expect("tokenizer_cases.json");
    serde_json::from_str(&text).expect("tokenizer_cases.json parses")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("u32 id"))
        .collect()
}

#[test]
fn every_case_encodes_to_the_reference_ids() {
    for name in MODELS {
        let tok = Tokenizer::from_dir(&model_dir(name)).expect("tokenizer loads");
        let cases = cases(name);
        let list = cases["cases"].as_array().expect("cases");
        assert!(!list.is_empty());
        for case in list {
            let text = case["text"].as_str().expect("text");
            let want = ids(&case["ids"]);
            assert_eq!(tok.encode(text).expect("encode"), want, "{name}: {text:?}");
            // Round trip: byte-level BPE decodes back to the exact text.
            assert_eq!(
                tok.decode(&want, false).expect("decode"),
                text,
                "{name}: decode"
            );
        }
    }
}

#[test]
fn chat_renders_and_encodes_like_transformers() {
    for name in MODELS {
        let tok = Tokenizer::from_dir(&model_dir(name)).expect("tokenizer loads");
        assert!(tok.has_chat_template(), "{name}");
        let chat = &cases(name)["chat"];
        let messages: Vec<ChatMessage> =
            serde_json::from_value(chat["messages"].clone()).expect("messages");
        let rendered = tok.render_chat(&messages, true).expect("render");
        assert_eq!(
            rendered,
            chat["rendered"].as_str().expect("rendered"),
            "{name}"
        );
        assert_eq!(
            tok.encode_chat(&messages, true).expect("encode"),
            ids(&chat["ids"]),
            "{name}"
        );
        // The same messages as raw JSON values render identically.
        let raw: Vec<serde_json::Value> = chat["messages"].as_array().expect("array").clone();
        assert_eq!(tok.render_chat(&raw, true).expect("render json"), rendered);
        // Without the generation prompt the assistant header is absent.
        let bare = tok.render_chat(&messages, false).expect("render");
        assert_eq!(format!("{bare}<|im_start|>assistant\n"), rendered);
    }
}

#[test]
fn special_tokens_come_from_the_config() {
    for name in MODELS {
        let tok = Tokenizer::from_dir(&model_dir(name)).expect("tokenizer loads");
        assert_eq!(tok.eos_token_id(), Some(2), "{name}");
        assert_eq!(tok.pad_token_id(), Some(0), "{name}");
        assert_eq!(tok.special_tokens().bos, None, "{name}");
        assert_eq!(tok.vocab_size(), 512, "{name}");
        // Special tokens in plain text are recognised, and skipped when decoding.
        let ids = tok.encode("<|im_start|>hi<|im_end|>").expect("encode");
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert_eq!(tok.decode(&ids, true).expect("decode"), "hi");
        // A byte-level tokenizer's post-processor adds nothing to prompts.
        assert_eq!(
            tok.encode_prompt("The clinic records").expect("prompt"),
            vec![261, 392, 309]
        );
    }
}

#[test]
fn missing_tokenizer_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Tokenizer::from_dir(dir.path()).expect_err("no tokenizer.json");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn template_errors_surface_with_their_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = model_dir("tiny-llama");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}{{ messages[0]['content'] }}",
    )
    .expect("write");
    let tok = Tokenizer::from_dir(dir.path()).expect("loads");
    let err = tok
        .render_chat(&[ChatMessage::new("system", "x")], false)
        .expect_err("raises");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        chain.contains("Conversation must start with the user"),
        "{chain}"
    );
    std::fs::write(dir.path().join("chat_template.jinja"), "{% for %}").expect("write");
    let err = Tokenizer::from_dir(dir.path()).expect_err("bad syntax");
    assert!(err.to_string().contains("does not compile"), "{err}");
}
