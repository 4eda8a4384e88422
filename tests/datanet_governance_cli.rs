//! End-to-end governance through the real `tributary` binary on a local store: licences
//! (an unknown SPDX id is refused by name), a signed upload whose signature is its consent
//! to the terms, the scanner's report, the review queue, a takedown whose `--json` lists
//! the adapters trained on the data, takedown refusals (unknown id, someone else's key),
//! verify, and the reputation leaderboard.
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

use bytes::Bytes;
use serde_json::Value;
use tributary_ledger::Store;
use tributary_ledger::adapters::{AdapterFile, AdapterRegistry, Provenance};

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

fn fails(store: &str, args: &[&str]) -> String {
    let out = tributary(store, args);
    assert!(
        !out.status.success(),
        "tributary datanet {args:?} should fail"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn json(store: &str, args: &[&str]) -> Value {
    serde_json::from_str(ok(store, args).trim()).expect("one JSON document")
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn row(q: &str, a: &str) -> String {
    serde_json::json!({"prompt": q, "completion": a}).to_string() + "\n"
}

#[test]
fn governance_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").display().to_string();
    let terms = write(
        dir.path(),
        "terms.txt",
        "I wrote this and license it under CC-BY-4.0.\n",
    );

    let err = fails(&store, &["create", "docs", "--license", "CC-BY-5.0"]);
    assert!(
        err.contains("`CC-BY-5.0` is not an SPDX licence identifier"),
        "{err}"
    );
    let err = fails(&store, &["create", "docs", "--policy", "emails=reject"]);
    assert!(err.contains("unknown kind `emails`"), "{err}");
    ok(
        &store,
        &[
            "create",
            "docs",
            "--license",
            "cc-by-4.0",
            "--terms",
            &terms,
            "--owner",
            "olivia",
        ],
    );
    let t = json(&store, &["terms", "docs", "--json"]);
    assert_eq!(t["terms"]["license"]["spdx"], "CC-BY-4.0");
    let terms_digest = t["digest"].as_str().unwrap().to_string();

    // A signed upload: the CLI signs the upload digest and the terms digest.
    let key = dir.path().join("carol.key").display().to_string();
    let carol = ok(&store, &["keygen", "--out", &key]).trim().to_string();
    let data = write(
        dir.path(),
        "carol.jsonl",
        &[
            row(
                "How do I cite a dataset?",
                "Give the author, title, version and licence.",
            ),
            row(
                "Contact for questions?",
                "Write to carol.k@example.org please.",
            ),
            row("What is CC-BY?", "A licence that requires attribution."),
        ]
        .concat(),
    );
    let r = json(&store, &["upload", "docs", &data, "--key", &key, "--json"]);
    assert_eq!(
        (r["accepted"].as_u64(), r["terms"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(r["scan"][0]["kind"], "email");
    assert_eq!(r["scan"][0]["field"], "completion");
    assert!(!r.to_string().contains("carol.k@"), "{r}");
    let version = r["version"].as_str().unwrap().to_string();
    let shown = json(&store, &["show", "docs", "--version", "1", "--json"]);
    assert_eq!(
        shown["upload"]["consent"]["terms_digest"],
        terms_digest.as_str()
    );
    assert_eq!(shown["upload"]["consent"]["method"], "signature");
    let lic = json(&store, &["licenses", "docs", "--json"]);
    assert_eq!(lic[0]["license"], "CC-BY-4.0");
    assert_eq!(lic[0]["examples"], 3);
    let sig = json(&store, &["sign", &data, "--key", &key, "--datanet", "docs"]);
    assert_eq!(sig["signature"], shown["upload"]["consent"]["signature"]);

    // An adapter trained on version 1 (registered as the coordinator does).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let adapter = rt.block_on(async {
        AdapterRegistry::new(Store::open(&store).unwrap())
            .register(
                &[AdapterFile {
                    name: "adapter_model.safetensors".into(),
                    bytes: Bytes::from_static(b"weights"),
                }],
                Provenance {
                    base_model_digest: "b".repeat(64),
                    data_digest: version.clone(),
                    job_id: "job-1".into(),
                    spec: serde_json::json!({}),
                    created_unix_ms: 1,
                },
            )
            .await
            .unwrap()
    });
    assert_eq!(adapter.data_licenses[0].license, "CC-BY-4.0");

    // Takedown refusals: an unknown id; someone else's key.
    let exported = ok(&store, &["export", "docs"]);
    let first: Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    let err = fails(
        &store,
        &[
            "takedown",
            "docs",
            "--example",
            &"a".repeat(64),
            "--reason",
            "x",
        ],
    );
    assert!(
        err.contains(&format!("no example `{}`", "a".repeat(64))),
        "{err}"
    );
    let keys = write(dir.path(), "keys.txt", "mallory-key-0123456789 mallory\n");
    let err = fails(
        &store,
        &[
            "takedown",
            "docs",
            "--example",
            &id,
            "--reason",
            "x",
            "--api-key",
            "mallory-key-0123456789",
            "--keys",
            &keys,
        ],
    );
    assert!(err.contains("not allowed") && err.contains(&carol), "{err}");
    // Carol withdraws her own example with her key.
    let td = json(
        &store,
        &[
            "takedown",
            "docs",
            "--example",
            &id,
            "--reason",
            "changed my mind",
            "--key",
            &key,
            "--json",
        ],
    );
    assert_eq!(td["erased"], 1);
    assert_eq!(
        td["adapters"][0]["adapter_digest"],
        adapter.adapter_digest.as_str()
    );
    let old = ok(&store, &["export", "docs", "--version", "1", "--all"]);
    assert!(!old.contains(&id), "{old}");
    assert!(ok(&store, &["verify", "docs"]).contains("1 erased"));
    let log = json(&store, &["takedowns", "docs", "--json"]);
    assert_eq!(log[0]["entry"]["reason"], "changed my mind");

    // Review: the owner turns review on; uploads wait; the owner accepts.
    let okeys = write(dir.path(), "okeys.txt", "olivia-key-0123456789 olivia\n");
    ok(
        &store,
        &[
            "amend",
            "docs",
            "--review",
            "true",
            "--api-key",
            "olivia-key-0123456789",
            "--keys",
            &okeys,
        ],
    );
    let more = write(
        dir.path(),
        "dave.jsonl",
        &row("Is CC0 a licence?", "A public-domain dedication."),
    );
    let r = json(
        &store,
        &["upload", "docs", &more, "--contributor", "dave", "--json"],
    );
    assert_eq!(r["published"], false);
    let item = r["pending"][0]["item"].as_str().unwrap().to_string();
    let pending = json(&store, &["pending", "docs", "--json"]);
    assert_eq!(pending[0]["contributor"], "dave");
    let err = fails(
        &store,
        &[
            "review",
            "docs",
            &item,
            "--accept",
            "--api-key",
            "mallory-key-0123456789",
            "--keys",
            &keys,
        ],
    );
    assert!(err.contains("not the owner"), "{err}");
    let rv = json(
        &store,
        &[
            "review",
            "docs",
            &item,
            "--accept",
            "--api-key",
            "olivia-key-0123456789",
            "--keys",
            &okeys,
            "--json",
        ],
    );
    assert_eq!(rv["accepted"], 1);
    let board = json(&store, &["reputation", "docs", "--json"]);
    assert_eq!(board[0]["contributor"], carol.as_str());
    assert_eq!(board[0]["withdrawn"], 1);
    assert_eq!(board[1]["contributor"], "dave");
}
