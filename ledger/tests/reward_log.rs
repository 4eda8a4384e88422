//! Reward log against real stores (a local directory, and moto's S3 API on 127.0.0.1):
//! fencing between two writers, external fencing tokens, tampering named by the first bad
//! seq, a replica down then repaired, and refusal of a store that ignores conditional create.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, both_backends, record};
use object_store::memory::InMemory;
use object_store::path::Path;
use tributary_ledger::Store;
use tributary_ledger::rewards::entry::{RewardEntry, entry_key};
use tributary_ledger::rewards::{
    FaultKind, Fencing, LogError, LogWriter, Replicas, WriterOptions, repair, verify,
};
use tributary_ledger::testkit::{IgnoresCreateStore, MotoServer};

fn replicas(urls: &[String]) -> Replicas {
    Replicas::open(urls).expect("open replicas")
}

async fn open(urls: &[String]) -> LogWriter {
    LogWriter::open(replicas(urls), WriterOptions::default())
        .await
        .expect("open writer")
}

async fn seqs_on(store: &Store) -> Vec<String> {
    store
        .list_names(&Path::from("rewards"))
        .await
        .expect("list")
}

both_backends!(old_writer_is_fenced_on_its_first_write_after_the_new_one_opens);
async fn old_writer_is_fenced_on_its_first_write_after_the_new_one_opens(b: Backend) {
    let urls = b.urls(3);
    let mut old = open(&urls).await;
    for i in 0..5 {
        old.append(vec![record(&format!("old-{i}"), &[("alice", 3)])])
            .await
            .unwrap();
    }
    let mut new = open(&urls).await;
    assert_eq!(new.epoch(), old.epoch() + 1);
    let err = old
        .append(vec![record("old-late", &[("alice", 1)])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::Fenced { found_epoch, .. } if found_epoch == new.epoch()),
        "{err}"
    );
    // Fenced for good, even without touching the store again.
    assert!(matches!(
        old.append(vec![]).await.unwrap_err(),
        LogError::Fenced { .. }
    ));
    for i in 0..5 {
        new.append(vec![record(&format!("new-{i}"), &[("bob", 2)])])
            .await
            .unwrap();
    }
    new.flush().await;
    let report = verify(&replicas(&urls)).await.unwrap();
    assert!(report.ok, "{:?}", report.faults);
    // fence(old) + 5 + fence(new) + 5; the late write left nothing behind.
    assert_eq!(report.entries, 12);
    assert_eq!(report.balances["alice"], 15);
    assert_eq!(report.balances["bob"], 10);
    assert!(!report.balances.contains_key("alice-late"));
}

