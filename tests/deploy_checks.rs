//! The deployment files checked without a cluster: each test runs one check of
//! `deploy/tests/check_deploy.py` with the Python of the cached venv that
//! `scripts/setup-test-deps.sh` makes (helm-python-sdk renders the chart offline,
//! kubernetes-validate, check-jsonschema, yamllint) and `kubectl kustomize`. The `binary`
//! check runs this build's `tributary` (its `--help`, a live `tributary dev`, `tributary certs`);
//! `mtls` runs etcd, a coordinator and two workers with certificates laid out by the
//! manifests' init script from a cert-manager-shaped Secret (openssl), and a job on them;
//! `certs-job` runs the chart's pre-install certificate Job's command against a stub of the
//! Kubernetes API and a job on the Secret it made, with etcd over TLS as the chart bundles it.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::path::PathBuf;
use std::process::Command;

/// The venv's Python: `TRIBUTARY_DEPLOY_PYTHON`, or the path setup-test-deps.sh wrote.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIBUTARY_DEPLOY_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set")
        .join("tributary/deploy_python_path");
    let path = std::fs::read_to_string(&cache).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run scripts/setup-test-deps.sh (it makes the deploy-check venv)",
            cache.display()
        )
    });
    PathBuf::from(path.trim())
}

fn check(name: &str, extra: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/tests/check_deploy.py");
    let out = Command::new(python())
        .env("PYTHONDONTWRITEBYTECODE", "1") // no __pycache__ in the work tree
        .arg(&script)
        .arg(name)
        .args(extra)
        .output()
        .expect("running deploy/tests/check_deploy.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "check {name} failed:\n{text}");
    assert!(text.contains(&format!("ok   {name}:")), "{text}");
}

#[test]
fn manifests_and_chart_values_pass_yamllint() {
    check("lint", &[]);
}

#[test]
fn kustomize_overlays_render_and_validate_against_kubernetes_schemas() {
    check("kustomize", &[]);
}

#[test]
fn chart_lints_values_match_the_schema_and_renders_valid_manifests() {
    check("chart", &[]);
}

#[test]
fn chart_and_kustomize_base_agree_on_images_ports_probes_env_and_paths() {
    check("agree", &[]);
}

#[test]
fn manifests_use_the_ports_env_and_paths_the_binary_serves() {
    check("binary", &["--binary", env!("CARGO_BIN_EXE_tributary")]);
}

#[test]
fn dashboard_queries_only_metrics_the_code_exports() {
    check("dashboard", &[]);
}

#[test]
fn the_pre_install_certs_job_makes_a_secret_that_runs_a_job_over_mtls_and_tls_etcd_stub_kubernetes_api()
 {
    check("certs-job", &["--binary", env!("CARGO_BIN_EXE_tributary")]);
}

#[test]
fn a_job_runs_over_mtls_with_certs_from_a_cert_manager_shaped_secret() {
    check("mtls", &["--binary", env!("CARGO_BIN_EXE_tributary")]);
}
