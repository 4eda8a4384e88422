//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`, crashes found and fixed
//! included) through the same harness functions the libFuzzer targets run: an ordinary
//! test, no sanitizer build. Fuzzing itself: see `fuzz/Cargo.toml` and docs/benchmarks.md.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

#[path = "../fuzz/harness.rs"]
mod harness;
#[path = "../fuzz/harness_model.rs"]
mod harness_model;

#[test]
fn every_committed_fuzz_input_is_handled_without_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, run) in harness::TARGETS.into_iter().chain(harness_model::TARGETS) {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{name}: no corpus in {}", dir.display());
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{name}: {} panicked", f.display());
        }
        eprintln!("{name}: {} inputs", files.len());
    }
}

/// Writes valid seed inputs (encoded messages, frames, reward entries) into the corpora:
/// `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes seed files into fuzz/corpus"]
fn write_seed_corpus() {
    use tributary_ledger::rewards::entry::{RewardEntry, RewardRecord, Share};
    use tributary_protocol::{
        Command, CommandBody, JobId, MicroBatch, MicroResult, Reply, WireMessage,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        std::fs::write(root.join(target).join(name), bytes).unwrap();
    };
    let job = JobId::new("job-1").unwrap();
    let cmds = [
        CommandBody::Start {
            spec_json: "{}".into(),
        },
        CommandBody::Gradients {
            step: 3,
            micro_batches: vec![MicroBatch {
                index: 0,
                start: 24,
                len: 8,
            }],
        },
        CommandBody::Apply {
            step: 3,
            tokens: 99,
        },
        CommandBody::Restore {
            step: 2,
            state: vec![1, 2, 3],
        },
        CommandBody::Checkpoint,
    ];
    for (i, body) in cmds.into_iter().enumerate() {
        let c = Command {
            fencing: 7,
            job: job.clone(),
            body,
        };
        let bytes = c.encode().unwrap();
        put("wire_message", &format!("command-{i}.bin"), &bytes);
        let mut framed = (bytes.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        put("frame", &format!("command-{i}.bin"), &framed);
    }
    let replies = [
        Reply::Ok { step: 1 },
        Reply::Gradients {
            results: vec![MicroResult {
                index: 0,
                loss_sum: f64::NAN,
                tokens: 3,
            }],
        },
        Reply::Refused {
            token: 1,
            highest: 2,
        },
        Reply::Failed { reason: "x".into() },
    ];
    for (i, r) in replies.into_iter().enumerate() {
        put(
            "wire_message",
            &format!("reply-{i}.bin"),
            &r.encode().unwrap(),
        );
    }
    let entry = RewardEntry {
        seq: 1,
        epoch: 2,
        prev: [3; 32],
        batch: vec![RewardRecord {
            request_id: "req".into(),
            adapter: [1; 32],
            attribution: [2; 32],
            time_ms: 5,
            total: u64::MAX,
            shares: vec![
                Share {
                    contributor: "a".into(),
                    amount: u64::MAX,
                },
                Share {
                    contributor: "b".into(),
                    amount: 1,
                },
            ],
        }],
    };
    let framed = entry.encode().unwrap();
    put("reward_entry", "entry.bin", &framed);
    let body = &framed[5..framed.len() - 32];
    put("reward_entry", "body.bin", body);
}
