//! Exactly once per request id in the reward log, against real stores (a local directory,
//! and moto's S3 API on 127.0.0.1): retries of the same batch, a retry inside a batch, a
//! writer that crashes and a new one that retries its work, and an append whose outcome
//! was unknown (the entry reached only a minority of replicas, or none).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::time::Duration;

use common::{Backend, both_backends, record};
use tributary_ledger::rewards::{LogError, LogWriter, Replicas, WriterOptions, verify};
use tributary_ledger::testkit::MotoServer;

fn replicas(urls: &[String]) -> Replicas {
    Replicas::open(urls).expect("open replicas")
}

async fn open(urls: &[String]) -> LogWriter {
    LogWriter::open(replicas(urls), WriterOptions::default())
        .await
        .expect("open writer")
}

/// Every request id in the committed chain, with its count, and the balances.
async fn ids_and_balances(
    urls: &[String],
) -> (
    Vec<(String, usize)>,
    std::collections::BTreeMap<String, u64>,
) {
    let set = replicas(urls);
    let report = verify(&set).await.expect("verify");
    assert!(report.ok, "{:?}", report.faults);
    let store = &set.stores()[0];
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for s in 0..report.entries {
        let bytes = store
            .get(&tributary_ledger::rewards::entry::entry_key(s))
            .await
            .expect("get")
            .expect("present");
        let e = tributary_ledger::rewards::RewardEntry::decode(&bytes).expect("decode");
        for r in e.batch {
            *counts.entry(r.request_id).or_default() += 1;
        }
    }
    (counts.into_iter().collect(), report.balances)
}

both_backends!(retried_batches_are_written_once);
async fn retried_batches_are_written_once(b: Backend) {
    let urls = b.urls(3);
    let mut w = open(&urls).await;
    let r1 = record("req-1", &[("alice", 3)]);
    let r2 = record("req-2", &[("bob", 2)]);
    let r3 = record("req-3", &[("carol", 1)]);
    let first = w.append_once(vec![r1.clone(), r2.clone()]).await.unwrap();
    assert!(first.appended.is_some() && first.already_recorded.is_empty());
    // The caller did not see the ack and retries, with one new record.
    let again = w
        .append_once(vec![r1.clone(), r2.clone(), r3.clone()])
        .await
        .unwrap();
    assert_eq!(again.already_recorded, vec!["req-1", "req-2"]);
    assert!(again.appended.is_some());
    // Nothing new at all: nothing written; `append` says so.
    let none = w.append_once(vec![r3.clone()]).await.unwrap();
    assert!(none.appended.is_none());
    let next = w.next_seq();
    let err = w.append(vec![r1.clone()]).await.unwrap_err();
    assert!(matches!(err, LogError::AlreadyRecorded { .. }), "{err}");
    assert_eq!(w.next_seq(), next, "nothing was written");
    // A repeat inside one batch counts once.
    let r4 = record("req-4", &[("dave", 5)]);
    let dup = w.append_once(vec![r4.clone(), r4.clone()]).await.unwrap();
    assert_eq!(dup.already_recorded, vec!["req-4"]);
    w.flush().await;
    let (ids, balances) = ids_and_balances(&urls).await;
    assert!(ids.iter().all(|(_, n)| *n == 1), "{ids:?}");
    assert_eq!(ids.len(), 4);
    assert_eq!(
        (
            balances["alice"],
            balances["bob"],
            balances["carol"],
            balances["dave"]
        ),
        (3, 2, 1, 5)
    );
}

both_backends!(a_new_writer_after_a_crash_skips_what_the_old_one_wrote);
async fn a_new_writer_after_a_crash_skips_what_the_old_one_wrote(b: Backend) {
    let urls = b.urls(3);
    let batch: Vec<_> = (0..6)
        .map(|i| record(&format!("crash-{i}"), &[("alice", 1)]))
        .collect();
    {
        let mut w = open(&urls).await;
        for r in &batch[..4] {
            w.append(vec![r.clone()]).await.unwrap();
        }
        // The process dies here: no flush, nothing kept in memory.
    }
    let mut w = open(&urls).await;
    // The work queue is replayed from the start.
    let mut written = 0;
    let mut skipped = 0;
    for r in &batch {
        let out = w.append_once(vec![r.clone()]).await.unwrap();
        written += usize::from(out.appended.is_some());
        skipped += out.already_recorded.len();
    }
    assert_eq!((written, skipped), (2, 4));
    w.flush().await;
    let (ids, balances) = ids_and_balances(&urls).await;
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|(_, n)| *n == 1), "{ids:?}");
    assert_eq!(balances["alice"], 6);
}

