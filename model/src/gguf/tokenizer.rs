//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), written as the Hugging Face
//! `tokenizer.json` and `tokenizer_config.json` that tokenize the same way, for the
//! `tokenizers` crate and for transformers.
//!
//! - `gpt2` (byte-level BPE): tokens, merges, and the pre-tokenizer named by
//!   `tokenizer.ggml.pre` as llama.cpp's `llama-vocab.cpp` defines it (`gpt-2`, `smollm`,
//!   `llama-bpe`/`llama3`, `qwen2`); others are refused by name.
//! - `llama` (SentencePiece BPE): tokens and scores; merges are derived from the scores
//!   (a pair merges when its concatenation is a token, higher score first), with byte
//!   fallback to the `<0xXX>` tokens and `▁` for spaces, as llama.cpp tokenizes.
//!
//! Tokens of type CONTROL become special added tokens, USER_DEFINED ones plain added tokens,
//! so both are matched verbatim in text, as llama.cpp matches them when it parses special
//! tokens. `tokenizer_config.json` holds the special tokens, `add_bos_token` and
//! `tokenizer.chat_template`.
//!
//! The metadata is untrusted: token ids are checked against the vocabulary and the
//! per-token arrays against its length before use, with errors naming the key (the lint
//! below keeps every access checked).
#![deny(clippy::indexing_slicing)]

use serde_json::{Map, Value as Json, json};

use super::GgufError;
use super::reader::{GgufFile, Value};

/// llama.cpp's token types (`llama_token_type`).
const TYPE_NORMAL: u64 = 1;
const TYPE_CONTROL: u64 = 3;
const TYPE_USER_DEFINED: u64 = 4;

/// The Hugging Face tokenizer files of a GGUF file.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json: Json,
    /// `tokenizer_config.json` (special tokens, `add_bos_token`, `chat_template`).
    pub tokenizer_config: Json,
    /// `tokenizer.chat_template`, if the file has one.
    pub chat_template: Option<String>,
}

fn strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>, GgufError> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let bad = || GgufError::metadata(file.path(), key, "expected an array of strings");
    let items = v.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn numbers(file: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<f64>>, GgufError> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let bad = |why: &str| GgufError::metadata(file.path(), key, why.to_string());
    let items = v.as_array().ok_or_else(|| bad("expected an array"))?;
    if items.len() != n {
        return Err(bad(&format!("has {} entries for {n} tokens", items.len())));
    }
    items
        .iter()
        .map(|x| x.as_f64().ok_or_else(|| bad("expected numbers")))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn flag(file: &GgufFile, key: &str, default: bool) -> bool {
    file.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// A token id key: an integer below the vocabulary size `n`, with its token.
fn id<'t>(
    file: &GgufFile,
    key: &str,
    tokens: &'t [String],
) -> Result<Option<(u32, &'t str)>, GgufError> {
    let Some(v) = file.get(key) else {
        return Ok(None);
    };
    let n = tokens.len();
    let found = v
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .and_then(|i| Some((i, tokens.get(usize::try_from(i).ok()?)?.as_str())));
    found.map(Some).ok_or_else(|| {
        GgufError::metadata(
            file.path(),
            key,
            format!("{v:?} is not a token id below the vocabulary size {n}"),
        )
    })
}

/// The pre-tokenizer for a `gpt2` file's `tokenizer.ggml.pre`, and whether merges are
/// ignored for whole-word tokens (llama.cpp does that for llama3 only).
fn gpt2_pre_tokenizer(file: &GgufFile, pre: &str) -> Result<(Json, bool), GgufError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "gpt-2" | "gpt2" => (byte_level(true), false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" => (
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]}),
            true,
        ),
        "qwen2" => (
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
            false,
        ),
        other => {
            return Err(GgufError::metadata(
                file.path(),
                "tokenizer.ggml.pre",
                format!(
                    "pre-tokenizer `{other}` is not supported (gpt-2, smollm, llama-bpe, qwen2)"
                ),
            ));
        }
    })
}

fn added_token(id: usize, content: &str, special: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": special})
}

