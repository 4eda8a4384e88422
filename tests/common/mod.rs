//! Helpers shared by the job end-to-end tests: a tiny LoRA-trainable model made with
//! `tributary model init` (demo tokenizer), a `tributary dev` process, and running the
//! `tributary` CLI. Not every test binary uses every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared fixtures (`TRIBUTARY_FIXTURES`, else `../shared/fixtures` beside the repo).
pub fn fixtures() -> PathBuf {
    match std::env::var("TRIBUTARY_FIXTURES") {
        Ok(p) => PathBuf::from(p),
        Err(_) => repo().join("../shared/fixtures"),
    }
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small Llama with the demo tokenizer, in `dir/model`; returns its path.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
            "eos_token_id": 2}"#,
    )
    .unwrap();
    let model = dir.join("model");
    let out = Command::new(bin())
        .args(["model", "init", "--seed", "3", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        std::fs::copy(repo().join("assets/demo").join(f), model.join(f)).unwrap();
    }
    model
}

/// A LoRA job spec on `model` and the demo data, written to `dir/spec.toml`.
pub fn lora_spec(dir: &Path, model: &Path, workers: u32) -> PathBuf {
    let spec = dir.join(format!("spec-{workers}.toml"));
    std::fs::write(
        &spec,
        format!(
            "base_model = {:?}\ndata = {:?}\nworkers = {workers}\n\
             [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
             [train]\nsteps = 4\nbatch_size = 4\ngrad_accum = 2\nlr = 1e-3\nseed = 7\ncheckpoint_every = 2\n",
            model.display().to_string(),
            repo().join("assets/demo/train.jsonl").display().to_string(),
        ),
    )
    .unwrap();
    spec
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, "text/plain", "")
}

/// A plain HTTP/1.1 request; returns (status code, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_request_key(port, method, path, content_type, body, None)
}

/// A plain HTTP/1.1 request with `Authorization: Bearer KEY` when a key is given.
pub fn http_request_key(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    key: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    http_request_to(addr, method, path, content_type, body, key)
}

/// [`http_request_key`] to any address (a container's, say).
pub fn http_request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    key: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         {auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

/// Polls `GET path` until it answers 200.
pub fn wait_ready(port: u16, path: &str, secs: u64, what: &dyn Fn() -> String) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if matches!(http_get(port, path), Ok((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{path} on port {port} never became ready\n{}", what());
}

/// A `tributary dev` process, killed on drop.
pub struct Dev {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub data: PathBuf,
}

impl Dev {
    pub fn start(dir: &Path, workers: u32) -> Self {
        Self::start_with(dir, workers, &[])
    }

    /// `tributary dev` with extra flags (e.g. `--base-model DIR` to serve inference).
    pub fn start_with(dir: &Path, workers: u32, extra: &[&str]) -> Self {
        let port = free_tcp_port();
        Self::start_on(dir, &dir.join(format!("dev-data-{port}")), workers, extra)
    }

    /// `tributary dev` on data directory `data` (a restart on the same one keeps its store,
    /// keys, sessions and reward log).
    pub fn start_on(dir: &Path, data: &Path, workers: u32, extra: &[&str]) -> Self {
        let port = free_tcp_port();
        let data = data.to_path_buf();
        let log = dir.join(format!("dev-{port}.log"));
        let child = Command::new(bin())
            .args(["dev", "--workers", &workers.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .args(["--http", &format!("127.0.0.1:{port}")])
            // Models made by the tests live in `dir`; the demo data is under the repo (the
            // directory dev starts in, allowed by default).
            .arg("--allow-path")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let dev = Self {
            child,
            port,
            log,
            data,
        };
        wait_ready(port, "/readyz", 30, &|| dev.logs());
        dev
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin API key this dev process printed and wrote to its data directory.
    pub fn key(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.key"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// An authenticated HTTP/1.1 request to this dev process.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (u16, String) {
        http_request_key(
            self.port,
            method,
            path,
            content_type,
            body,
            Some(&self.key()),
        )
        .unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `tributary job ARGS` against `url`.
pub fn job(url: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("job")
        .args(args)
        .env("TRIBUTARY_COORDINATOR", url)
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `job submit SPEC --wait --json`: its one JSON line.
pub fn submit_and_wait(url: &str, spec: &Path) -> serde_json::Value {
    let out = job(url, &["submit", spec.to_str().unwrap(), "--wait", "--json"]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {text:?}\n{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(out.status.success(), "{v}\n{}", stderr(&out));
    v
}

/// The files of an adapter directory, for `tributary_ledger::adapters::adapter_digest`.
pub fn adapter_files(dir: &Path) -> Vec<tributary_ledger::adapters::AdapterFile> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        files.push(tributary_ledger::adapters::AdapterFile {
            name: e.file_name().to_string_lossy().into_owned(),
            bytes: std::fs::read(e.path()).unwrap().into(),
        });
    }
    files
}

/// A Python from a virtual environment the setup scripts cache under
/// `~/.cache/tributary` (`<kind>_python_path`, else `<kind>-venv/bin/python`): `openai`
/// (the official client, scripts/setup-test-deps.sh) or `browser` (Playwright,
/// scripts/setup-browser-deps.sh).
pub fn cached_python(kind: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
        .join("tributary");
    let py = std::fs::read_to_string(cache.join(format!("{kind}_python_path")))
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_else(|_| cache.join(format!("{kind}-venv/bin/python")));
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup-test-deps.sh (and scripts/setup-browser-deps.sh)",
        py.display()
    );
    py
}

/// The Python with the official `openai` client installed.
pub fn openai_python() -> PathBuf {
    cached_python("openai")
}
