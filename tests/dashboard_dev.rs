//! The dashboard's server side against a real `tributary dev` process (no browser):
//! browser sessions that survive a restart and end by logout or key revocation; an adapter
//! downloaded as a llama.cpp GGUF LoRA adapter (read back with our GGUF reader, and equal
//! byte for byte to `tributary model export-lora`'s); and an answer's attribution re-run
//! bit for bit through `POST /v1/attributions/{id}/rerun` (and the dashboard's form without
//! JavaScript), a tampered record showing its first difference, another key getting a 404.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// One HTTP/1.1 exchange: status, headers (lower-case names), body bytes.
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The value the response sets for cookie `name`.
    fn set_cookie(&self, name: &str) -> String {
        self.header("set-cookie")
            .lines()
            .find_map(|c| c.strip_prefix(&format!("{name}=")))
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("no {name} cookie: {:?}", self.headers))
            .to_string()
    }
}

fn http(port: u16, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Http {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = unchunk(&body);
    }
    Http {
        status,
        headers,
        body,
    }
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

fn api(dev: &Dev, key: &str, method: &str, path: &str, body: &str) -> Http {
    let auth = format!("Bearer {key}");
    http(
        dev.port,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// Logs in through the login form with `key`; the session cookie (`name=value`).
fn log_in(dev: &Dev, key: &str) -> String {
    let form = http(dev.port, "GET", "/login", &[], b"");
    assert_eq!(form.status, 200);
    let csrf = form.set_cookie("tributary_login_csrf");
    let body = format!("csrf={csrf}&key={key}");
    let cookie = format!("tributary_login_csrf={csrf}");
    let r = http(
        dev.port,
        "POST",
        "/login",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    assert_eq!(
        (r.status, r.header("location")),
        (303, "/datanets".into()),
        "{}",
        r.text()
    );
    format!("tributary_session={}", r.set_cookie("tributary_session"))
}

/// A page with a session cookie: 200 with the page, or 303 to the login form.
fn page(dev: &Dev, cookie: &str, path: &str) -> Http {
    http(dev.port, "GET", path, &[("Cookie", cookie)], b"")
}

fn logged_in(dev: &Dev, cookie: &str) -> bool {
    let r = page(dev, cookie, "/datanets");
    match r.status {
        200 => true,
        303 => {
            assert_eq!(r.header("location"), "/login");
            false
        }
        other => panic!("/datanets: {other} {}", r.text()),
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf-token\" content=\"").unwrap() + 27;
    html[at..at + 64].to_string()
}

#[test]
fn dashboard_sessions_survive_a_restart_and_end_by_logout_or_a_revoked_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::start_on(tmp.path(), &data, 1, &[]);
    let admin = dev.key();
    let made = api(
        &dev,
        &admin,
        "POST",
        "/v1/keys",
        r#"{"owner": "carol", "scopes": ["contribute", "build"]}"#,
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let (carol, carol_id) = (
        made.json()["key"].as_str().unwrap().to_string(),
        made.json()["id"].as_str().unwrap().to_string(),
    );
    let a = log_in(&dev, &admin);
    let b = log_in(&dev, &admin);
    let c = log_in(&dev, &carol);
    assert!(logged_in(&dev, &a) && logged_in(&dev, &b) && logged_in(&dev, &c));
    // Stored hashed: neither the session ids nor the keys are in the store.
    let dir = data.join("store/dashboard/sessions");
    let stored: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(stored.len(), 3);
    for s in &stored {
        for secret in [&admin, &carol, &a[18..].to_string(), &c[18..].to_string()] {
            assert!(!s.contains(secret.as_str()), "{s}");
        }
    }

    // A restart on the same data directory keeps every browser logged in.
    drop(dev);
    let dev = Dev::start_on(tmp.path(), &data, 1, &[]);
    assert!(logged_in(&dev, &a) && logged_in(&dev, &b) && logged_in(&dev, &c));
    assert!(page(&dev, &c, "/datanets").text().contains("carol"));

    // Logging out ends that session (and only it), also across the next restart.
    let html = page(&dev, &a, "/datanets").text();
    let r = http(
        dev.port,
        "POST",
        "/logout",
        &[
            ("Cookie", &a),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf={}", csrf_of(&html)).as_bytes(),
    );
    assert_eq!(r.status, 303);
    assert!(!logged_in(&dev, &a) && logged_in(&dev, &b));

    // Revoking a key ends every session made with it.
    let r = api(&dev, &admin, "DELETE", &format!("/v1/keys/{carol_id}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!logged_in(&dev, &c));
    drop(dev);
    let dev = Dev::start_on(tmp.path(), &data, 1, &[]);
    assert!(!logged_in(&dev, &a), "logged out stays out after a restart");
    assert!(!logged_in(&dev, &c), "a revoked key's session stays ended");
    assert!(logged_in(&dev, &b));
    let left = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(left, 1, "logout and revocation delete the stored sessions");
    // A forged cookie is no session.
    assert!(!logged_in(
        &dev,
        &format!("tributary_session={}", "ab".repeat(32))
    ));
}

#[test]
fn an_adapter_downloads_as_a_gguf_lora_adapter_equal_to_export_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-llama");
    let dev = Dev::start_with(tmp.path(), 1, &["--base-model", base.to_str().unwrap()]);
    let key = dev.key();
    let b64 = |f: &str| {
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(base.join("adapter").join(f)).unwrap())
    };
    let body = json!({"name": "fixture", "files": {
        "adapter_config.json": b64("adapter_config.json"),
        "adapter_model.safetensors": b64("adapter_model.safetensors"),
    }});
    let r = api(&dev, &key, "POST", "/v1/adapters", &body.to_string());
    assert_eq!(r.status, 201, "{}", r.text());
    let digest = r.json()["digest"].as_str().unwrap().to_string();

    let t0 = Instant::now();
    let r = api(&dev, &key, "GET", "/v1/adapters/fixture/gguf", "");
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/octet-stream");
    assert_eq!(
        r.header("content-disposition"),
        format!("attachment; filename=\"{}-lora.gguf\"", &digest[..12])
    );
    let path = tmp.path().join("download.gguf");
    std::fs::write(&path, &r.body).unwrap();
    let file = tributary_model::gguf::GgufFile::open(&path).unwrap();
    let meta = |k: &str| file.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    assert_eq!(meta("general.type").as_deref(), Some("adapter"));
    assert_eq!(meta("adapter.type").as_deref(), Some("lora"));
    assert_eq!(meta("general.architecture").as_deref(), Some("llama"));
    assert!(file.get("adapter.lora.alpha").unwrap().as_f64().unwrap() > 0.0);
    let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"blk.0.attn_q.weight.lora_a")
            && names.contains(&"blk.0.attn_q.weight.lora_b"),
        "{names:?}"
    );
    // The same bytes as the CLI's export of the same adapter on the same base.
    let cli = tmp.path().join("cli.gguf");
    let out = Command::new(bin())
        .args(["model", "export-lora", "--model"])
        .arg(&base)
        .arg("--adapter")
        .arg(base.join("adapter"))
        .arg("--out")
        .arg(&cli)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&cli).unwrap() == r.body,
        "download differs from export-lora"
    );
    eprintln!(
        "GGUF download: {} bytes, {} tensors, {:.2} s",
        r.body.len(),
        names.len(),
        took.as_secs_f64()
    );
    // An unknown adapter is a 404 naming it.
    let r = api(&dev, &key, "GET", "/v1/adapters/nope/gguf", "");
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Polls `GET /v1/attributions/{id}` until the record is there.
fn record(dev: &Dev, key: &str, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let r = api(dev, key, "GET", &format!("/v1/attributions/{id}"), "");
        if r.status == 200 {
            return r.json();
        }
        assert_eq!(r.status, 404, "{}", r.text());
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no record for {id}\n{}",
            dev.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_attribution_reruns_bit_for_bit_and_a_tampered_record_shows_its_first_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-llama");
    let data = tmp.path().join("data");
    let store = data.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();
    let lines: Vec<String> = std::fs::read_to_string(repo().join("assets/demo/train.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let half = lines.len() / 2;
    let run = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    run(&["datanet", "create", "clinic", "--store", s]);
    for (who, part) in [("alice", &lines[..half]), ("bob", &lines[half..])] {
        let f = tmp.path().join(format!("{who}.jsonl"));
        std::fs::write(&f, part.join("\n") + "\n").unwrap();
        run(&[
            "datanet",
            "upload",
            "clinic",
            f.to_str().unwrap(),
            "--contributor",
            who,
            "--store",
            s,
        ]);
    }
    let dev = Dev::start_on(
        tmp.path(),
        &data,
        1,
        &[
            "--base-model",
            base.to_str().unwrap(),
            "--allow-path",
            base.to_str().unwrap(),
        ],
    );
    let key = dev.key();
    let spec = tmp.path().join("job.toml");
    std::fs::write(
        &spec,
        "base_model = \"BASE\"\ndata = \"datanet://clinic\"\nname = \"clinic-bot\"\n\
         [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
         [train]\nsteps = 4\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nseed = 7\n"
            .replace("BASE", base.to_str().unwrap()),
    )
    .unwrap();
    let job = submit_and_wait(&dev.url(), &spec);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", dev.logs());
    let chat = json!({"model": "clinic-bot", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Who records blood pressure?"}]});
    let r = api(
        &dev,
        &key,
        "POST",
        "/v1/chat/completions",
        &chat.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let rec = record(&dev, &key, &id);

    let t0 = Instant::now();
    let r = api(
        &dev,
        &key,
        "POST",
        &format!("/v1/attributions/{id}/rerun"),
        "",
    );
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["bits_match"], true, "{v}");
    assert_eq!(v["request_id"], id);
    assert_eq!(v["examples"].as_u64().unwrap() as usize, lines.len(), "{v}");
    let c0 = &v["choices"][0];
    assert_eq!(c0["stored_digest"], c0["recomputed_digest"], "{v}");
    assert!(c0["first_difference"].is_null(), "{v}");
    eprintln!(
        "rerun over {} examples: {:.2} s",
        lines.len(),
        took.as_secs_f64()
    );

    // The dashboard's form without JavaScript: a page saying the bits match; a forged CSRF
    // token is refused.
    let cookie = log_in(&dev, &key);
    let csrf = csrf_of(&page(&dev, &cookie, "/playground").text());
    let form = |token: &str| {
        http(
            dev.port,
            "POST",
            &format!("/playground/attribution/{id}/rerun"),
            &[
                ("Cookie", &cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            format!("csrf={token}").as_bytes(),
        )
    };
    let r = form(&csrf);
    assert_eq!(r.status, 200, "{}", r.text());
    let html = r.text();
    assert!(html.contains("bits match"), "{html}");
    assert!(
        html.contains(c0["stored_digest"].as_str().unwrap()),
        "{html}"
    );
    assert_eq!(form(&"0".repeat(64)).status, 403);

    // Another key (without admin) does not see it: a 404, as for reading the record.
    let made = api(
        &dev,
        &key,
        "POST",
        "/v1/keys",
        r#"{"owner": "mallory", "scopes": ["inference"]}"#,
    );
    let other = made.json()["key"].as_str().unwrap().to_string();
    let r = api(
        &dev,
        &other,
        "POST",
        &format!("/v1/attributions/{id}/rerun"),
        "",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = api(&dev, &key, "POST", "/v1/attributions/not-an-id/rerun", "");
    assert_eq!(r.status, 404, "{}", r.text());

    // A record whose shares were edited no longer matches what its inputs give.
    let path = store.join(format!("attribution/records/{id}.json"));
    let mut tampered = rec.clone();
    tampered.as_object_mut().unwrap().remove("reward");
    let shares = tampered["choices"][0]["bits"]["shares"]
        .as_object_mut()
        .unwrap();
    let (who, units) = shares
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .next()
        .unwrap();
    shares.insert(who.clone(), json!(units + 1));
    std::fs::write(&path, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let r = api(
        &dev,
        &key,
        "POST",
        &format!("/v1/attributions/{id}/rerun"),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["bits_match"], false, "{v}");
    let c0 = &v["choices"][0];
    assert_ne!(c0["stored_digest"], c0["recomputed_digest"]);
    assert_eq!(
        c0["first_difference"]["field"],
        format!("shares.{who}"),
        "{v}"
    );
    assert_eq!(c0["first_difference"]["stored"], units + 1);
    assert_eq!(c0["first_difference"]["recomputed"], units);
    // Missing features: a 409 that names them.
    std::fs::remove_file(store.join(format!("attribution/features/{id}/0.f32"))).unwrap();
    let r = api(
        &dev,
        &key,
        "POST",
        &format!("/v1/attributions/{id}/rerun"),
        "",
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("features"), "{}", r.text());
}