both_backends!(two_writers_appending_concurrently_never_fork);
async fn two_writers_appending_concurrently_never_fork(b: Backend) {
    let urls = b.urls(3);
    let mut old = open(&urls).await;
    let old_epoch = old.epoch();
    let old_task = tokio::spawn(async move {
        let mut acked = Vec::new();
        let started = std::time::Instant::now();
        for i in 0.. {
            if started.elapsed() > Duration::from_secs(60) {
                break;
            }
            match old
                .append(vec![record(&format!("o{i}"), &[("alice", 1)])])
                .await
            {
                Ok(a) => acked.push(a.seq),
                Err(LogError::Fenced { .. }) => return (acked, true),
                Err(e) => panic!("old writer: unexpected {e}"),
            }
        }
        (acked, false)
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut new = open(&urls).await;
    assert!(new.epoch() > old_epoch);
    let fence_seq = new.next_seq() - 1;
    let mut new_acked = Vec::new();
    for i in 0..20 {
        new_acked.push(
            new.append(vec![record(&format!("n{i}"), &[("bob", 1)])])
                .await
                .unwrap()
                .seq,
        );
    }
    let (old_acked, fenced) = old_task.await.unwrap();
    assert!(fenced, "the old writer was never fenced");
    assert!(
        old_acked.iter().all(|s| *s < fence_seq),
        "old writer acked at or after the new writer's fence (seq {fence_seq}): {old_acked:?}"
    );
    new.flush().await;
    // Exactly one object per seq, on every replica, no gaps.
    let total = new.next_seq();
    for store in replicas(&urls).stores() {
        let names = seqs_on(store).await;
        let expect: Vec<String> = (0..total).map(|s| format!("{s:020}")).collect();
        assert_eq!(names, expect, "replica {store}");
    }
    let report = verify(&replicas(&urls)).await.unwrap();
    assert!(report.ok, "{:?}", report.faults);
    assert_eq!(report.balances["alice"], old_acked.len() as u64);
    assert_eq!(report.balances["bob"], 20);
    // Every acked entry is in the chain at its seq, with the writer's epoch.
    let store = &replicas(&urls).stores()[0].clone();
    for s in &old_acked {
        let e = RewardEntry::decode(&store.get(&entry_key(*s)).await.unwrap().unwrap()).unwrap();
        assert_eq!(e.epoch, old_epoch);
    }
    for s in &new_acked {
        let e = RewardEntry::decode(&store.get(&entry_key(*s)).await.unwrap().unwrap()).unwrap();
        assert_eq!(e.epoch, new.epoch());
    }
}

both_backends!(external_fencing_tokens_refuse_stale_and_reused_tokens);
async fn external_fencing_tokens_refuse_stale_and_reused_tokens(b: Backend) {
    let urls = b.urls(1);
    let opts = |t| WriterOptions {
        fencing: Fencing::Token(t),
        ..Default::default()
    };
    let mut w = LogWriter::open(replicas(&urls), opts(100)).await.unwrap();
    assert_eq!(w.epoch(), 100);
    w.append(vec![record("r", &[("a", 1)])]).await.unwrap();
    for stale in [50, 100] {
        let err = LogWriter::open(replicas(&urls), opts(stale))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LogError::StaleEpoch { token, current: 100 } if token == stale),
            "{err}"
        );
    }
    // The stale attempts did not disturb the writer.
    w.append(vec![record("r2", &[("a", 1)])]).await.unwrap();
    let mut w2 = LogWriter::open(replicas(&urls), opts(101)).await.unwrap();
    assert!(w.append(vec![]).await.is_err());
    w2.append(vec![record("r3", &[("a", 1)])]).await.unwrap();
    w2.flush().await;
    assert!(verify(&replicas(&urls)).await.unwrap().ok);
}

async fn fresh_log(urls: &[String], n: usize) {
    let mut w = open(urls).await;
    for i in 0..n {
        w.append(vec![record(&format!("t{i}"), &[("alice", 2), ("bob", 1)])])
            .await
            .unwrap();
    }
    w.flush().await;
}

async fn assert_first_bad(urls: &[String], seq: u64, kind: FaultKind) {
    let r = verify(&replicas(urls)).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(seq), "{:?}", r.faults);
    assert_eq!(r.faults[0].kind, kind, "{:?}", r.faults);
}

both_backends!(tampering_is_named_by_the_first_bad_seq);
async fn tampering_is_named_by_the_first_bad_seq(b: Backend) {
    // Entries: 0 = fence, 1..=10 = records.
    let flip = b.urls(1);
    fresh_log(&flip, 10).await;
    let s = Store::open(&flip[0]).unwrap();
    let mut bytes = s.get(&entry_key(4)).await.unwrap().unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    s.put(&entry_key(4), Bytes::from(bytes)).await.unwrap();
    assert_first_bad(&flip, 4, FaultKind::Corrupt).await;

    let del = vec![b.url(1)];
    fresh_log(&del, 10).await;
    Store::open(&del[0])
        .unwrap()
        .delete(&entry_key(5))
        .await
        .unwrap();
    assert_first_bad(&del, 5, FaultKind::Missing).await;

    let swap = vec![b.url(2)];
    fresh_log(&swap, 10).await;
    let s = Store::open(&swap[0]).unwrap();
    let a = s.get(&entry_key(3)).await.unwrap().unwrap();
    let c = s.get(&entry_key(6)).await.unwrap().unwrap();
    s.put(&entry_key(3), c).await.unwrap();
    s.put(&entry_key(6), a).await.unwrap();
    assert_first_bad(&swap, 3, FaultKind::Misplaced).await;

    let trunc = vec![b.url(3)];
    fresh_log(&trunc, 10).await;
    let s = Store::open(&trunc[0]).unwrap();
    let last = s.get(&entry_key(10)).await.unwrap().unwrap();
    s.put(&entry_key(10), last.slice(..last.len() - 7))
        .await
        .unwrap();
    assert_first_bad(&trunc, 10, FaultKind::Corrupt).await;

    // Tail entries deleted on one of three replicas: found by comparing replicas.
    let three: Vec<String> = (4..7).map(|i| b.url(i)).collect();
    fresh_log(&three, 10).await;
    let s = Store::open(&three[1]).unwrap();
    for seq in 8..=10 {
        s.delete(&entry_key(seq)).await.unwrap();
    }
    assert_first_bad(&three, 8, FaultKind::Missing).await;
    // A full repair restores the replica from the majority.
    let rep = repair(&replicas(&three), true).await.unwrap();
    assert_eq!(rep.copied, 3);
    assert!(verify(&replicas(&three)).await.unwrap().ok);
}

