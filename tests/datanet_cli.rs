//! End-to-end: the real `tributary` binary creates datanets from real JSONL files, on the
//! local filesystem and on a real S3 API server (moto on 127.0.0.1): the `--json` upload
//! report, rejected rows with reasons, dedup across contributors, signed and API-key
//! uploads, list/show/diff/export, and clear failures for an empty file.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use tributary_ledger::testkit::{MotoServer, init_crypto};

fn tributary(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("datanet")
        .args(args)
        .args(["--store", store])
        .output()
        .expect("run tributary")
}

fn ok(store: &str, args: &[&str]) -> String {
    let out = tributary(store, args);
    assert!(
        out.status.success(),
        "tributary datanet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

fn json(store: &str, args: &[&str]) -> Value {
    let text = ok(store, args);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "expected one JSON line, got: {text}");
    serde_json::from_str(lines[0]).expect("json")
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn scenario(store: &str, dir: &Path) {
    ok(
        store,
        &["create", "recipes", "--description", "cooking Q&A"],
    );
    let alice = write(
        dir,
        "alice.jsonl",
        concat!(
            r#"{"instruction":"How long do I boil an egg for a soft yolk?","output":"About six minutes."}"#,
            "\n",
            r#"{"prompt":"What temperature bakes bread?","completion":"Around 220 C."}"#,
            "\n",
            r#"{"messages":[{"role":"user","content":"Is basil a herb?"},{"role":"assistant","content":"Yes."}]}"#,
            "\n",
            "{oops\n",
            r#"{"prompt":"no completion"}"#,
            "\n",
        ),
    );
    let r = json(
        store,
        &[
            "upload",
            "recipes",
            &alice,
            "--contributor",
            "alice",
            "--json",
        ],
    );
    assert_eq!(r["accepted"], 3);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["near_duplicates"], 0);
    let rejected = r["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["line"], 4);
    assert_eq!(rejected[0]["field"], "");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    assert_eq!(rejected[1]["line"], 5);
    assert_eq!(rejected[1]["field"], "completion");
    let v1 = r["version"].as_str().unwrap().to_string();
    assert_eq!(v1.len(), 64);

    // Bob re-sends one of Alice's rows (other spacing) and adds one: the copy earns nothing.
    let bob = write(
        dir,
        "bob.jsonl",
        concat!(
            r#"{"prompt":"What  temperature bakes bread? ","completion":"Around 220 C."}"#,
            "\n",
            r#"{"prompt":"How much salt goes in pasta water?","completion":"About 10 g per litre."}"#,
            "\n",
        ),
    );
    let r = json(
        store,
        &["upload", "recipes", &bob, "--contributor", "bob", "--json"],
    );
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let v2 = r["version"].as_str().unwrap().to_string();

    // Signed upload: keygen, then --key; the contributor id is the public key.
    let key = dir.join("carol.key").display().to_string();
    let carol_id = ok(store, &["keygen", "--out", &key]).trim().to_string();
    assert!(carol_id.starts_with("ed25519:"));
    let carol = write(
        dir,
        "carol.jsonl",
        "{\"prompt\":\"Best pan for omelettes?\",\"completion\":\"A small non-stick pan.\"}\n",
    );
    let r = json(
        store,
        &["upload", "recipes", &carol, "--key", &key, "--json"],
    );
    assert_eq!(r["uploader"], carol_id.as_str());
    assert_eq!(r["signed"], true);

    // API key mapped to a contributor.
    let keys = write(dir, "keys.txt", "# api keys\ndave-key-0123456789 dave\n");
    let dave = write(
        dir,
        "dave.jsonl",
        "{\"prompt\":\"Can I freeze cooked rice?\",\"completion\":\"Yes, cool it quickly first.\"}\n",
    );
    let r = json(
        store,
        &[
            "upload",
            "recipes",
            &dave,
            "--api-key",
            "dave-key-0123456789",
            "--keys",
            &keys,
            "--json",
        ],
    );
    assert_eq!(r["uploader"], "dave");
    let out = tributary(
        store,
        &[
            "upload",
            "recipes",
            &dave,
            "--api-key",
            "wrong-key-0123456789",
            "--keys",
            &keys,
            "--json",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown API key"));

    // An empty file: a clear error, exit non-zero, nothing published.
    let empty = write(dir, "empty.jsonl", "");
    let out = tributary(
        store,
        &[
            "upload",
            "recipes",
            &empty,
            "--contributor",
            "alice",
            "--json",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty upload") && err.contains("nothing was published"),
        "{err}"
    );

    // list / show / diff / export
    let list = json(store, &["list", "--json"]);
    assert_eq!(list[0]["name"], "recipes");
    assert_eq!(list[0]["versions"], 4);
    let versions = json(store, &["show", "recipes", "--json"]);
    assert_eq!(versions.as_array().unwrap().len(), 4);
    assert_eq!(versions[1]["version"], v2.as_str());
    assert_eq!(versions[1]["parent"], v1.as_str());
    let diff = json(store, &["diff", "recipes", &v1[..12], "2", "--json"]);
    assert_eq!(diff["added"].as_array().unwrap().len(), 2);
    let exported = ok(store, &["export", "recipes"]);
    let rows: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let owners: Vec<&str> = rows
        .iter()
        .map(|r| r["contributor"].as_str().unwrap())
        .collect();
    assert_eq!(owners.iter().filter(|o| **o == "alice").count(), 3);
    assert_eq!(owners.iter().filter(|o| **o == "bob").count(), 1);
    let all = ok(store, &["export", "recipes", "--all", "--version", "2"]);
    assert_eq!(all.lines().count(), 5);

    // Errors name what is wrong.
    let out = tributary(store, &["upload", "nope", &bob, "--contributor", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = tributary(store, &["create", "Bad Name"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("datanet name"));
}

#[test]
fn datanet_cli_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    scenario(&store, dir.path());
}

#[test]
fn datanet_cli_on_s3_moto() {
    init_crypto();
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket("datanets").unwrap();
    let dir = tempfile::tempdir().unwrap();
    scenario(&moto.url("datanets", "t1"), dir.path());
}
