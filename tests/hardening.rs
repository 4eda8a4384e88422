//! No single input takes `tributary dev` down (issue 12), against the real binary: the
//! request that used to panic the worker actor and hot-loop the coordinator, hostile URLs
//! and paths, oversize bodies, a job that keeps failing beside a good one.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn post_json(dev: &Dev, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = dev.request("POST", "/v1/jobs", "application/json", body);
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (code, v)
}

fn record(dev: &Dev, id: &str) -> serde_json::Value {
    let (code, body) = dev.request("GET", &format!("/v1/jobs/{id}"), "application/json", "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn wait_terminal(dev: &Dev, id: &str, secs: u64) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let rec = record(dev, id);
        let state = rec["state"].as_str().unwrap_or_default().to_string();
        if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
            return rec;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{id} still {state}\n{rec}\n{}",
            dev.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_issue_request_is_refused_naming_the_field_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), 1);
    // The exact request from the issue: it used to panic the worker actor
    // (Duration::from_secs_f64(inf)) and requeue the job in a hot loop forever.
    let (code, v) = post_json(
        &dev,
        r#"{"base_model": "s3://b/p?timeout=inf", "data": "x.jsonl", "train": {"steps": 1}}"#,
    );
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["param"], "base_model", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout=inf"),
        "{v}"
    );
    for (body, field) in [
        (
            r#"{"base_model": "s3://b/p?timeout=NaN", "data": "x", "train": {"steps": 1}}"#,
            "base_model",
        ),
        (
            r#"{"base_model": "m", "data": "s3://b/x.jsonl?timeout=-1", "train": {"steps": 1}}"#,
            "data",
        ),
        (
            r#"{"base_model": "ftp://h/m", "data": "x", "train": {"steps": 1}}"#,
            "base_model",
        ),
        (
            r#"{"base_model": "file://rel", "data": "x", "train": {"steps": 1}}"#,
            "base_model",
        ),
        (
            r#"{"base_model": "m", "data": "x", "train": {"steps": 18446744073709551615}}"#,
            "train.steps",
        ),
        (
            r#"{"base_model": "m", "data": "x", "train": {"epochs": 4294967295}}"#,
            "train.epochs",
        ),
        (
            r#"{"base_model": "m", "data": "x", "train": {"steps": 1, "batch_size": 4294967295}}"#,
            "train.batch_size",
        ),
    ] {
        let (code, v) = post_json(&dev, body);
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], field, "{body}: {v}");
    }
    // Too large a body: 413, and the server is still there.
    let big = format!("{{\"base_model\": \"{}\"}}", "x".repeat(3 << 20));
    let (code, _) = http_request(dev.port, "POST", "/v1/jobs", "application/json", &big)
        .unwrap_or((413, String::new()));
    assert_eq!(code, 413);
    assert_eq!(
        http_get(dev.port, "/readyz").unwrap().0,
        200,
        "{}",
        dev.logs()
    );

    // A job after all that still runs.
    let (code, v) = post_json(
        &dev,
        r#"{"base_model": "builtin:linear", "data": "synthetic", "train": {"steps": 3, "batch_size": 2}}"#,
    );
    assert_eq!(code, 201, "{v}");
    let rec = wait_terminal(&dev, v["id"].as_str().unwrap(), 60);
    assert_eq!(rec["state"], "succeeded", "{rec}");
    assert!(!dev.logs().contains("panicked"), "{}", dev.logs());
}

#[test]
fn paths_outside_allow_path_are_refused_and_a_failing_job_does_not_starve_a_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), 1);
    // Passes validation (a plain path), fails on the worker: outside --allow-path. It is
    // retried a bounded number of times with back-off, then fails naming the path.
    let (code, v) = post_json(
        &dev,
        r#"{"base_model": "/etc", "data": "/etc/passwd", "train": {"steps": 1}}"#,
    );
    assert_eq!(code, 201, "{v}");
    let poison = v["id"].as_str().unwrap().to_string();
    let (code, v) = post_json(
        &dev,
        r#"{"base_model": "builtin:linear", "data": "synthetic", "train": {"steps": 20, "batch_size": 2}}"#,
    );
    assert_eq!(code, 201, "{v}");
    let good = v["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    let good_rec = wait_terminal(&dev, &good, 60);
    assert_eq!(good_rec["state"], "succeeded", "{good_rec}");
    let rec = wait_terminal(&dev, &poison, 60);
    let failed_after = t0.elapsed();
    assert_eq!(rec["state"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap();
    assert!(
        err.contains("\"/etc\"") && err.contains("--allow-path"),
        "{err}"
    );
    assert!(err.contains("3 attempts"), "{err}");
    assert_eq!(rec["attempts"], 3, "{rec}");
    // Back-off: 0.5 s then 1 s between the three attempts.
    assert!(
        failed_after >= Duration::from_millis(1500),
        "{failed_after:?}"
    );
    let logs: Vec<String> = rec["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["msg"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("queued again in"))
            .count(),
        2,
        "{logs:?}"
    );
    assert_eq!(http_get(dev.port, "/readyz").unwrap().0, 200);
}
