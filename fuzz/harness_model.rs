//! The fuzz targets that need the model crate: JSONL ingestion, safetensors + PEFT adapter
//! loading, chat-template rendering, GGUF files (container, tensors, config mapping and
//! tokenizer), and `tokenizer.json` + `tokenizer_config.json`. Like `harness.rs`:
//! arbitrary bytes in, no panic out.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    // The fuzz crate's manifest is `fuzz/`; the replay test's is the repository root.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if here.join("assets/demo").is_dir() {
        here
    } else {
        here.join("..")
    }
}

fn demo_tokenizer() -> &'static tributary_model::tokenizer::Tokenizer {
    static T: OnceLock<tributary_model::tokenizer::Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        tributary_model::tokenizer::Tokenizer::from_dir(&repo().join("assets/demo"))
            .expect("the demo tokenizer")
    })
}

/// JSONL training rows (alpaca, prompt/completion, OpenAI messages) through ingestion.
pub fn jsonl_row(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = tributary_model::data::DataOptions {
        max_seq_len: 64,
        eos_token_id: Some(2),
    };
    if let Ok(ds) = tributary_model::data::parse_jsonl(text, "fuzz", demo_tokenizer(), &options) {
        for e in &ds.examples {
            assert_eq!(e.example.input_ids.len(), e.example.labels.len());
            assert!(e.example.input_ids.len() <= 64);
        }
    }
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

/// A PEFT adapter directory: the first two bytes give the length of `adapter_config.json`,
/// the rest is `adapter_model.safetensors`. Loaded against the demo model's config.
pub fn safetensors_peft(data: &[u8]) {
    let Some((cfg, weights)) = two_parts(data) else {
        return;
    };
    let dir = scratch();
    std::fs::write(dir.join("adapter_config.json"), cfg).expect("write config");
    std::fs::write(dir.join("adapter_model.safetensors"), weights).expect("write weights");
    let model = tributary_model::config::ModelConfig::load(&repo().join("assets/demo"))
        .expect("the demo model config");
    let device = tributary_model::device::default_device();
    let _ = tributary_model::lora::LoraAdapter::load(dir, &model, &device);
    let _ =
        tributary_model::weights::TensorStore::open_file(&dir.join("adapter_model.safetensors"))
            .map(|s| {
                for name in s.names() {
                    let _ = s.get_f32(&name);
                }
            });
}

/// Marks an input whose first NUL-terminated field is a chat template (a hostile one:
/// endless loops, recursion, string blow-ups) rather than a message.
pub const TEMPLATE_MARK: &str = "{#template#}";

/// The demo chat template over hostile messages: NUL-separated fields, the first byte of
/// each picking the role (including roles the template does not expect). An input that
/// starts with [`TEMPLATE_MARK`] brings its own template in its first field instead, which
/// must load or fail, and render or fail, within the bounds of `chat_limits`.
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(rest) = text.strip_prefix(TEMPLATE_MARK) {
        let (template, messages) = rest.split_once('\0').unwrap_or((rest, ""));
        let Ok(tok) = tributary_model::tokenizer::Tokenizer::from_parts(
            demo_file("tokenizer.json"),
            Some(demo_file("tokenizer_config.json")),
            Some(template),
            "fuzz input",
        ) else {
            return;
        };
        for add in [false, true] {
            let _ = tok.render_chat(&chat_messages(messages), add);
        }
        return;
    }
    for add in [false, true] {
        let _ = demo_tokenizer().render_chat(&chat_messages(&text), add);
    }
}

/// A file of the demo model, read once.
fn demo_file(name: &str) -> &'static str {
    static FILES: OnceLock<std::collections::BTreeMap<String, String>> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        ["tokenizer.json", "tokenizer_config.json"]
            .into_iter()
            .map(|n| {
                let text = std::fs::read_to_string(repo().join("assets/demo").join(n))
                    .expect("a demo tokenizer file");
                (n.to_owned(), text)
            })
            .collect()
    });
    files.get(name).map_or("", String::as_str)
}

