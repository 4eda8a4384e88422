//! `tributary dev` end to end with real processes: a LoRA job submitted with `tributary job
//! submit --wait --json` (the JSON line, the adapter files, loading them with the model
//! crate), status, logs, /metrics, cancel, and a bad spec.
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

#[test]
fn dev_runs_a_lora_job_submitted_with_wait_json() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let spec = lora_spec(tmp.path(), &model, 1);
    let dev = Dev::start(tmp.path(), 1);
    let v = submit_and_wait(&dev.url(), &spec);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", dev.logs());
    assert_eq!(v["steps"], 4);
    let loss = v["final_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{v}");
    let digest = v["adapter_digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64);
    // The adapter is on disk in PEFT layout under its content address, and loads.
    let dir = std::path::PathBuf::from(v["adapter"].as_str().unwrap());
    assert!(dir.starts_with(&dev.data), "{dir:?}");
    assert!(dir.ends_with(digest));
    assert!(dir.join("adapter_config.json").is_file());
    assert!(dir.join("adapter_model.safetensors").is_file());
    assert_eq!(
        tributary_ledger::adapters::adapter_digest(&adapter_files(&dir)),
        digest
    );
    let device = tributary_model::device::default_device();
    let base = tributary_model::decoder::CausalLm::load(&model, &device).unwrap();
    let adapter = tributary_model::lora::LoraAdapter::load(&dir, base.config(), &device).unwrap();
    assert_eq!(adapter.config.r, 4);

    // status --json, logs, metrics.
    let id = v["id"].as_str().unwrap();
    let out = job(&dev.url(), &["status", id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rec: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rec["state"], "succeeded");
    assert_eq!(rec["progress"]["total_steps"], 4);
    assert_eq!(rec["examples"], 42);
    assert!(rec["checkpoint"]["key"].as_str().unwrap().contains(id));
    let logs = stdout(&job(&dev.url(), &["logs", id]));
    for needle in [
        "queued",
        "placed on workers local-0",
        "step 4/4 loss",
        "checkpoint at step 2",
        "succeeded",
    ] {
        assert!(
            logs.contains(needle),
            "{needle:?} missing from logs:\n{logs}"
        );
    }
    let (code, metrics) = http_get(dev.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("tributary_jobs{state=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_train_step_seconds_count 4"),
        "{metrics}"
    );
    assert!(metrics.contains("tributary_worker_heartbeat_age_seconds{node=\"local-0\"}"));
    let tokens: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tributary_train_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(tokens > 0.0);
    assert_eq!(http_get(dev.port, "/healthz").unwrap().0, 200);
}

#[test]
fn cancel_stops_a_running_job_and_a_bad_spec_names_its_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), 2);
    let spec = tmp.path().join("long.toml");
    std::fs::write(
        &spec,
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = 2\n\
         [train]\nsteps = 100000000\nbatch_size = 8\ngrad_accum = 4\nseed = 1\n",
    )
    .unwrap();
    let out = job(&dev.url(), &["submit", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let t0 = Instant::now();
    loop {
        let rec: serde_json::Value =
            serde_json::from_str(&stdout(&job(&dev.url(), &["status", &id, "--json"]))).unwrap();
        if rec["state"] == "running" && rec["progress"]["step"].as_u64() > Some(0) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{rec}\n{}",
            dev.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = job(&dev.url(), &["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = job(&dev.url(), &["status", &id, "--watch", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(!out.status.success(), "a cancelled job is not a success");
    // It stopped where it was: some steps done, and no step after the cancel landed.
    let steps = v["steps"].as_u64().unwrap();
    assert!(steps > 0, "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let rec: serde_json::Value =
        serde_json::from_str(&stdout(&job(&dev.url(), &["status", &id, "--json"]))).unwrap();
    assert_eq!(rec["progress"]["step"].as_u64(), Some(steps), "{rec}");
    // Cancelling again: a clear error.
    let out = job(&dev.url(), &["cancel", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));

    // A bad spec never reaches the queue; the error names the field and its limit.
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"base_model":"builtin:linear","data":"d","lora":{"rank":0},"train":{"steps":1}}"#,
    )
    .unwrap();
    let out = job(&dev.url(), &["submit", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lora.rank"), "{}", stderr(&out));
    // The API itself answers 400 naming the field, for clients other than the CLI.
    let (code, body) = dev.request(
        "POST",
        "/v1/jobs",
        "application/toml",
        "base_model = \"m\"\ndata = \"d\"\n[train]\nsteps = 1\nlr = 5.0\n",
    );
    assert_eq!(code, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["param"], "train.lr", "{body}");
    let (code, body) = dev.request("POST", "/v1/jobs", "application/json", "{\"data\": 1}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"param\""), "{body}");
    let (code, _) = dev.request("GET", "/v1/jobs/not%20an%20id", "text/plain", "");
    assert_eq!(code, 400);
    let (code, body) = dev.request("GET", "/v1/jobs/job-000000000000", "text/plain", "");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    // Without a key: 401 in OpenAI's error shape.
    let (code, body) = http_get(dev.port, "/v1/jobs").unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("authentication_error"), "{body}");
}
