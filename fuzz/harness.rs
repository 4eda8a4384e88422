//! One function per fuzz target: each takes arbitrary bytes and must return without
//! panicking whatever they are (errors are fine; a panic, an abort or a hang is a finding).
//! Where an input is accepted, the harness also checks that it round-trips. Shared, by
//! `#[path]`, between the libFuzzer targets in `fuzz/fuzz_targets/` and the corpus replay
//! test (`tests/fuzz_corpus.rs`) that `cargo test` runs in CI. The targets that need the
//! model crate (and so burn) are in `harness_model.rs`, so these build without it.

#![allow(dead_code)]

use std::path::PathBuf;
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
pub const TARGETS: [Target; 4] = [
    ("job_spec", job_spec),
    ("wire_message", wire_message),
    ("frame", frame),
    ("reward_entry", reward_entry),
];
