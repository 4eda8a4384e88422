//! One key scheme: `tributary keys create` writes a hashed key into a store's key store, and
//! `tributary datanet upload --api-key` resolves it there (no keys file): a key with the
//! `contribute` scope uploads as its owner; a key without it, or a revoked one, is refused.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("run tributary")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "tributary {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn store_keys_authenticate_datanet_uploads_by_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let erin = ok(&[
        "keys",
        "create",
        "--store",
        store,
        "--owner",
        "erin",
        "--scope",
        "contribute",
    ]);
    let erin = erin.trim();
    assert!(erin.starts_with("trib_"), "{erin}");
    let reader = ok(&[
        "keys",
        "create",
        "--store",
        store,
        "--owner",
        "rita",
        "--scope",
        "inference",
    ]);
    // Only hashes are stored.
    let listed = ok(&["keys", "list", "--store", store]);
    assert!(
        listed.contains("erin") && listed.contains("contribute"),
        "{listed}"
    );
    assert!(!listed.contains(erin));
    for entry in std::fs::read_dir(tmp.path().join("store/keys")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(erin));
    }
    ok(&["datanet", "create", "notes", "--store", store]);
    let rows = tmp.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"prompt\":\"What is rye?\",\"completion\":\"A cereal grain.\"}\n",
    )
    .unwrap();
    let rows = rows.to_str().unwrap();
    let out = ok(&[
        "datanet",
        "upload",
        "notes",
        rows,
        "--api-key",
        erin,
        "--store",
        store,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["uploader"], "erin", "{v}");
    let out = run(&[
        "datanet",
        "upload",
        "notes",
        rows,
        "--api-key",
        reader.trim(),
        "--store",
        store,
    ]);
    assert!(
        !out.status.success(),
        "a key without the contribute scope uploads nothing"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown API key"));
    let id = listed
        .lines()
        .find(|l| l.contains("erin"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    ok(&["keys", "revoke", &id, "--store", store]);
    let out = run(&[
        "datanet",
        "upload",
        "notes",
        rows,
        "--api-key",
        erin,
        "--store",
        store,
    ]);
    assert!(!out.status.success(), "a revoked key uploads nothing");
}

#[test]
fn dev_without_auth_warns_and_serves_anyone_and_with_auth_refuses_strangers() {
    let tmp = tempfile::tempdir().unwrap();
    let open = common::Dev::start_with(tmp.path(), 1, &["--insecure-no-auth"]);
    assert!(
        open.logs().contains("WARNING: --insecure-no-auth"),
        "{}",
        open.logs()
    );
    assert!(!open.data.join("admin.key").exists());
    let (code, body) = common::http_get(open.port, "/v1/jobs").unwrap();
    assert_eq!(code, 200, "{body}");
    let guarded = common::Dev::start(tmp.path(), 1);
    let (code, _) = common::http_get(guarded.port, "/v1/jobs").unwrap();
    assert_eq!(code, 401);
    assert_eq!(guarded.request("GET", "/v1/jobs", "text/plain", "").0, 200);
    // The key printed on start is the one written to the data directory.
    let key = guarded.key();
    assert!(guarded.logs().contains(&key));
}