/// Replaces replica directories by plain files (real I/O errors) and puts them back.
fn park(urls: &[String], which: &[usize]) {
    for &i in which {
        let dir = std::path::PathBuf::from(&urls[i]);
        std::fs::rename(&dir, dir.with_extension("down")).unwrap();
        std::fs::write(&dir, b"not a directory").unwrap();
    }
}

fn unpark(urls: &[String], which: &[usize]) {
    for &i in which {
        let dir = std::path::PathBuf::from(&urls[i]);
        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(dir.with_extension("down"), &dir).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_appends_are_retried_exactly_once_local() {
    let b = Backend::local();
    let urls = b.urls(3);
    let mut w = open(&urls).await;
    w.append(vec![record("before", &[("alice", 1)])])
        .await
        .unwrap();
    w.flush().await;

    // Two of three replicas fail: the entry lands on one (a minority); outcome unknown.
    park(&urls, &[1, 2]);
    let minority = record("minority", &[("bob", 7)]);
    let err = w.append(vec![minority.clone()]).await.unwrap_err();
    assert!(matches!(err, LogError::NoQuorum { .. }), "{err}");
    unpark(&urls, &[1, 2]);
    // The retry finds the entry (reconciliation completes it) and writes nothing new.
    let out = w.append_once(vec![minority.clone()]).await.unwrap();
    assert_eq!(out.already_recorded, vec!["minority"]);
    assert!(out.appended.is_none());

    // Every replica fails: the entry reached none; the retry writes it.
    park(&urls, &[0, 1, 2]);
    let nowhere = record("nowhere", &[("carol", 4)]);
    assert!(w.append(vec![nowhere.clone()]).await.is_err());
    unpark(&urls, &[0, 1, 2]);
    let out = w.append_once(vec![nowhere.clone()]).await.unwrap();
    assert!(out.appended.is_some() && out.already_recorded.is_empty());

    // And a new writer replaying everything adds nothing.
    drop(w);
    let mut w2 = open(&urls).await;
    let out = w2
        .append_once(vec![record("before", &[("alice", 1)]), minority, nowhere])
        .await
        .unwrap();
    assert_eq!(out.already_recorded.len(), 3);
    w2.flush().await;
    let (ids, balances) = ids_and_balances(&urls).await;
    assert!(ids.iter().all(|(_, n)| *n == 1), "{ids:?}");
    assert_eq!(
        (balances["alice"], balances["bob"], balances["carol"]),
        (1, 7, 4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcome_appends_are_retried_exactly_once_s3_moto() {
    tributary_ledger::testkit::init_crypto();
    // Three real servers; two are frozen with SIGSTOP while one append runs (it reaches
    // only the third), then resumed.
    let servers: Vec<MotoServer> = (0..3)
        .map(|_| MotoServer::start().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let urls: Vec<String> = servers
        .iter()
        .map(|s| {
            s.create_bucket("ledger").unwrap();
            s.url("ledger", "log")
        })
        .collect();
    let mut w = open(&urls).await;
    w.append(vec![record("before", &[("alice", 1)])])
        .await
        .unwrap();
    w.flush().await;
    let signal = |sig: &str, i: usize| {
        let ok = std::process::Command::new("kill")
            .args([sig, &servers[i].pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP", 1);
    signal("-STOP", 2);
    let minority = record("minority", &[("bob", 7)]);
    let res = tokio::time::timeout(Duration::from_secs(120), w.append(vec![minority.clone()]))
        .await
        .expect("the append gives up on its own");
    assert!(res.is_err(), "no majority was reachable: {res:?}");
    signal("-CONT", 1);
    signal("-CONT", 2);
    w.flush().await;
    let out = w.append_once(vec![minority.clone()]).await.unwrap();
    assert_eq!(out.already_recorded, vec!["minority"]);
    assert!(out.appended.is_none());
    w.flush().await;
    let (ids, balances) = ids_and_balances(&urls).await;
    assert!(ids.iter().all(|(_, n)| *n == 1), "{ids:?}");
    assert_eq!((balances["alice"], balances["bob"]), (1, 7));
}
