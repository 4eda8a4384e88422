//! `tributary bench attribution` through the built binary with planted sets given as JSONL
//! (`--data/--queries`): one JSON line on stdout, the table on stderr, and bad input named.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use common::fixtures;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn write_sets(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let mut data = String::new();
    let mut queries = String::new();
    let animals = [
        "cat", "dog", "cow", "owl", "bee", "fox", "elk", "yak", "ant", "emu", "eel",
    ];
    for (i, a) in animals.iter().enumerate() {
        let rows = [
            (
                "alice",
                format!("Spell {a} backwards."),
                a.chars().rev().collect::<String>(),
            ),
            (
                "bob",
                format!("What is {i} times two?"),
                format!("{} is the answer.", 2 * i),
            ),
            (
                "carol",
                format!("Make a list with {a}."),
                format!("- {a}\n- {a}s"),
            ),
        ];
        for (who, p, c) in rows {
            let line = serde_json::json!({"contributor": who, "prompt": p, "completion": c});
            if i < 9 {
                data += &format!("{line}\n");
            } else {
                let owner = who;
                let q = serde_json::json!({"prompt": p, "completion": c, "owner": owner});
                queries += &format!("{q}\n");
            }
        }
    }
    let d = dir.join("data.jsonl");
    let q = dir.join("queries.jsonl");
    std::fs::write(&d, data).expect("write");
    std::fs::write(&q, queries).expect("write");
    (d, q)
}

#[test]
fn bench_attribution_on_jsonl_sets_prints_one_json_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, q) = write_sets(dir.path());
    let model = fixtures().join("tiny-llama");
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["bench", "attribution", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&d)
        .arg("--queries")
        .arg(&q)
        .args([
            "--epochs",
            "2",
            "--k",
            "0",
            "--checkpoints",
            "2",
            "--no-attacks",
            "--lds",
            "3",
        ])
        .arg("--dump-features")
        .arg(dir.path().join("dump"))
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(v["contributors"], 3);
    assert_eq!(v["examples"], 27);
    assert_eq!(v["queries"], 6);
    let methods: Vec<&str> = v["methods"]
        .as_array()
        .expect("methods")
        .iter()
        .map(|m| m["method"].as_str().expect("name"))
        .collect();
    assert_eq!(
        methods,
        ["tracin", "tracin_cos", "tracin_ccos", "datainf", "bm25"]
    );
    for m in v["methods"].as_array().expect("methods") {
        let auc = m["auc"].as_f64().expect("auc");
        assert!((0.0..=1.0).contains(&auc), "{m}");
    }
    // exact features: the index stores the whole gradient
    assert_eq!(v["cost"]["gradient_dims"], v["cost"]["feature_dims"]);
    assert!(stderr.contains("method       AUC"), "{stderr}");
    // The base-gradient features plus the two trained snapshots.
    assert_eq!(v["options"]["base_gradient"], true);
    let dims = v["cost"]["feature_dims"].as_u64().expect("dims");
    let index = std::fs::metadata(dir.path().join("dump/index.f32")).expect("index.f32");
    assert_eq!(index.len(), 3 * 27 * dims * 4);
    let queries = std::fs::metadata(dir.path().join("dump/queries.f32")).expect("queries.f32");
    assert_eq!(queries.len(), 6 * 3 * dims * 4);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("dump/meta.json")).expect("meta.json"),
    )
    .expect("JSON");
    assert_eq!(meta["contributors"].as_array().map(Vec::len), Some(27));
    assert_eq!(meta["queries"].as_array().map(Vec::len), Some(6));
    // Three retrained halves, each answer's loss under each.
    assert_eq!(v["counterfactual"]["subsets"], 3);
    let cf: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("dump/counterfactual.json")).expect("cf"),
    )
    .expect("JSON");
    assert_eq!(cf["masks"].as_array().map(Vec::len), Some(3));
    assert_eq!(cf["losses"][0].as_array().map(Vec::len), Some(6));
    assert!(stderr.contains("LDS"), "{stderr}");
}

#[test]
fn bench_attribution_refuses_an_empty_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, q) = write_sets(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["bench", "attribution", "--model"])
        .arg(fixtures().join("tiny-llama"))
        .arg("--data")
        .arg(&d)
        .arg("--queries")
        .arg(&q)
        .args(["--epochs", "1", "--no-base-gradient", "--no-attacks"])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nothing to index"), "{stderr}");
}

#[test]
fn bench_attribution_names_a_bad_query_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, q) = write_sets(dir.path());
    std::fs::write(&q, "{\"prompt\": \"p\"}\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["bench", "attribution", "--model"])
        .arg(fixtures().join("tiny-llama"))
        .arg("--data")
        .arg(&d)
        .arg("--queries")
        .arg(&q)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("queries.jsonl line 1") && stderr.contains("owner"),
        "{stderr}"
    );
}
