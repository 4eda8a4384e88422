//! `--device` (env `TRIBUTARY_DEVICE`) on every command that computes, end to end through
//! the binary: unknown devices and devices this build lacks (`wgpu`, `cuda[:N]`) fail naming
//! the flag or the feature, `cpu` trains and generates, and a `dev` node reports its device
//! on `/metrics` and in job records, and keeps a `resources.gpu` job queued with its reason
//! while no worker has a GPU (a CPU is not one, and neither is a software adapter such as
//! lavapipe).
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
use std::time::{Duration, Instant};

use common::*;

/// Every command that computes, with its required arguments (pointing nowhere: the device
/// is chosen before anything is read).
const COMMANDS: [&[&str]; 7] = [
    &[
        "model",
        "generate",
        "--model",
        "/nonexistent",
        "--prompt",
        "hi",
    ],
    &[
        "model",
        "finetune",
        "--model",
        "/nonexistent",
        "--data",
        "/nonexistent.jsonl",
        "--out",
        "/nonexistent-out",
    ],
    &["bench", "train", "--config", "/nonexistent.json"],
    &["bench", "generate", "--config", "/nonexistent.json"],
    &["bench", "attribution", "--model", "/nonexistent"],
    &[
        "dev",
        "--data-dir",
        "/nonexistent-dev",
        "--http",
        "127.0.0.1:0",
    ],
    &[
        "worker",
        "--etcd",
        "127.0.0.1:1",
        "--certs",
        "/nonexistent-certs",
        "--name",
        "w0",
    ],
];

fn run(args: &[&str], env_device: Option<&str>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("TRIBUTARY_DEVICE");
    if let Some(d) = env_device {
        cmd.env("TRIBUTARY_DEVICE", d);
    }
    cmd.output().unwrap()
}

#[test]
fn unknown_and_unbuilt_devices_fail_naming_the_flag_on_every_computing_command() {
    for args in COMMANDS {
        let what = args[..2].join(" ");
        let out = run(&[args, &["--device", "tpu"]].concat(), None);
        let err = stderr(&out);
        assert!(!out.status.success(), "{what} --device tpu succeeded");
        assert!(
            err.contains("--device")
                && err.contains("device `tpu`: expected one of auto, cpu, wgpu"),
            "{what}: {err}"
        );
        let out = run(args, Some("tpu"));
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{what} with TRIBUTARY_DEVICE=tpu succeeded"
        );
        assert!(
            err.contains("--device"),
            "{what}: the env error names the flag: {err}"
        );
        if !cfg!(feature = "wgpu") {
            let out = run(&[args, &["--device", "wgpu"]].concat(), None);
            let err = stderr(&out);
            assert!(!out.status.success(), "{what} --device wgpu succeeded");
            assert!(
                err.contains(
                    "device `wgpu`: this binary was built without the `wgpu` cargo feature"
                ),
                "{what}: {err}"
            );
        }
        if !cfg!(feature = "cuda") {
            let out = run(&[args, &["--device", "cuda:1"]].concat(), None);
            let err = stderr(&out);
            assert!(!out.status.success(), "{what} --device cuda:1 succeeded");
            assert!(
                err.contains(
                    "device `cuda`: this binary was built without the `cuda` cargo feature"
                ),
                "{what}: {err}"
            );
        }
    }
}

#[test]
fn device_cpu_trains_and_generates_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out_dir = tmp.path().join("adapter");
    let t0 = Instant::now();
    let out = Command::new(bin())
        .args([
            "model",
            "finetune",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--batch-size",
            "2",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--data")
        .arg(repo().join("assets/demo/train.jsonl"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("finetune.json")).unwrap()).unwrap();
    assert_eq!(record["device"], "cpu (burn-flex)", "{record}");
    let out = Command::new(bin())
        .args([
            "model",
            "generate",
            "--device",
            "cpu",
            "--json",
            "--max-new-tokens",
            "4",
        ])
        .args(["--prompt", "hello"])
        .arg("--model")
        .arg(&model)
        .arg("--adapter")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["completion_ids"].as_array().unwrap().len(), 4, "{v}");
    eprintln!("finetune + generate on --device cpu: {:?}", t0.elapsed());
}

/// Polls the job until `done` says so (30 s at most).
fn poll(dev: &Dev, id: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = dev.request("GET", &format!("/v1/jobs/{id}"), "text/plain", "");
        assert_eq!(code, 200, "{body}");
        let rec: serde_json::Value = serde_json::from_str(&body).unwrap();
        if done(&rec) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got there: {rec}\n{}",
            dev.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(dev: &Dev, spec: &str) -> String {
    let (code, body) = dev.request("POST", "/v1/jobs", "application/json", spec);
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn dev_reports_its_device_and_queues_gpu_jobs_with_a_reason_while_no_worker_has_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start_with(tmp.path(), 1, &["--device", "cpu"]);
    let (code, metrics) = http_get(dev.port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tributary_device_info{"))
        .unwrap_or_else(|| panic!("no tributary_device_info in /metrics:\n{metrics}"));
    for label in [r#"kind="cpu""#, r#"name="burn-flex""#, r#"gpu="false""#] {
        assert!(line.contains(label), "{line}");
    }
    assert!(line.ends_with(" 1"), "{line}");

    // A job that needs a GPU: the only worker is a CPU, so it stays queued with the reason.
    let spec = |resources: &str| {
        format!(
            r#"{{"base_model": "builtin:linear", "data": "synthetic",
                "train": {{"steps": 2, "batch_size": 2}}{resources}}}"#
        )
    };
    let gpu_job = submit(&dev, &spec(r#", "resources": {"gpu": 1}"#));
    let rec = poll(&dev, &gpu_job, |r| !r["waiting"].is_null());
    assert_eq!(rec["state"], "queued", "{rec}");
    assert!(
        rec["waiting"]
            .as_str()
            .unwrap()
            .starts_with("waiting for a worker with a GPU"),
        "{rec}"
    );
    // It blocks no one: a CPU job behind it runs, and its record names the worker's device.
    let cpu_job = submit(&dev, &spec(""));
    let rec = poll(&dev, &cpu_job, |r| {
        r["state"] == "succeeded" || r["state"] == "failed"
    });
    assert_eq!(rec["state"], "succeeded", "{rec}");
    assert_eq!(rec["devices"]["local-0"], "cpu (burn-flex)", "{rec}");
    assert!(rec["waiting"].is_null(), "{rec}");
    let rec = poll(&dev, &gpu_job, |_| true);
    assert_eq!(rec["state"], "queued", "still waiting for a GPU: {rec}");
    // A spec asking for more than one GPU per worker is refused, naming the field.
    let (code, body) = dev.request(
        "POST",
        "/v1/jobs",
        "application/json",
        &spec(r#", "resources": {"gpu": 2}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("resources.gpu = 2 is out of range"), "{body}");
}
