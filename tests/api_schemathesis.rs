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

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_response() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let dev = Dev::start_with(tmp.path(), 1, &["--base-model", model.to_str().unwrap()]);
    let examples = env_or("TRIBUTARY_SCHEMATHESIS_EXAMPLES", "8");
    let seed = env_or("TRIBUTARY_SCHEMATHESIS_SEED", "12");
    let report = tmp.path().join("schemathesis.json");
    let t0 = Instant::now();
    let out = Command::new(schemathesis())
        .arg("run")
        .arg(format!("{}/openapi.json", dev.url()))
        .args(["--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {}", dev.key())])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2", "--request-timeout", "20"])
        .args(["--generation-database", "none", "--no-color"])
        .args(["--report", "json", "--report-json-path"])
        .arg(&report)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let took = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = {
        let lines: Vec<&str> = stdout.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    println!("schemathesis ({examples} examples per operation, seed {seed}): {took:.1} s\n{tail}");
    assert!(
        out.status.success(),
        "schemathesis found problems ({took:.1} s):\n{stdout}\n{stderr}\n--- dev log ---\n{}",
        dev.logs()
    );
    // It ran against every documented operation, and the node still serves.
    assert!(stdout.contains("passed"), "{stdout}");
    let (code, _) = http_get(dev.port, "/readyz").unwrap();
    assert_eq!(code, 200, "{}", dev.logs());
}