#[tokio::test]
async fn a_store_that_ignores_conditional_create_is_refused_mock_store() {
    let mock = Store::from_object_store(
        Arc::new(IgnoresCreateStore(Arc::new(InMemory::new()))),
        "mock://ignores-create",
    );
    let err = LogWriter::open(Replicas::new(vec![mock]).unwrap(), WriterOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("mock://ignores-create"), "{err}");
    assert!(err.contains("If-None-Match"), "{err}");
    assert!(err.contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_local_replicas_down_then_repaired() {
    let b = Backend::local();
    let urls = b.urls(3);
    let set = replicas(&urls);
    let mut w = open(&urls).await;
    for i in 0..10 {
        w.append(vec![record(&format!("a{i}"), &[("alice", 1)])])
            .await
            .unwrap();
    }
    w.flush().await;
    // Take replica 2 down for real: its directory is replaced by a plain file.
    let dir = std::path::PathBuf::from(&urls[2]);
    let parked = dir.with_extension("down");
    std::fs::rename(&dir, &parked).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    for i in 0..20 {
        let a = w
            .append(vec![record(&format!("b{i}"), &[("bob", 1)])])
            .await
            .unwrap();
        assert_eq!(a.acks, 2);
    }
    let r = verify(&set).await.unwrap();
    assert!(!r.ok);
    assert!(
        r.faults.iter().any(|f| f.kind == FaultKind::Unreachable),
        "{:?}",
        r.faults
    );
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&parked, &dir).unwrap();
    w.flush().await;
    let rep = w.repair().await.unwrap();
    assert_eq!(rep.copied, 20);
    let r = verify(&replicas(&urls)).await.unwrap();
    assert!(r.ok, "{:?}", r.faults);
    assert_eq!(r.balances["bob"], 20);
    w.append(vec![record("c", &[("carol", 1)])]).await.unwrap();
    w.flush().await;
    assert!(verify(&replicas(&urls)).await.unwrap().ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_s3_replicas_down_then_repaired() {
    tributary_ledger::testkit::init_crypto();
    // Three real servers; one is frozen with SIGSTOP (requests hang and time out) and then
    // resumed with SIGCONT, keeping its data.
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
    for i in 0..5 {
        w.append(vec![record(&format!("a{i}"), &[("alice", 1)])])
            .await
            .unwrap();
    }
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &servers[2].pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    for i in 0..10 {
        let a = w
            .append(vec![record(&format!("b{i}"), &[("bob", 1)])])
            .await
            .unwrap();
        assert_eq!(a.acks, 2);
        assert!(a.latency < Duration::from_secs(2), "{:?}", a.latency);
    }
    signal("-CONT");
    // Let the writes that were stuck on the frozen server finish or time out.
    w.flush().await;
    w.repair().await.unwrap();
    let r = verify(&replicas(&urls)).await.unwrap();
    assert!(r.ok, "{:?}", r.faults);
    assert_eq!(r.balances["bob"], 10);
    assert_eq!(r.replicas[2].valid_entries, r.entries);
}
