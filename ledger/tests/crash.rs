//! kill -9 of a real writer process at random moments, on the local filesystem and on moto,
//! with one and three replicas: after every round, no acknowledged entry is lost or
//! changed, no seq is acknowledged twice with different contents, and at the end the chain
//! has no gaps or forks and verifies.
//!
//! The suite kills the writer 200 times in total (55 + 65 + 35 + 45). For a soak, set
//! `TRIBUTARY_LEDGER_SOAK_KILLS=N` to kill N times per configuration.
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
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Backend;
use rand::Rng;
use tributary_ledger::Store;
use tributary_ledger::rewards::entry::{chain_hash, entry_key};
use tributary_ledger::rewards::{LogWriter, Replicas, WriterOptions, verify};

fn kills(default: usize) -> usize {
    std::env::var("TRIBUTARY_LEDGER_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One writer run killed at a random moment; returns the acks it printed.
fn run_and_kill(urls: &[String], rng: &mut impl Rng) -> Vec<(u64, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary-ledger-writer"))
        .args(["--replicas", &urls.join(",")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::sync_channel::<String>(1024);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // A third of the kills land during start-up (self-test, epoch claim, reconcile,
    // fence); the rest after a random number of acks, a random few hundred µs later.
    if rng.random_bool(0.33) {
        std::thread::sleep(Duration::from_micros(rng.random_range(0..60_000)));
    } else {
        let want = rng.random_range(1..25);
        let mut acks = 0;
        while acks < want {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => {
                    if l.starts_with("ack ") {
                        acks += 1;
                    }
                    lines.push(l);
                }
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..800)));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    // Drain until the reader ends (the killed writer's pipe closes): joining first could wait
    // forever on a reader blocked on a full channel.
    lines.extend(rx.iter());
    reader.join().expect("reader");
    if std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("writer exited on its own ({status}) before the kill: {err}");
    }
    lines
        .iter()
        .filter_map(|l| {
            let mut p = l.strip_prefix("ack ")?.split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.to_string()))
        })
        .collect()
}

async fn crash_loop(b: Backend, replicas: usize, rounds: usize) {
    let urls = b.urls(replicas);
    let mut rng = rand::rng();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut total_acks = 0usize;
    for round in 0..rounds {
        for (seq, hash) in run_and_kill(&urls, &mut rng) {
            total_acks += 1;
            if let Some(prev) = acked.insert(seq, hash.clone()) {
                assert_eq!(
                    prev, hash,
                    "round {round}: seq {seq} acknowledged twice (fork)"
                );
            }
        }
    }
    assert!(
        total_acks > rounds / 2,
        "too few acks ({total_acks}) to mean anything"
    );
    // A last writer reconciles what the killed ones left half-replicated, then flushes.
    let set = Replicas::open(&urls).unwrap();
    let mut w = LogWriter::open(set.clone(), WriterOptions::default())
        .await
        .unwrap();
    w.flush().await;
    w.repair().await.unwrap();
    let report = verify(&set).await.unwrap();
    assert!(report.ok, "{} {}: {:?}", b.name(), replicas, report.faults);
    assert!(report.entries > *acked.keys().last().unwrap());
    // Every acknowledged entry is on every replica, unchanged.
    for store in set.stores() {
        let names = store
            .list_names(&object_store::path::Path::from("rewards"))
            .await
            .unwrap();
        assert_eq!(
            names.len() as u64,
            report.entries,
            "gaps or extras on {store}"
        );
        for (seq, hash) in &acked {
            let bytes = Store::get(store, &entry_key(*seq))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acked seq {seq} lost on {store}"));
            assert_eq!(
                &blake3::Hash::from(chain_hash(&bytes)).to_hex().to_string(),
                hash,
                "acked seq {seq} changed on {store}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_writer_55_times_local_fs_1_replica() {
    crash_loop(Backend::local(), 1, kills(55)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_writer_65_times_local_fs_3_replicas() {
    crash_loop(Backend::local(), 3, kills(65)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_writer_35_times_s3_moto_1_replica() {
    crash_loop(Backend::moto(), 1, kills(35)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_writer_45_times_s3_moto_3_replicas() {
    crash_loop(Backend::moto(), 3, kills(45)).await;
}
