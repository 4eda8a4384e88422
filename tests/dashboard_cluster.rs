//! The web dashboard against a cluster of real processes (Docker is not needed): etcd, two
//! `tributary coordinator` processes (leader and standby), a `tributary worker --base-model`
//! that trains and serves, a second worker that trains, and a `tributary gateway` serving the
//! pages, all over QUIC with mutual TLS on loopback and one file store. Chromium (headless,
//! Playwright for Python: tests/dashboard_cluster.py, sharing tests/browser_common.py with
//! the `dev` browser test) logs in at the gateway, sees the Cluster page name the leader and
//! list both workers, submits a job from the form and sees it succeed, chats with the
//! adapter, opens its attribution (computed on the serving worker, paid by the leader) and
//! re-runs it in the gateway, which has no model: the bits match. This side then checks the
//! same facts through the API. Screenshots go to `target/dashboard-cluster-screenshots/`
//! (and to docs/screenshots/ with `TRIBUTARY_UPDATE_SCREENSHOTS=1`).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;
#[path = "common/process_cluster.rs"]
mod process_cluster;

use std::process::Command;
use std::time::Instant;

use process_cluster::{Cluster, run_ok};
use serde_json::Value;

fn api(port: u16, key: &str, method: &str, path: &str) -> (u16, Value) {
    let (code, body) =
        common::http_request_key(port, method, path, "application/json", "", Some(key)).unwrap();
    (
        code,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[test]
fn the_dashboard_works_in_chromium_against_a_process_cluster() {
    let t0 = Instant::now();
    let mut c = Cluster::new();
    let certs = c.dir.path().join("certs");
    run_ok(&[
        "certs",
        "issue",
        "--name",
        "gw",
        "--dir",
        certs.to_str().unwrap(),
    ]);
    let store = c.store.clone();
    let key = {
        let out = Command::new(process_cluster::bin())
            .args([
                "keys", "create", "--store", &store, "--owner", "tester", "--scope", "admin",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        common::stdout(&out).trim().to_string()
    };
    // A datanet with two contributors (the demo data split between alice and bob).
    let tmp = c.dir.path().to_path_buf();
    let lines: Vec<String> =
        std::fs::read_to_string(common::repo().join("assets/demo/train.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
    let half = lines.len() / 2;
    run_ok(&["datanet", "create", "clinic", "--store", &store]);
    for (who, part) in [("alice", &lines[..half]), ("bob", &lines[half..])] {
        let f = tmp.join(format!("{who}.jsonl"));
        std::fs::write(&f, part.join("\n") + "\n").unwrap();
        run_ok(&[
            "datanet",
            "upload",
            "clinic",
            f.to_str().unwrap(),
            "--contributor",
            who,
            "--store",
            &store,
        ]);
    }

    let base = common::fixtures().join("tiny-llama");
    let (fixtures_s, tmp_s) = (
        common::fixtures().display().to_string(),
        tmp.display().to_string(),
    );
    c.spawn(
        "coord-a",
        &[
            "coordinator",
            "--http",
            &format!("127.0.0.1:{}", common::free_tcp_port()),
            "--reward-window-ms",
            "200",
        ],
    );
    c.spawn(
        "coord-b",
        &[
            "coordinator",
            "--http",
            &format!("127.0.0.1:{}", common::free_tcp_port()),
            "--reward-window-ms",
            "200",
        ],
    );
    c.spawn(
        "w1",
        &[
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--serve-listen",
            "127.0.0.1:0",
            "--base-model",
            base.to_str().unwrap(),
            "--allow-path",
            &fixtures_s,
            "--allow-path",
            &tmp_s,
            "--cache-dir",
            &format!("{tmp_s}/w1-cache"),
            "--price-per-token",
            "1000",
            "--builder-share",
            "0.25",
        ],
    );
    c.worker_allowing("w2", 0, &[common::fixtures().as_path(), tmp.as_path()]);
    let gw = common::free_tcp_port();
    c.spawn("gw", &["gateway", "--http", &format!("127.0.0.1:{gw}")]);
    common::wait_ready(gw, "/readyz", 60, &|| c.dump_logs());
    let ready_s = t0.elapsed().as_secs_f64();

    let shots = common::repo().join("target/dashboard-cluster-screenshots");
    let t1 = Instant::now();
    let out = Command::new(common::cached_python("browser"))
        .arg(common::repo().join("tests/dashboard_cluster.py"))
        .args([&format!("http://127.0.0.1:{gw}"), &key])
        .arg(&base)
        .arg(&shots)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("\"ok\": true"),
        "{printed}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.dump_logs()
    );
    let seen: Value = serde_json::from_str(printed.lines().last().unwrap()).unwrap();
    eprintln!(
        "cluster ready in {ready_s:.1} s; browser run {:.1} s; whole test {:.1} s: {printed}",
        t1.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    // The same facts through the API the pages are views of.
    let job = seen["job"].as_str().unwrap();
    let (code, rec) = api(gw, &key, "GET", &format!("/v1/jobs/{job}"));
    assert_eq!(code, 200, "{rec}");
    assert_eq!(rec["state"], "succeeded", "{rec}");
    let rid = seen["request_id"].as_str().unwrap();
    let (code, attr) = api(gw, &key, "GET", &format!("/v1/attributions/{rid}"));
    assert_eq!(code, 200, "{attr}");
    assert_eq!(attr["adapter"], rec["adapter_digest"], "{attr}");
    assert!(attr["reward"]["seq"].is_u64(), "paid by the leader: {attr}");
    let shares = attr["choices"][0]["bits"]["shares"].as_object().unwrap();
    assert!(shares.keys().all(|k| k == "alice" || k == "bob"), "{attr}");
    let (code, view) = api(gw, &key, "GET", "/v1/cluster");
    assert_eq!(code, 200, "{view}");
    let leaders: Vec<&Value> = view["coordinators"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["leader"] == true)
        .collect();
    assert_eq!(leaders.len(), 1, "{view}");
    assert_eq!(view["etcd"]["healthy"], true, "{view}");
    assert_eq!(
        view["etcd"]["members"].as_array().map(Vec::len),
        Some(1),
        "{view}"
    );
    assert_eq!(view["store"]["reachable"], true, "{view}");
    if std::env::var("TRIBUTARY_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = common::repo().join("docs/screenshots");
        for e in std::fs::read_dir(&shots).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, docs.join(p.file_name().unwrap())).unwrap();
        }
    }
    // This gateway was not given the base model: GGUF export says why.
    let digest = rec["adapter_digest"].as_str().unwrap();
    let (code, err) = api(gw, &key, "GET", &format!("/v1/adapters/{digest}/gguf"));
    assert_eq!(code, 409, "{err}");
    assert!(err.to_string().contains("--base-model"), "{err}");
}
