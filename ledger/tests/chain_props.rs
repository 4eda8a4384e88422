//! Property test of the reward log's hash chain over three local replicas: any sequence of
//! appends, writer crashes (dropped without a flush; a new writer opens and fences the old
//! epoch) and replica faults (a replica's directory replaced by a file, then restored)
//! ends, after the replicas come back and a writer repairs them, in a log that verifies,
//! holds every acknowledged entry, and holds nothing beyond what was attempted.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::record;
use proptest::prelude::*;
use tributary_ledger::rewards::{LogWriter, Replicas, WriterOptions, verify};

#[derive(Debug, Clone)]
enum Op {
    Append { who: u8, amount: u8 },
    Crash,
    Down(usize),
    Up(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 1u8..50).prop_map(|(who, amount)| Op::Append { who, amount }),
        1 => Just(Op::Crash),
        1 => (0usize..3).prop_map(Op::Down),
        1 => (0usize..3).prop_map(Op::Up),
    ]
}

fn down(dir: &PathBuf) {
    if dir.is_dir() {
        std::fs::rename(dir, dir.with_extension("down")).unwrap();
        std::fs::write(dir, b"replica down").unwrap();
    }
}

fn up(dir: &PathBuf) {
    let parked = dir.with_extension("down");
    if parked.is_dir() {
        std::fs::remove_file(dir).unwrap();
        std::fs::rename(parked, dir).unwrap();
    }
}

async fn open(urls: &[String]) -> Option<LogWriter> {
    let replicas = Replicas::open(urls).ok()?;
    LogWriter::open(replicas, WriterOptions::default())
        .await
        .ok()
}

async fn run(ops: Vec<Op>) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("r{i}"))).collect();
    let urls: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut attempted: BTreeMap<String, u64> = BTreeMap::new();
    let mut writer = open(&urls).await;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { who, amount } => {
                if writer.is_none() {
                    writer = open(&urls).await;
                }
                let Some(w) = writer.as_mut() else { continue };
                let who = format!("c{who}");
                *attempted.entry(who.clone()).or_default() += u64::from(amount);
                let r = record(&format!("r{i}"), &[(&who, u64::from(amount))]);
                match w.append(vec![r]).await {
                    Ok(a) => {
                        assert!(a.acks >= 2, "acked by {} of 3", a.acks);
                        *acked.entry(who).or_default() += u64::from(amount);
                    }
                    // No majority (two replicas down), or fenced: the writer is done.
                    Err(_) => writer = None,
                }
            }
            Op::Crash => writer = None,
            Op::Down(d) => {
                // Keep at most two down so the run is not only failures.
                if dirs.iter().filter(|d| !d.is_dir()).count() < 2 {
                    down(&dirs[d]);
                }
            }
            Op::Up(d) => up(&dirs[d]),
        }
    }
    drop(writer);
    for d in &dirs {
        up(d);
    }
    let mut w = open(&urls)
        .await
        .expect("a writer opens once every replica is back");
    w.flush().await;
    w.repair().await.expect("repair");
    let report = verify(&Replicas::open(&urls).unwrap()).await.unwrap();
    assert!(report.ok, "{:?}", report.faults);
    for (who, amount) in &acked {
        let got = report.balances.get(who).copied().unwrap_or(0);
        assert!(got >= *amount, "{who}: acked {amount}, log holds {got}");
    }
    for (who, got) in &report.balances {
        let tried = attempted.get(who).copied().unwrap_or(0);
        assert!(
            *got <= tried,
            "{who}: log holds {got}, only {tried} attempted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn any_appends_crashes_and_replica_faults_verify_and_keep_acked_entries(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops));
    }
}