fn chat_messages(text: &str) -> Vec<tributary_model::tokenizer::ChatMessage> {
    const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "{{ evil }}"];
    text.split('\0')
        .take(64)
        .map(|m| {
            let role = ROLES[m.bytes().next().map_or(0, |b| usize::from(b) % ROLES.len())];
            tributary_model::tokenizer::ChatMessage::new(role, m)
        })
        .collect()
}

/// Splits `data` as the first two bytes (little-endian) giving the length of the first
/// part, the rest being the second (a shorter input gives nothing).
fn two_parts(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let [a, b, rest @ ..] = data else {
        return None;
    };
    let len = usize::from(u16::from_le_bytes([*a, *b]));
    Some(rest.split_at(len.min(rest.len())))
}

/// Uses a loaded tokenizer the ways training and serving do.
fn exercise(tok: &tributary_model::tokenizer::Tokenizer) {
    let text = "Hello, world! 123 \u{2581}é 🦀 <|im_start|>user\n<s></s>";
    let _ = tok.encode(text);
    let _ = tok.encode_prompt(text);
    let _ = tok.encode_with_offsets(text);
    let n = u32::try_from(tok.vocab_size()).unwrap_or(u32::MAX);
    let _ = tok.decode(&[0, 1, n.saturating_sub(1), n, u32::MAX], false);
    let _ = tok.decode(&[0, 1, 2], true);
    let chat = [
        tributary_model::tokenizer::ChatMessage::new("system", "s"),
        tributary_model::tokenizer::ChatMessage::new("user", "hi"),
    ];
    let _ = tok.encode_chat(&chat, true);
}

/// A GGUF file: the container, every readable tensor dequantized, the model config and
/// Hugging Face tensors mapped from it, and the tokenizer built from its metadata.
pub fn gguf(data: &[u8]) {
    use tributary_model::gguf::{GgufFile, mapping, tokenizer};
    let Ok(file) = GgufFile::parse(data.to_vec(), Path::new("fuzz.gguf")) else {
        return;
    };
    for t in &file.tensors {
        if let Ok((shape, values)) = file.tensor_f32(t) {
            let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            assert_eq!(numel, Some(values.len()), "{}", t.name);
        }
    }
    if let Ok(cfg) = mapping::model_config(&file) {
        let _ = mapping::generation_config(&file, &cfg);
        let _ = mapping::hf_tensors(&file, &cfg);
    }
    if let Ok(files) = tokenizer::tokenizer_files(&file)
        && let Ok(tok) = tributary_model::tokenizer::Tokenizer::from_parts(
            &files.tokenizer_json.to_string(),
            Some(&files.tokenizer_config.to_string()),
            None,
            "fuzz.gguf",
        )
    {
        exercise(&tok);
    }
}

/// `tokenizer.json` with `tokenizer_config.json`: the first two bytes give the config's
/// length (an empty config is none), the rest is `tokenizer.json`. Loaded, then used.
pub fn tokenizer_json(data: &[u8]) {
    let Some((cfg, json)) = two_parts(data) else {
        return;
    };
    let (Ok(json), Ok(cfg)) = (std::str::from_utf8(json), std::str::from_utf8(cfg)) else {
        return;
    };
    let cfg = Some(cfg).filter(|c| !c.is_empty());
    if let Ok(tok) = tributary_model::tokenizer::Tokenizer::from_parts(json, cfg, None, "fuzz") {
        exercise(&tok);
    }
}

/// A target's name (its corpus is `fuzz/corpus/<name>/`) and function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target here, by name.
pub const TARGETS: [Target; 5] = [
    ("jsonl_row", jsonl_row),
    ("safetensors_peft", safetensors_peft),
    ("chat_template", chat_template),
    ("gguf", gguf),
    ("tokenizer_json", tokenizer_json),
];
