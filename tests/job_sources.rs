//! `tributary dev` end to end with real processes, sources other than local paths: the base
//! model named by a `file://` object-store URL (downloaded into the worker cache) and the
//! training data a datanet version (`datanet://demo@latest`) made with `tributary datanet`
//! in the dev store. The registry entry's digests must equal the local-path model digest and
//! the datanet version's manifest digest; a bad datanet name fails the job naming `data`.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn datanet(store: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin())
        .arg("datanet")
        .args(args)
        .args(["--store", store, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "datanet {args:?}: {}", stderr(&out));
    let text = stdout(&out);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_default()
}

fn spec(dir: &Path, name: &str, base_model: &str, data: &str) -> std::path::PathBuf {
    let spec = dir.join(name);
    std::fs::write(
        &spec,
        format!(
            "base_model = {base_model:?}\ndata = {data:?}\nworkers = 2\n\
             [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
             [train]\nsteps = 2\nbatch_size = 4\ngrad_accum = 1\nlr = 1e-3\nseed = 7\n",
        ),
    )
    .unwrap();
    spec
}

#[test]
fn dev_trains_a_url_model_on_a_datanet_version() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    // The "uploaded" model: the checkpoint's files under a file:// object-store prefix.
    let remote = tmp.path().join("bucket/models/tiny");
    std::fs::create_dir_all(&remote).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), remote.join(e.file_name())).unwrap();
    }
    let dev = Dev::start(tmp.path(), 2);
    let store = std::fs::canonicalize(&dev.data)
        .unwrap()
        .join("store")
        .display()
        .to_string();
    let out = Command::new(bin())
        .args(["datanet", "create", "demo", "--store", &store])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let train = repo().join("assets/demo/train.jsonl");
    let up = datanet(
        &store,
        &[
            "upload",
            "demo",
            train.to_str().unwrap(),
            "--contributor",
            "demo",
        ],
    );
    let version = up["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 64, "{up}");
    let accepted = up["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{up}");

    let url = format!("file://{}", remote.display());
    let good = spec(tmp.path(), "good.toml", &url, "datanet://demo@latest");
    let v = submit_and_wait(&dev.url(), &good);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", dev.logs());
    let id = v["id"].as_str().unwrap();
    let rec: serde_json::Value =
        serde_json::from_str(&stdout(&job(&dev.url(), &["status", id, "--json"]))).unwrap();
    assert_eq!(rec["examples"].as_u64(), Some(accepted), "{rec}");

    // The registry entry names the same base model as the local path and the datanet
    // version's manifest digest.
    let digest = v["adapter_digest"].as_str().unwrap();
    let entry = std::fs::read(Path::new(&store).join(format!("registry/{digest}.json"))).unwrap();
    let entry: serde_json::Value = serde_json::from_slice(&entry).unwrap();
    let local = tributary_model::source::base_model_digest(&model).unwrap();
    let local = tributary_protocol::Digest(local);
    assert_eq!(entry["base_model_digest"], local.to_hex(), "{entry}");
    assert_eq!(entry["data_digest"], version.as_str(), "{entry}");
    // The model was downloaded into the dev cache, not read in place.
    let cache = std::fs::canonicalize(&dev.data)
        .unwrap()
        .join("cache/models");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    // An unknown datanet fails the job with an error naming `data` and the datanet.
    let bad = spec(tmp.path(), "bad.toml", &url, "datanet://nope@latest");
    let out = job(
        &dev.url(),
        &["submit", bad.to_str().unwrap(), "--wait", "--json"],
    );
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("failed"), "{text}");
    assert!(
        text.contains("data") && text.contains("nope") && text.contains("does not exist"),
        "{text}"
    );
}
