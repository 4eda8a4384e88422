//! The cluster-serving rig shared by `tests/serve_cluster*.rs`: a temp etcd, a `tributary
//! gateway` and `tributary worker --base-model` processes over QUIC with mutual TLS
//! (certificates from `tributary certs`), a file store with an admin API key, the tiny
//! fixture model; and helpers to register adapters, send chat requests and read the
//! gateway's metrics. Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::common::*;
use tributary_coordinator::local_etcd::EtcdServer;

pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

pub struct Rig {
    _etcd: EtcdServer,
    pub dir: tempfile::TempDir,
    pub procs: Vec<(String, Proc)>,
    pub gateway_port: u16,
    pub key: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for (_, p) in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

pub fn run_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tributary {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Rig {
    pub fn store(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }

    pub fn spawn(&mut self, name: &str, etcd: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Command::new(bin())
            .args(args)
            .args(["--name", name, "--lease-ttl", "2"])
            .env("TRIBUTARY_ETCD", etcd)
            .env("TRIBUTARY_CERTS", self.dir.path().join("certs"))
            .env("TRIBUTARY_STORE", self.store())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.procs.push((name.into(), Proc { child, log }));
    }

    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|(n, p)| {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- {n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The process id of `name`.
    pub fn pid(&self, name: &str) -> u32 {
        let (_, p) = self.procs.iter().find(|(n, _)| n == name).unwrap();
        p.child.id()
    }

    pub fn kill9(&mut self, name: &str) {
        let (_, p) = self.procs.iter_mut().find(|(n, _)| n == name).unwrap();
        p.child.kill().unwrap(); // SIGKILL
        let _ = p.child.wait();
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_request_key(
            self.gateway_port,
            "GET",
            path,
            "text/plain",
            "",
            Some(&self.key),
        )
        .unwrap_or((0, String::new()))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }
}

pub fn start(workers: &[&str]) -> Rig {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs_s = certs.to_str().unwrap();
    run_ok(&["certs", "init", "--out", certs_s], &[]);
    for n in ["w1", "w2", "gw", "bench"] {
        run_ok(&["certs", "issue", "--name", n, "--dir", certs_s], &[]);
    }
    let store = dir.path().join("store").display().to_string();
    let key = run_ok(
        &[
            "keys", "create", "--store", &store, "--owner", "tester", "--scope", "admin",
        ],
        &[],
    )
    .trim()
    .to_string();
    let url = etcd.url();
    let mut rig = Rig {
        _etcd: etcd,
        dir,
        procs: Vec::new(),
        gateway_port: free_tcp_port(),
        key,
    };
    let http = format!("127.0.0.1:{}", rig.gateway_port);
    rig.spawn("gw", &url, &["gateway", "--http", &http]);
    wait_ready(rig.gateway_port, "/healthz", 30, &|| rig.logs());
    // No serving worker yet: not ready, and says why.
    let (code, why) = http_get(rig.gateway_port, "/readyz").unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("no serving worker"), "{why}");
    let base = fixtures().join("tiny-llama");
    for &w in workers {
        rig.spawn(
            w,
            &url,
            &[
                "worker",
                "--listen",
                "127.0.0.1:0",
                "--serve-listen",
                "127.0.0.1:0",
                "--base-model",
                base.to_str().unwrap(),
                "--max-in-flight",
                "64",
            ],
        );
    }
    wait_ready(rig.gateway_port, "/readyz", 60, &|| rig.logs());
    rig
}

/// Registers `copies` variants of the fixture adapter (same weights, distinct digests: the
/// config file differs by trailing newlines) through the gateway; returns (name, digest).
pub fn register_adapters(rig: &Rig, copies: usize) -> Vec<(String, String)> {
    let src = fixtures().join("tiny-llama/adapter");
    (0..copies)
        .map(|i| {
            let dir = rig.dir.path().join(format!("adapter-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
            std::fs::write(
                dir.join("adapter_config.json"),
                config + &"\n".repeat(i + 1),
            )
            .unwrap();
            std::fs::copy(
                src.join("adapter_model.safetensors"),
                dir.join("adapter_model.safetensors"),
            )
            .unwrap();
            let name = format!("lora-{i}");
            run_ok(
                &[
                    "adapter",
                    "register",
                    dir.to_str().unwrap(),
                    "--name",
                    &name,
                ],
                &[
                    ("TRIBUTARY_COORDINATOR", &rig.url()),
                    ("TRIBUTARY_API_KEY", &rig.key),
                ],
            );
            let (code, shown) = rig.get(&format!("/v1/adapters/{name}"));
            assert_eq!(code, 200, "{shown}");
            let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
            (name, v["digest"].as_str().unwrap().to_string())
        })
        .collect()
}

/// One chat request, streamed or not: (status, body).
pub fn chat(port: u16, key: &str, model: &str, stream: bool, max_tokens: u32) -> (u16, String) {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    });
    http_request_key(
        port,
        "POST",
        "/v1/chat/completions",
        "application/json",
        &body.to_string(),
        Some(key),
    )
    .unwrap_or((0, String::new()))
}

/// Workers (by name) that hold `digest`, as the gateway's metrics say.
pub fn holders(metrics: &str, digest: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("tributary_adapter_resident{") && l.contains(digest))
        .filter(|l| l.ends_with(" 1"))
        .filter_map(|l| l.split("worker=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .map(str::to_string)
        .collect()
}

pub fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
