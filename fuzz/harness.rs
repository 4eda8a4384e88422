//! One function per fuzz target: each takes arbitrary bytes and must return without
//! panicking whatever they are (errors are fine; a panic, an abort or a hang is a finding).
//! Where an input is accepted, the harness also checks that it round-trips. Shared, by
//! `#[path]`, between the libFuzzer targets in `fuzz/fuzz_targets/` and the corpus replay
//! test (`tests/fuzz_corpus.rs`) that `cargo test` runs in CI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tributary_protocol::{Command, JobSpec, Reply, WireMessage};

/// Largest frame the frame target reads.
const MAX_FRAME: u32 = 1 << 20;

fn repo() -> PathBuf {
    // The fuzz crate's manifest is `fuzz/`; the replay test's is the repository root.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if here.join("assets/demo").is_dir() {
        here
    } else {
        here.join("..")
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fn demo_tokenizer() -> &'static tributary_model::tokenizer::Tokenizer {
    static T: OnceLock<tributary_model::tokenizer::Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        tributary_model::tokenizer::Tokenizer::from_dir(&repo().join("assets/demo"))
            .expect("the demo tokenizer")
    })
}

/// Job specs as JSON and TOML: an accepted spec validates, and its JSON form parses back to
/// the same spec.
pub fn job_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for spec in [JobSpec::from_json_str(text), JobSpec::from_toml_str(text)]
        .into_iter()
        .flatten()
    {
        {
            spec.validate().expect("an accepted spec validates");
            let json = spec.to_json().expect("an accepted spec encodes");
            let again = JobSpec::from_json_str(&json).expect("its JSON parses back");
            assert_eq!(again, spec);
            let _ = spec.total_steps(u64::MAX);
            let _ = spec.micro_batch_size();
        }
    }
}

/// rkyv messages off the wire: bytecheck and validation reject, never panic; an accepted
/// message re-encodes to something that decodes to the same message.
pub fn wire_message(data: &[u8]) {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(data);
    // Compared as bytes: messages carry floats, and NaN is not equal to itself.
    if let Ok(c) = Command::decode(&aligned) {
        let bytes = c.encode().expect("re-encode");
        let again = Command::decode(&bytes).expect("decode again");
        assert_eq!(
            again.encode().expect("encode again").as_slice(),
            bytes.as_slice()
        );
    }
    if let Ok(r) = Reply::decode(&aligned) {
        let bytes = r.encode().expect("re-encode");
        let again = Reply::decode(&bytes).expect("decode again");
        assert_eq!(
            again.encode().expect("encode again").as_slice(),
            bytes.as_slice()
        );
    }
}

/// The length-prefixed frame decoder, the message reader over it, and chunked tensors.
pub fn frame(data: &[u8]) {
    runtime().block_on(async {
        let mut r = data;
        while let Ok(f) = tributary_protocol::frame::read_frame(&mut r, MAX_FRAME).await {
            assert!(f.len() as u64 <= u64::from(MAX_FRAME));
        }
        let mut r = data;
        let _ = tributary_protocol::frame::read_msg::<_, Command>(&mut r, MAX_FRAME).await;
        let mut r = data;
        let _ = tributary_protocol::frame::read_msg::<_, Reply>(&mut r, MAX_FRAME).await;
        // Chunked tensors (gradients, updates) behind a message.
        let mut r = data;
        if let Ok(ts) = tributary_protocol::tensor::read_tensors(&mut r, 1 << 20).await {
            assert!(ts.iter().all(|t| t.len() <= 1 << 20));
        }
    });
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
    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => return,
    };
    let (cfg, weights) = rest.split_at(len.min(rest.len()));
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

/// The demo chat template over hostile messages: NUL-separated fields, the first byte of
/// each picking the role (including roles the template does not expect).
pub fn chat_template(data: &[u8]) {
    const ROLES: [&str; 5] = ["system", "user", "assistant", "tool", "{{ evil }}"];
    let text = String::from_utf8_lossy(data);
    let messages: Vec<tributary_model::tokenizer::ChatMessage> = text
        .split('\0')
        .take(64)
        .map(|m| {
            let role = ROLES[m.bytes().next().map_or(0, |b| usize::from(b) % ROLES.len())];
            tributary_model::tokenizer::ChatMessage::new(role, m)
        })
        .collect();
    for add in [false, true] {
        let _ = demo_tokenizer().render_chat(&messages, add);
    }
}

/// The reward-log entry decoder: rejects, never panics; an accepted entry re-encodes to the
/// same bytes' meaning.
pub fn reward_entry(data: &[u8]) {
    use tributary_ledger::rewards::entry::RewardEntry;
    if let Ok(e) = RewardEntry::decode(data) {
        let bytes = e.encode().expect("re-encode");
        assert_eq!(RewardEntry::decode(&bytes).expect("decode again"), e);
        for r in &e.batch {
            let _ = r.check();
        }
    }
    let _ = tributary_ledger::rewards::entry::chain_hash(data);
    // The checksum stops most mutations at the frame: also frame the bytes as a body, so
    // the rkyv decoder behind it sees them.
    let mut framed = tributary_ledger::rewards::entry::MAGIC.to_vec();
    framed.extend_from_slice(data);
    let sum = blake3::hash(&framed);
    framed.extend_from_slice(sum.as_bytes());
    if let Ok(e) = RewardEntry::decode(&framed) {
        for r in &e.batch {
            let _ = r.check();
        }
        let bytes = e.encode().expect("re-encode");
        assert_eq!(RewardEntry::decode(&bytes).expect("decode again"), e);
    }
}

/// A target's name (its corpus is `fuzz/corpus/<name>/`) and function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: [Target; 7] = [
    ("job_spec", job_spec),
    ("wire_message", wire_message),
    ("frame", frame),
    ("jsonl_row", jsonl_row),
    ("safetensors_peft", safetensors_peft),
    ("chat_template", chat_template),
    ("reward_entry", reward_entry),
];