/// Builds the Hugging Face tokenizer files from a GGUF file's metadata.
pub fn tokenizer_files(file: &GgufFile) -> Result<TokenizerFiles, GgufError> {
    let path = file.path();
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            GgufError::metadata(
                path,
                "tokenizer.ggml.model",
                "missing (the file has no tokenizer)",
            )
        })?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| GgufError::metadata(path, "tokenizer.ggml.tokens", "missing"))?;
    let n = tokens.len();
    let types: Vec<u64> = match numbers(file, "tokenizer.ggml.token_type", n)? {
        Some(t) => t.into_iter().map(|x| x as u64).collect(),
        None => vec![TYPE_NORMAL; n],
    };
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // A duplicate string keeps its first id, as llama.cpp's token_to_id map does.
        vocab.entry(t.clone()).or_insert(Json::from(i));
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(**ty, TYPE_CONTROL | TYPE_USER_DEFINED))
        .map(|(i, (t, ty))| added_token(i, t, *ty == TYPE_CONTROL))
        .collect();
    let bos = id(file, "tokenizer.ggml.bos_token_id", &tokens)?;
    let eos = id(file, "tokenizer.ggml.eos_token_id", &tokens)?;
    let pad = id(file, "tokenizer.ggml.padding_token_id", &tokens)?;
    let unk = id(file, "tokenizer.ggml.unknown_token_id", &tokens)?;
    let add_bos = flag(file, "tokenizer.ggml.add_bos_token", model == "llama");
    let add_eos = flag(file, "tokenizer.ggml.add_eos_token", false);
    let name = |i: Option<(u32, &str)>| i.map(|(_, t)| t.to_string());
    let id_of = |i: Option<(u32, &str)>| i.map(|(i, _)| i);

    let (model_json, normalizer, pre_tokenizer, decoder) = match model {
        "gpt2" => {
            let merges = strings(file, "tokenizer.ggml.merges")?
                .ok_or_else(|| GgufError::metadata(path, "tokenizer.ggml.merges", "missing"))?;
            let pre = file
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("gpt-2");
            let (pre_tokenizer, ignore_merges) = gpt2_pre_tokenizer(file, pre)?;
            let model_json = json!({"type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                "vocab": vocab, "merges": merges});
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                "trim_offsets": true, "use_regex": true});
            (model_json, Json::Null, pre_tokenizer, decoder)
        }
        "llama" => {
            let scores = numbers(file, "tokenizer.ggml.scores", n)?
                .ok_or_else(|| GgufError::metadata(path, "tokenizer.ggml.scores", "missing"))?;
            let merges = spm_merges(&tokens, &types, &scores);
            let space_prefix = flag(file, "tokenizer.ggml.add_space_prefix", true);
            let model_json = json!({"type": "BPE", "dropout": null,
                "unk_token": name(unk), "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                "ignore_merges": false, "vocab": vocab, "merges": merges});
            let replace =
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
            let normalizer = if space_prefix {
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"}, replace]})
            } else {
                replace
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if space_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let decoder = json!({"type": "Sequence", "decoders": decoders});
            (model_json, normalizer, Json::Null, decoder)
        }
        other => {
            return Err(GgufError::metadata(
                path,
                "tokenizer.ggml.model",
                format!("tokenizer model `{other}` is not supported (gpt2, llama)"),
            ));
        }
    };
    let post_processor = post_processor(
        name(bos),
        id_of(bos),
        add_bos,
        name(eos),
        id_of(eos),
        add_eos,
    );
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor, "decoder": decoder, "model": model_json,
    });
    let chat_template = file
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_string);
    let context = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .and_then(|a| file.get(&format!("{a}.context_length")))
        .and_then(Value::as_u64);
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos), "eos_token": name(eos), "pad_token": name(pad),
        "unk_token": name(unk), "add_bos_token": add_bos, "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(obj) = config.as_object_mut() {
        if let Some(c) = context {
            obj.insert("model_max_length".into(), Json::from(c));
        }
        if let Some(t) = &chat_template {
            obj.insert("chat_template".into(), Json::from(t.clone()));
        }
    }
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config: config,
        chat_template,
    })
}

/// A post-processor that adds BOS/EOS when the file asks for them (what `encode_prompt`
/// and transformers' `tokenizer(text)` add), else the byte-level no-op.
fn post_processor(
    bos: Option<String>,
    bos_id: Option<u32>,
    add_bos: bool,
    eos: Option<String>,
    eos_id: Option<u32>,
    add_eos: bool,
) -> Json {
    let bos = bos.zip(bos_id).filter(|_| add_bos);
    let eos = eos.zip(eos_id).filter(|_| add_eos);
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    if let Some((t, i)) = &bos {
        single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        specials.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some((t, i)) = &eos {
        single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
        specials.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// SentencePiece BPE merges from scores: every split of a normal token into two tokens is
/// a merge, ranked by the merged token's score (higher first), then by its id.
/// `types` and `scores` have one entry per token ([`numbers`] checks it; a shorter one
/// would only leave tokens out).
fn spm_merges(tokens: &[String], types: &[u64], scores: &[f64]) -> Vec<Json> {
    let mut index = std::collections::HashMap::new();
    for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
        if matches!(*ty, TYPE_NORMAL | TYPE_USER_DEFINED) {
            index.entry(t.as_str()).or_insert(i);
        }
    }
    let mut merges: Vec<(f64, usize, &str, &str, usize)> = Vec::new();
    for (i, ((t, ty), score)) in tokens.iter().zip(types).zip(scores).enumerate() {
        if *ty != TYPE_NORMAL || t.chars().count() < 2 {
            continue;
        }
        for (cut, _) in t.char_indices().skip(1) {
            let Some((l, r)) = t.split_at_checked(cut) else {
                continue;
            };
            if let (Some(&li), Some(_)) = (index.get(l), index.get(r)) {
                merges.push((*score, i, l, r, li));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.4.cmp(&b.4)));
    merges
        .into_iter()
        .map(|(_, _, l, r, _)| json!([l, r]))
        .collect()
}
