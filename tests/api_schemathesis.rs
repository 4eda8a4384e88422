//! An HTTP fuzz run of the gateway's whole API (jobs, adapters, keys, datanets, rewards,
//! attributions, and the OpenAI API over a tiny base model) from the `/openapi.json` that
//! `tributary dev` itself serves, with schemathesis (from PyPI, in the venv that
//! `scripts/setup-test-deps.sh` caches) and the admin key (issue 12). Any finding fails
//! the test: a 5xx, a status code the document does not list for the operation, an error
//! body outside the documented `Error` schema, a wrong content type. The run is bounded
//! (examples per operation, a fixed seed by default) so that it takes about a minute.
//!
//! `TRIBUTARY_SCHEMATHESIS_EXAMPLES` and `TRIBUTARY_SCHEMATHESIS_SEED` change the bounds
//! (e.g. a longer run by hand; the figures are in docs/benchmarks.md).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;

/// The checks that must all pass (schemathesis 4's names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,\
                      response_schema_conformance,content_type_conformance";

fn schemathesis() -> std::path::PathBuf {
    let py = cached_python("schemathesis");
    py.parent().unwrap().join("schemathesis")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Something for the fuzzer to find: a datanet with a published version, a finished job
/// and the adapter it registered. Returns the job's id.
fn seed_data(dev: &Dev, model: &std::path::Path) -> String {
    let (code, body) = dev.request(
        "POST",
        "/v1/datanets",
        "application/json",
        r#"{"name": "demo", "license": "MIT"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let rows = std::fs::read_to_string(repo().join("assets/demo/train.jsonl")).unwrap();
    let (code, body) = dev.request(
        "POST",
        "/v1/datanets/demo/uploads",
        "application/x-ndjson",
        &rows,
    );
    assert_eq!(code, 201, "{body}");
    let spec = serde_json::json!({
        "name": "fuzz-bot",
        "base_model": model,
        "data": repo().join("assets/demo/train.jsonl"),
        "train": {"steps": 1},
    });
    let (code, body) = dev.request("POST", "/v1/jobs", "application/json", &spec.to_string());
    assert_eq!(code, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t0 = Instant::now();
    loop {
        let (_, rec) = dev.request("GET", &format!("/v1/jobs/{id}"), "application/json", "");
        if rec.contains("\"succeeded\"") {
            return id;
        }
        assert!(
            t0.elapsed().as_secs() < 60 && !rec.contains("\"failed\""),
            "{rec}\n{}",
            dev.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// schemathesis's configuration: besides random values, the generator draws path
/// parameters and the `model` of the OpenAI requests from what exists (with probability
/// 0.6 and 0.7), so requests get past the 404s into the handlers.
fn config(base_model: &str, job: &str) -> String {
    format!(
        r#"[dictionaries.models]
values = ["{base_model}", "fuzz-bot"]
[dictionaries.names]
values = ["demo", "fuzz-bot"]
[dictionaries.ids]
values = ["{job}", "fuzz-bot", "latest", "1"]
[parameters]
"body.model" = {{ dictionary = "models", probability = 0.7 }}
"path.name" = {{ dictionary = "names", probability = 0.6 }}
"path.id" = {{ dictionary = "ids", probability = 0.6 }}
"path.v" = {{ dictionary = "ids", probability = 0.6 }}
"#
    )
}

/// Runs schemathesis against `dev`'s served document with `config` (written to `dir`),
/// `default_examples` per operation unless the environment says otherwise; fails on any
/// finding (or error), and checks the node still serves afterwards.
fn fuzz(dev: &Dev, dir: &std::path::Path, config: &str, default_examples: &str, what: &str) {
    let config_file = dir.join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();
    let examples = env_or("TRIBUTARY_SCHEMATHESIS_EXAMPLES", default_examples);
    let seed = env_or("TRIBUTARY_SCHEMATHESIS_SEED", "12");
    let t0 = Instant::now();
    let out = Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config_file)
        .arg("run")
        .arg(format!("{}/openapi.json", dev.url()))
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {}", dev.key())])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2", "--request-timeout", "60"])
        // Hypothesis refuses to go on when generating data is slow (a loaded CI machine,
        // the base64 adapter uploads): that says nothing about the server.
        .args(["--suppress-health-check", "too_slow"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "json", "--report-json-path"])
        .arg(dir.join("report.json"))
        .current_dir(dir)
        .output()
        .unwrap();
    let took = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("Tested:") || l.contains("generated,") || l.contains("Seed:"))
        .collect();
    println!(
        "schemathesis on {what} ({examples} examples per operation, seed {seed}): {took:.1} s: {}",
        summary.join(" | ")
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let failures = report["failures"].as_array().unwrap();
    // Errors are not findings when they come from schemathesis's own data generation
    // (Hypothesis's "flaky" generator errors, health checks; seen ~1 run in 5 under load);
    // network errors, unresponsive operations and schema errors are.
    let errors: Vec<&str> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["title"].as_str().unwrap_or("?"))
        .collect();
    let real_errors: Vec<&&str> = errors
        .iter()
        .filter(|t| !matches!(**t, "Runtime Error" | "Failed Health Check"))
        .collect();
    if !errors.is_empty() {
        println!("schemathesis's own errors (not findings): {errors:?}\n{stdout}");
    }
    assert!(
        failures.is_empty() && real_errors.is_empty() && report["complete"] == true,
        "schemathesis found problems on {what} ({took:.1} s): {failures:?} {real_errors:?}\n{stdout}\n{stderr}\n--- dev log ---\n{}",
        dev.logs()
    );
    assert!(stdout.contains(" passed"), "{stdout}");
    let (code, _) = http_get(dev.port, "/readyz").unwrap();
    assert_eq!(code, 200, "{}", dev.logs());
}

/// The whole API: `tributary dev --base-model` (OpenAI API, adapters, jobs, datanets,
/// keys, rewards, attributions), with a datanet, a finished job and its adapter in it.
#[test]
fn schemathesis_finds_nothing_on_the_whole_api() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let dev = Dev::start_with(tmp.path(), 1, &["--base-model", model.to_str().unwrap()]);
    let job = seed_data(&dev, &model);
    let (_, models) = dev.request("GET", "/v1/models", "application/json", "");
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let base = models["data"][0]["id"].as_str().unwrap().to_owned();
    fuzz(
        &dev,
        tmp.path(),
        &config(&base, &job),
        "100",
        "dev --base-model",
    );
}

/// Plain `tributary dev` (no base model): the job API and what every process serves;
/// its document must not list the inference routes it does not serve.
#[test]
fn schemathesis_finds_nothing_on_the_job_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), 1);
    let (_, doc) = dev.request("GET", "/openapi.json", "application/json", "");
    assert!(!doc.contains("/v1/chat/completions"), "{doc}");
    fuzz(&dev, tmp.path(), "", "60", "dev");
}
