//! End-to-end: the real `tributary` binary appends to the reward log, verifies it, sums
//! balances, names the first bad seq after tampering (exit non-zero), repairs a replica,
//! and benchmarks appends — on the local filesystem and on moto's S3 API.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::process::{Command, Output};

use bytes::Bytes;
use serde_json::Value;
use tributary_ledger::Store;
use tributary_ledger::rewards::entry::entry_key;
use tributary_ledger::testkit::{MotoServer, init_crypto};

fn tributary(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("run tributary")
}

fn ok(args: &[&str]) -> String {
    let out = tributary(args);
    assert!(
        out.status.success(),
        "tributary {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn scenario(urls: &[String]) {
    let replicas = urls.join(",");
    for (i, (a, b)) in [(3u64, 1u64), (5, 0), (2, 2)].iter().enumerate() {
        let out = ok(&[
            "ledger",
            "append",
            "--replicas",
            &replicas,
            "--request-id",
            &format!("req-{i}"),
            "--share",
            &format!("alice={a}"),
            "--share",
            &format!("bob={b}"),
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["acks"].as_u64().unwrap() > urls.len() as u64 / 2, "{v}");
    }
    // Each append opened a writer: entries are fence, record, fence, record, fence, record.
    let out = ok(&["ledger", "verify", "--replicas", &replicas, "--json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["entries"], 6);
    let bal: Value =
        serde_json::from_str(ok(&["ledger", "balances", "--replicas", &replicas, "--json"]).trim())
            .unwrap();
    assert_eq!(bal["alice"], 10);
    assert_eq!(bal["bob"], 3);

    // Flip a byte in seq 3 on the first replica: verify exits non-zero naming seq 3.
    let store = Store::open(&urls[0]).unwrap();
    rt().block_on(async {
        let mut b = store.get(&entry_key(3)).await.unwrap().unwrap().to_vec();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        store.put(&entry_key(3), Bytes::from(b)).await.unwrap();
    });
    let out = tributary(&["ledger", "verify", "--replicas", &replicas]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first bad seq 3"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAULT seq 3 Corrupt"));
    if urls.len() >= 3 {
        // The majority still holds the good entry: a full repair restores it.
        ok(&["ledger", "repair", "--replicas", &replicas, "--full"]);
        ok(&["ledger", "verify", "--replicas", &replicas]);
    }
    // Delete seq 1 on the first replica: named as missing.
    rt().block_on(async { store.delete(&entry_key(1)).await.unwrap() });
    let out = tributary(&["ledger", "verify", "--replicas", &replicas]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("first bad seq 1"));

    // The benchmark prints one JSON line.
    let bench_urls: Vec<String> = urls.iter().map(|u| bench_url(u)).collect();
    let out = ok(&[
        "bench",
        "ledger",
        "--replicas",
        &bench_urls.join(","),
        "--entries",
        "50",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["entries"], 50);
    assert!(v["appends_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["p99_ack_ms"].as_f64().unwrap() >= v["p50_ack_ms"].as_f64().unwrap());
    ok(&["ledger", "verify", "--replicas", &bench_urls.join(",")]);
}

fn bench_url(u: &str) -> String {
    match u.split_once('?') {
        Some((base, q)) => format!("{base}-bench?{q}"),
        None => format!("{u}-bench"),
    }
}

#[test]
fn ledger_cli_local_fs_one_and_three_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let one = vec![dir.path().join("solo").display().to_string()];
    scenario(&one);
    let three: Vec<String> = (0..3)
        .map(|i| dir.path().join(format!("r{i}")).display().to_string())
        .collect();
    scenario(&three);
}

#[test]
fn ledger_cli_s3_moto_three_replicas() {
    init_crypto();
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket("ledger").unwrap();
    let urls: Vec<String> = (0..3)
        .map(|i| moto.url("ledger", &format!("r{i}")))
        .collect();
    scenario(&urls);
}

#[test]
fn ledger_verify_on_a_store_that_is_not_there_fails_clearly() {
    let out = tributary(&["ledger", "verify", "--replicas", "ftp://nowhere"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scheme"));
}
