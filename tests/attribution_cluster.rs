//! Online attribution in a cluster, with real parts: etcd (a temp server), two
//! `tributary coordinator` processes (leader and standby), a `tributary worker
//! --base-model` that trains and serves, a `tributary gateway`, QUIC with mutual TLS on
//! loopback, a file store holding keys, datanet, adapters, records and the reward log.
//!
//! A job trains an adapter on a two-contributor datanet (its attribution index stored beside
//! it); an answer served through the gateway is attributed on the worker; the leader is
//! killed with -9 before its reward window closes; the standby takes over and pays the
//! answer once, under its own fencing token; a re-sent reward is left out by the log; a
//! failed attribution is retried, then recorded as failed with its error.
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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tributary_coordinator::local_etcd::EtcdServer;

struct Rig {
    _etcd: EtcdServer,
    etcd: String,
    dir: tempfile::TempDir,
    procs: Vec<(String, Child, PathBuf)>,
    key: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Rig {
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Command::new(bin())
            .args(args)
            .args(["--name", name, "--lease-ttl", "2"])
            .env("TRIBUTARY_ETCD", &self.etcd)
            .env("TRIBUTARY_CERTS", self.dir.path().join("certs"))
            .env("TRIBUTARY_STORE", self.store())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.procs.push((name.into(), child, log));
    }

