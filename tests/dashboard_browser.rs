//! The web dashboard end to end: a real `tributary dev` serving the tiny fixture model, and
//! Debian's Chromium (headless) driven by Playwright for Python (tests/dashboard_browser.py,
//! from the cached virtual environment scripts/setup-browser-deps.sh makes). The browser
//! logs in, uploads a datanet with bad rows and a `<script>` row, submits jobs from the form,
//! reloads mid-job, overlays runs, downloads an adapter and chats in the playground; this
//! side then checks the same facts through the JSON API the pages are views of (the stored
//! upload report's rejected rows, the job's train and eval loss series in object storage).
//! Screenshots go to `target/dashboard-screenshots/` (and to docs/screenshots/ with
//! `TRIBUTARY_UPDATE_SCREENSHOTS=1`).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

/// The Python with Playwright installed (scripts/setup-browser-deps.sh), and Chromium.
fn browser_python() -> PathBuf {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/setup-browser-deps.sh"
    );
    cached_python("browser")
}

fn get(dev: &Dev, path: &str) -> Value {
    let (code, body) = dev.request("GET", path, "application/json", "");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_dashboard_works_in_chromium_against_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-llama");
    let dev = Dev::start_with(
        tmp.path(),
        1,
        &[
            "--base-model",
            base.to_str().unwrap(),
            "--allow-path",
            base.to_str().unwrap(),
        ],
    );
    let shots = repo().join("target/dashboard-screenshots");
    let t0 = std::time::Instant::now();
    let out = Command::new(browser_python())
        .arg(repo().join("tests/dashboard_browser.py"))
        .args([&dev.url(), &dev.key()])
        .arg(&base)
        .arg(repo().join("assets/demo/train.jsonl"))
        .arg(&shots)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("\"ok\": true"),
        "{printed}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.logs()
    );
    eprintln!(
        "browser run: {:.1} s: {printed}",
        t0.elapsed().as_secs_f64()
    );

    // The same facts through the JSON twins.
    let uploads = get(&dev, "/v1/datanets/clinic/uploads");
    let id = uploads["data"][0]["upload_id"]
        .as_str()
        .unwrap()
        .to_string();
    let rejected = get(&dev, &format!("/v1/datanets/clinic/uploads/{id}/rejected"));
    let lines: Vec<u64> = rejected["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [44, 45], "{rejected}");
    assert!(
        rejected["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["reason"].as_str().unwrap().is_empty()),
        "{rejected}"
    );
    let jobs = get(&dev, "/v1/jobs");
    let first = jobs[0]["id"].as_str().unwrap();
    let m = get(&dev, &format!("/v1/jobs/{first}/metrics"));
    assert_eq!(m["train"].as_array().unwrap().len(), 300, "{m}");
    let eval = m["eval"].as_array().unwrap();
    assert!(eval.len() >= 3 && eval[0]["step"] == 0, "{m}");
    assert!(m["eval_examples"].as_u64().unwrap() >= 1, "{m}");
    // The series live in object storage, not in the job record.
    let rec = get(&dev, &format!("/v1/jobs/{first}"));
    assert!(rec.get("train").is_none() && rec.to_string().len() < 64 << 10);
    let stored = dev.data.join(format!("store/metrics/{first}/loss.json"));
    assert!(stored.exists(), "{} is missing", stored.display());

    if std::env::var("TRIBUTARY_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = repo().join("docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        for e in std::fs::read_dir(&shots).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, docs.join(p.file_name().unwrap())).unwrap();
        }
    }
}
