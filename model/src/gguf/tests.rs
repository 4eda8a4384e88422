//! Malformed model metadata and tokenizers in otherwise well-formed GGUF files: each is an
//! error naming the key or tensor and the limit, never a panic or an overflow.

use std::path::Path;

use super::writer::GgufWriter;
use super::{GgufFile, Value, mapping, tokenizer};

/// A one-layer llama (hidden 8, 2 heads, 1 key/value head) with a gpt2 tokenizer of 4
/// tokens; `edit` changes its metadata before it is written.
fn llama(edit: impl FnOnce(&mut Vec<(&'static str, Value)>)) -> GgufFile {
    let s = |x: &str| Value::String(x.into());
    let mut meta = vec![
        ("general.architecture", s("llama")),
        ("llama.embedding_length", Value::U32(8)),
        ("llama.feed_forward_length", Value::U32(16)),
        ("llama.block_count", Value::U32(1)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("tokenizer.ggml.model", s("gpt2")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![s("a"), s("b"), s("ab"), s("<s>")]),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![s("a b")])),
        ("tokenizer.ggml.bos_token_id", Value::U32(3)),
    ];
    edit(&mut meta);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(k, v);
    }
    w.add_f32("token_embd.weight", &[4, 8], vec![0.0; 32]);
    w.add_f32(
        "blk.0.attn_q.weight",
        &[8, 8],
        (0..64).map(|i| i as f32).collect(),
    );
    GgufFile::parse(w.to_bytes(), Path::new("m.gguf")).expect("a well-formed file")
}

fn set(meta: &mut [(&'static str, Value)], key: &str, v: Value) {
    let slot = meta.iter_mut().find(|(k, _)| *k == key).expect("key");
    slot.1 = v;
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` missing from: {msg}");
    }
}

#[test]
fn the_well_formed_file_maps() {
    let f = llama(|_| {});
    let cfg = mapping::model_config(&f).expect("config");
    assert_eq!((cfg.vocab_size, cfg.head_dim), (4, 4));
    tokenizer::tokenizer_files(&f).expect("tokenizer");
}

#[test]
fn oversized_or_zero_sizes_name_the_key_and_limit() {
    let f = llama(|m| set(m, "llama.embedding_length", Value::U64(1 << 40)));
    let msg = mapping::model_config(&f)
        .expect_err("huge width")
        .to_string();
    has(
        &msg,
        &[
            "m.gguf",
            "`llama.embedding_length`",
            "1099511627776",
            "limit 4194304",
        ],
    );
    let f = llama(|m| set(m, "llama.block_count", Value::U64(1 << 20)));
    let msg = mapping::model_config(&f)
        .expect_err("huge depth")
        .to_string();
    has(&msg, &["`llama.block_count`", "limit 4096"]);
    let f = llama(|m| m.push(("llama.attention.key_length", Value::U32(0))));
    let msg = mapping::model_config(&f)
        .expect_err("zero head width")
        .to_string();
    has(&msg, &["`llama.attention.key_length`", "even and positive"]);
    let f = llama(|m| set(m, "llama.attention.head_count", Value::U32(0)));
    let msg = mapping::model_config(&f)
        .expect_err("zero heads")
        .to_string();
    has(
        &msg,
        &["`llama.attention.head_count_kv`", "do not divide 0 heads"],
    );
    let f = llama(|m| set(m, "llama.feed_forward_length", Value::I32(-1)));
    let msg = mapping::model_config(&f).expect_err("negative").to_string();
    has(
        &msg,
        &[
            "`llama.feed_forward_length`",
            "non-negative integer, found i32",
        ],
    );
}

#[test]
fn token_ids_and_per_token_arrays_are_checked_against_the_vocabulary() {
    let f = llama(|m| set(m, "tokenizer.ggml.bos_token_id", Value::U32(4)));
    let msg = tokenizer::tokenizer_files(&f).expect_err("id").to_string();
    has(
        &msg,
        &[
            "`tokenizer.ggml.bos_token_id`",
            "below the vocabulary size 4",
        ],
    );
    let f = llama(|m| set(m, "tokenizer.ggml.bos_token_id", Value::U64(1 << 40)));
    let msg = tokenizer::tokenizer_files(&f)
        .expect_err("huge id")
        .to_string();
    has(
        &msg,
        &["`tokenizer.ggml.bos_token_id`", "vocabulary size 4"],
    );
    let f = llama(|m| {
        m.push((
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1)]),
        ));
    });
    let msg = tokenizer::tokenizer_files(&f)
        .expect_err("types")
        .to_string();
    has(
        &msg,
        &["`tokenizer.ggml.token_type`", "has 1 entries for 4 tokens"],
    );
    let f = llama(|m| {
        set(m, "tokenizer.ggml.model", Value::String("llama".into()));
        m.push((
            "tokenizer.ggml.scores",
            Value::Array(vec![Value::F32(0.0); 3]),
        ));
    });
    let msg = tokenizer::tokenizer_files(&f)
        .expect_err("scores")
        .to_string();
    has(
        &msg,
        &["`tokenizer.ggml.scores`", "has 3 entries for 4 tokens"],
    );
    let f = llama(|m| set(m, "tokenizer.ggml.tokens", Value::Array(vec![Value::U8(1)])));
    let msg = tokenizer::tokenizer_files(&f)
        .expect_err("tokens")
        .to_string();
    has(&msg, &["`tokenizer.ggml.tokens`", "array of strings"]);
}

#[test]
fn a_missing_or_shapeless_embedding_names_the_tensor() {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("llama.embedding_length", Value::U32(8));
    w.set("llama.feed_forward_length", Value::U32(16));
    w.set("llama.block_count", Value::U32(1));
    w.set("llama.attention.head_count", Value::U32(2));
    let f = GgufFile::parse(w.to_bytes(), Path::new("m.gguf")).expect("parses");
    let msg = mapping::model_config(&f)
        .expect_err("no embedding")
        .to_string();
    has(&msg, &["tensor `token_embd.weight`", "missing"]);
}

#[test]
fn row_permutations_of_odd_shapes_do_not_panic() {
    let v: Vec<f32> = (0..24).map(|i| i as f32).collect();
    // The round trip holds for even head widths.
    let p = mapping::permute_rows(&v, 8, 3, 2);
    assert_eq!(mapping::unpermute_rows(&p, 8, 3, 2), v);
    assert_ne!(p, v);
    // Zero heads, zero columns, more rows than values, odd widths: no panic, same length.
    for (rows, cols, heads) in [
        (8, 3, 0),
        (8, 0, 2),
        (100, 3, 2),
        (7, 3, 1),
        (8, usize::MAX, 2),
    ] {
        assert_eq!(mapping::unpermute_rows(&v, rows, cols, heads).len(), 24);
        assert_eq!(mapping::permute_rows(&v, rows, cols, heads).len(), 24);
    }
}