    fn log(&self, name: &str) -> String {
        let (_, _, log) = self.procs.iter().find(|(n, _, _)| n == name).unwrap();
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|(n, _, _)| {
                let text = self.log(n);
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kill9(&mut self, name: &str) {
        let (_, c, _) = self.procs.iter_mut().find(|(n, _, _)| n == name).unwrap();
        c.kill().unwrap(); // SIGKILL
        let _ = c.wait();
    }

    fn wait_log(&self, name: &str, needle: &str, secs: u64) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.log(name);
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{name} never logged {needle:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tributary(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tributary {args:?}: {}\n{}\n{}",
            stdout(&out),
            stderr(&out),
            self.logs()
        );
        stdout(&out)
    }
}

fn req(port: u16, key: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_request_key(port, method, path, "application/json", body, Some(key))
        .unwrap_or((0, String::new()))
}

fn complete(rig: &Rig, gw: u16, model: &str) -> Value {
    let body = serde_json::json!({
        "model": model, "prompt": "Who records blood pressure?", "max_tokens": 8,
        "temperature": 0,
    });
    let (code, text) = req(gw, &rig.key, "POST", "/v1/completions", &body.to_string());
    assert_eq!(code, 200, "{text}\n{}", rig.logs());
    serde_json::from_str(&text).unwrap()
}

/// Polls `GET /v1/attributions/{id}` until `done` holds.
fn attribution(rig: &Rig, gw: u16, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (code, text) = req(gw, &rig.key, "GET", &format!("/v1/attributions/{id}"), "");
        if code == 200 {
            let v: Value = serde_json::from_str(&text).unwrap();
            if done(&v) {
                return v;
            }
        } else {
            assert_eq!(code, 404, "{text}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "attribution of {id}: {code} {text}\n{}",
            rig.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ledger(rig: &Rig, cmd: &str) -> Value {
    let store = rig.store();
    let out = rig.tributary(
        &[
            "ledger",
            "--replicas",
            store.to_str().unwrap(),
            cmd,
            "--json",
        ],
        &[],
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// The reward-log entries holding `request_id`: (seq, epoch).
fn entries_with(rig: &Rig, request_id: &str) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(rig.store().join("rewards")).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue; // a write in progress
        }
        let bytes = std::fs::read(&path).unwrap();
        let entry = tributary_ledger::rewards::RewardEntry::decode(&bytes).unwrap();
        if entry.batch.iter().any(|r| r.request_id == request_id) {
            found.push((entry.seq, entry.epoch));
        }
    }
    found
}

fn token(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

#[test]
fn a_cluster_answer_is_attributed_on_its_worker_and_paid_once_by_the_leader_after_a_failover() {
    let t0 = Instant::now();
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut rig = Rig {
        etcd: etcd.url(),
        _etcd: etcd,
        dir,
        procs: Vec::new(),
        key: String::new(),
    };
    let certs_s = certs.to_str().unwrap();
    rig.tributary(&["certs", "init", "--out", certs_s], &[]);
    for n in ["w1", "gw", "c1", "c2"] {
        rig.tributary(&["certs", "issue", "--name", n, "--dir", certs_s], &[]);
    }
    let store = rig.store();
    let s = store.to_str().unwrap().to_string();
    rig.key = rig
        .tributary(
            &[
                "keys", "create", "--store", &s, "--owner", "tester", "--scope", "admin",
            ],
            &[],
        )
        .trim()
        .to_string();

    // A datanet with two contributors (the demo data split between alice and bob).
    let lines: Vec<String> = std::fs::read_to_string(repo().join("assets/demo/train.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let half = lines.len() / 2;
    let tmp = rig.dir.path().to_path_buf();
    let (a, b) = (tmp.join("alice.jsonl"), tmp.join("bob.jsonl"));
    std::fs::write(&a, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[half..].join("\n") + "\n").unwrap();
    rig.tributary(&["datanet", "create", "clinic", "--store", &s], &[]);
    for (f, who) in [(&a, "alice"), (&b, "bob")] {
        rig.tributary(
            &[
                "datanet",
                "upload",
                "clinic",
                f.to_str().unwrap(),
                "--contributor",
                who,
                "--store",
                &s,
            ],
            &[],
        );
    }

    // c1 leads with a reward window longer than this test: whatever it has not paid when
    // it dies can only be paid by the leader after it. c2 stands by with a short window.
    let (c1_port, c2_port, gw, w1_http) = (
        free_tcp_port(),
        free_tcp_port(),
        free_tcp_port(),
        free_tcp_port(),
    );
    rig.spawn(
        "c1",
        &[
            "coordinator",
            "--http",
            &format!("127.0.0.1:{c1_port}"),
            "--reward-window-ms",
            "600000",
        ],
    );
    let c1_token = token(&rig.wait_log("c1", "leader with fencing token", 30));
    rig.wait_log("c1", "reward actor: paying attributed answers", 30);
    rig.spawn(
        "c2",
        &[
            "coordinator",
            "--http",
            &format!("127.0.0.1:{c2_port}"),
            "--reward-window-ms",
            "200",
        ],
    );
    let base = fixtures().join("tiny-llama");
    let fixtures_s = fixtures().display().to_string();
    let tmp_s = tmp.display().to_string();
    rig.spawn(
        "w1",
        &[
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--serve-listen",
            "127.0.0.1:0",
            "--http",
            &format!("127.0.0.1:{w1_http}"),
            "--base-model",
            base.to_str().unwrap(),
            "--allow-path",
            &fixtures_s,
            "--allow-path",
            &tmp_s,
            "--cache-dir",
            &format!("{tmp_s}/cache"),
            "--price-per-token",
            "1000",
            "--builder-share",
            "0.25",
            "--attribution-retries",
            "1",
        ],
    );
    rig.spawn("gw", &["gateway", "--http", &format!("127.0.0.1:{gw}")]);
    wait_ready(gw, "/readyz", 60, &|| rig.logs());

    // A job trains the adapter on the datanet (through a coordinator's job API).
    let spec = tmp.join("job.toml");
    std::fs::write(
        &spec,
        "base_model = \"BASE\"\ndata = \"datanet://clinic\"\nname = \"clinic-bot\"\n\
         [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
         [train]\nsteps = 4\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nseed = 7\n"
            .replace("BASE", base.to_str().unwrap()),
    )
    .unwrap();
    let c1_url = format!("http://127.0.0.1:{c1_port}");
    let out = rig.tributary(
        &["job", "submit", spec.to_str().unwrap(), "--wait", "--json"],
        &[
            ("TRIBUTARY_COORDINATOR", &c1_url),
            ("TRIBUTARY_API_KEY", &rig.key),
        ],
    );
    let job: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(job["state"], "succeeded", "{job}\n{}", rig.logs());
    let digest = job["adapter_digest"].as_str().unwrap().to_string();
    assert!(
        store
            .join("attribution/index")
            .join(&digest)
            .join("attribution.index")
            .is_file()
    );

    // An answer through the gateway, attributed on the worker after it was sent: its
    // record and a pending reward, which the leader's 10-minute window has not paid.
    let answer = complete(&rig, gw, "clinic-bot");
    let id = answer["id"].as_str().unwrap().to_string();
    let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap();
    let rec = attribution(&rig, gw, &id, 60, |_| true);
    assert_eq!(rec["adapter"], digest);
    assert_eq!(rec["builder"], "tester");
    assert_eq!(rec["data"], "datanet://clinic");
    let shares = rec["choices"][0]["bits"]["shares"].as_object().unwrap();
    assert!(
        !shares.is_empty() && shares.keys().all(|k| k == "alice" || k == "bob"),
        "{rec}"
    );
    assert_eq!(
        rec["choices"][0]["bits"]["fee"]["total"].as_u64().unwrap(),
        tokens * 1000
    );
    assert!(rec["reward"].is_null(), "c1 must not have paid yet: {rec}");
    // (The marker follows the record.)
    let marker = store.join(format!("attribution/pending/{id}.json"));
    let t = Instant::now();
    while !marker.is_file() {
        assert!(t.elapsed() < Duration::from_secs(10), "no pending marker");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The leader dies before its window closes; the standby takes over and pays, once,
    // under its own fencing token.
    rig.kill9("c1");
    let c2_token = token(&rig.wait_log("c2", "leader with fencing token", 30));
    assert!(c2_token > c1_token);
    let paid = attribution(&rig, gw, &id, 30, |v| !v["reward"].is_null());
    assert_eq!(paid["reward"]["total"].as_u64().unwrap(), tokens * 1000);
    assert!(paid["reward"]["seq"].is_u64(), "{paid}");
    let holding = entries_with(&rig, &id);
    assert_eq!(holding.len(), 1, "{holding:?}");
    // A leader's writer epoch is its token × 2¹⁶ + its open attempt (the first: 0).
    assert_eq!(
        holding[0].1,
        c2_token << 16,
        "paid by the new leader: {holding:?}"
    );
    // The marker goes right after the receipt.
    let t = Instant::now();
    while marker.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "the marker stays");
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = ledger(&rig, "verify");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records"], 1, "{report}");
    let balances = ledger(&rig, "balances");
    let sum: u64 = balances
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(sum, tokens * 1000, "{balances}");
    assert_eq!(
        balances["tester"].as_u64().unwrap_or(0),
        tokens * 250,
        "{balances}"
    );

    // A leader that appended and died before the receipt: the marker is still there, the
    // next window re-sends the reward, and the log leaves it out.
    std::fs::remove_file(store.join(format!("attribution/rewards/{id}.json"))).unwrap();
    std::fs::write(
        store.join(format!("attribution/pending/{id}.json")),
        serde_json::json!({"request_id": id, "answered_ms": 0}).to_string(),
    )
    .unwrap();
    let again = attribution(&rig, gw, &id, 30, |v| !v["reward"].is_null());
    assert!(
        again["reward"]["seq"].is_null(),
        "already in the log: {again}"
    );
    assert_eq!(
        ledger(&rig, "balances"),
        balances,
        "a re-send must not pay twice"
    );
    assert_eq!(entries_with(&rig, &id).len(), 1);

    // Steady state under the new leader: another answer is paid within a few windows.
    let answer2 = complete(&rig, gw, "clinic-bot");
    let id2 = answer2["id"].as_str().unwrap().to_string();
    attribution(&rig, gw, &id2, 60, |v| !v["reward"].is_null());
    let report = ledger(&rig, "verify");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["records"], 2, "{report}");

    // A failed attribution (an adapter whose index is unreadable) is retried once, then
    // recorded as failed with its error.
    let src = fixtures().join("tiny-llama/adapter");
    rig.tributary(
        &[
            "adapter",
            "register",
            src.to_str().unwrap(),
            "--name",
            "broken",
        ],
        &[
            ("TRIBUTARY_COORDINATOR", &format!("http://127.0.0.1:{gw}")),
            ("TRIBUTARY_API_KEY", &rig.key),
        ],
    );
    let (_, shown) = req(gw, &rig.key, "GET", "/v1/adapters/broken", "");
    let broken: Value = serde_json::from_str(&shown).unwrap();
    let idx = store
        .join("attribution/index")
        .join(broken["digest"].as_str().unwrap());
    std::fs::create_dir_all(&idx).unwrap();
    std::fs::write(idx.join("attribution.index"), b"not an index").unwrap();
    let answer3 = complete(&rig, gw, "broken");
    let id3 = answer3["id"].as_str().unwrap().to_string();
    let failed = attribution(&rig, gw, &id3, 60, |v| v["status"] == "failed");
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    assert!(failed["reward"].is_null());
    assert!(rig.log("w1").contains("attribution failed; retrying"));
    let (_, metrics) = http_get(w1_http, "/metrics").unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        value("tributary_attribution_retries_total "),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value("tributary_attributions_total{outcome=\"failed\"} "),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value("tributary_attributions_total{outcome=\"recorded\"} "),
        2.0,
        "{metrics}"
    );
    // (Each worker's backlog is its own.)
    assert!(store.join("attribution/backlog/w1").is_dir());
    assert!(
        !store
            .join(format!("attribution/backlog/w1/{id3}.json"))
            .exists()
    );
    assert_eq!(ledger(&rig, "verify")["records"], 2);
    eprintln!("{:.1} s in all", t0.elapsed().as_secs_f64());
}
