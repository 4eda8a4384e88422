//! Online attribution end to end with real parts: `tributary dev` (a real process over the
//! tiny-llama fixture), a datanet with two contributors, a job that trains an adapter on it
//! (its attribution index stored beside the adapter), a completion over HTTP, its
//! attribution record (`GET /v1/attributions/{id}`), its reward in the reward log exactly
//! once (a restart that re-sends an acknowledged reward does not pay twice),
//! `tributary attribution explain` and `rerun`, and a contributor withdrawn before an
//! answer earning nothing from it.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn tributary(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tributary(args);
    assert!(
        out.status.success(),
        "tributary {args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// `tributary dev` on a given data directory (so a restart keeps its store and log).
fn dev_on(dir: &Path, data: &Path, base: &Path, extra: &[&str]) -> Dev {
    let port = free_tcp_port();
    let log = dir.join(format!("dev-{port}.log"));
    let child = Command::new(bin())
        .args(["dev", "--workers", "1", "--data-dir"])
        .arg(data)
        .args(["--http", &format!("127.0.0.1:{port}")])
        .arg("--allow-path")
        .arg(dir)
        .arg("--allow-path")
        .arg(base)
        .arg("--base-model")
        .arg(base)
        .args(["--price-per-token", "1000", "--builder-share", "0.25"])
        .args(["--reward-window-ms", "100"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let dev = Dev {
        child,
        port,
        log,
        data: data.to_path_buf(),
    };
    wait_ready(port, "/readyz", 60, &|| dev.logs());
    dev
}

fn complete(dev: &Dev, model: &str, prompt: &str) -> Value {
    let body = serde_json::json!({
        "model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0,
    });
    let (code, text) = dev.request(
        "POST",
        "/v1/completions",
        "application/json",
        &body.to_string(),
    );
    assert_eq!(code, 200, "{text}\n{}", dev.logs());
    serde_json::from_str(&text).unwrap()
}

/// Polls the attribution route until the record has its acknowledged reward.
fn attribution(dev: &Dev, id: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let (code, text) = dev.request("GET", &format!("/v1/attributions/{id}"), "text/plain", "");
        if code == 200 {
            let v: Value = serde_json::from_str(&text).unwrap();
            if !v["reward"].is_null() {
                return v;
            }
        } else {
            assert_eq!(code, 404, "{text}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no attribution for {id}: {code} {text}\n{}",
            dev.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn balances(data: &Path) -> Value {
    let ledger = data.join("ledger");
    let out = ok(&[
        "ledger",
        "--replicas",
        ledger.to_str().unwrap(),
        "balances",
        "--json",
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

/// `ledger verify --json`: the chain's check, its record count and balances.
fn verified(data: &Path) -> Value {
    let ledger = data.join("ledger");
    let out = ok(&[
        "ledger",
        "--replicas",
        ledger.to_str().unwrap(),
        "verify",
        "--json",
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn a_served_answer_is_attributed_and_paid_once_and_a_withdrawn_contributor_is_not_paid() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-llama");
    let data = tmp.path().join("dev-data");
    let store = data.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let s = store.to_str().unwrap();

    // A datanet with two contributors: the demo data split between alice and bob.
    let lines: Vec<String> = std::fs::read_to_string(repo().join("assets/demo/train.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let half = lines.len() / 2;
    let (a, b) = (tmp.path().join("alice.jsonl"), tmp.path().join("bob.jsonl"));
    std::fs::write(&a, lines[..half].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[half..].join("\n") + "\n").unwrap();
    ok(&["datanet", "create", "clinic", "--store", s]);
    ok(&[
        "datanet",
        "upload",
        "clinic",
        a.to_str().unwrap(),
        "--contributor",
        "alice",
        "--store",
        s,
    ]);
    ok(&[
        "datanet",
        "upload",
        "clinic",
        b.to_str().unwrap(),
        "--contributor",
        "bob",
        "--store",
        s,
    ]);

    let dev = dev_on(tmp.path(), &data, &base, &[]);
    let spec = tmp.path().join("job.toml");
    std::fs::write(
        &spec,
        "base_model = \"BASE\"\ndata = \"datanet://clinic\"\nname = \"clinic-bot\"\n\
         [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
         [train]\nsteps = 6\nbatch_size = 8\ngrad_accum = 1\nlr = 1e-2\nseed = 7\n"
            .replace("BASE", base.to_str().unwrap()),
    )
    .unwrap();
    let job = submit_and_wait(&dev.url(), &spec);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", dev.logs());
    let digest = job["adapter_digest"].as_str().unwrap().to_string();

    // The index was recorded where the job trained and stored beside the adapter.
    let idx_dir = store.join("attribution/index").join(&digest);
    assert!(
        idx_dir.join("attribution.index").is_file(),
        "{}",
        dev.logs()
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(idx_dir.join("attribution.json")).unwrap()).unwrap();
    assert_eq!(summary["examples"], lines.len(), "{summary}");
    assert!(
        summary["bytes_per_example"].as_u64().unwrap() > 0,
        "{summary}"
    );
    let logs = stdout(&job_cli(&dev, &["logs", job["id"].as_str().unwrap()]));
    assert!(logs.contains("attribution index stored"), "{logs}");

    // An answer, then its attribution record and its reward.
    let answer = complete(&dev, "clinic-bot", "Who records blood pressure?");
    let id = answer["id"].as_str().unwrap().to_string();
    let rec = attribution(&dev, &id);
    assert_eq!(rec["request_id"], id);
    assert_eq!(rec["adapter"], digest);
    assert_eq!(rec["data"], "datanet://clinic");
    assert_eq!(rec["method"], "tracin_ccos");
    let c0 = &rec["choices"][0];
    let tokens = c0["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        tokens,
        answer["usage"]["completion_tokens"].as_u64().unwrap(),
        "{rec}"
    );
    assert_eq!(c0["bits"]["fee"]["total"].as_u64().unwrap(), tokens * 1000);
    assert_eq!(c0["bits"]["fee"]["builder"].as_u64().unwrap(), tokens * 250);
    let shares = c0["bits"]["shares"].as_object().unwrap().clone();
    assert!(!shares.is_empty(), "{rec}");
    assert!(shares.keys().all(|k| k == "alice" || k == "bob"), "{rec}");
    assert_eq!(
        shares.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        1_000_000
    );
    assert!(!c0["bits"]["top"].as_array().unwrap().is_empty());
    assert_eq!(rec["reward"]["total"].as_u64().unwrap(), tokens * 1000);
    let first_balances = balances(&data);
    let paid: u64 = first_balances
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(paid, tokens * 1000, "{first_balances}");

    // The read APIs.
    let top = shares
        .iter()
        .max_by_key(|(k, v)| (v.as_u64().unwrap(), std::cmp::Reverse((*k).clone())))
        .map(|(k, _)| k.clone())
        .unwrap();
    let r = get_ok(&dev, &format!("/v1/contributors/{top}/rewards"));
    assert_eq!(r["rewards"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["total"], first_balances[&top], "{r}");
    let a = get_ok(&dev, "/v1/adapters/clinic-bot/contributors");
    assert_eq!(a["adapter"], digest);
    assert_eq!(a["answers"], 1);
    assert_eq!(a["fees"].as_u64().unwrap(), tokens * 1000);
    let (code, _) = dev.request("GET", "/v1/attributions/cmpl-nope", "text/plain", "");
    assert_eq!(code, 404);

    // explain and rerun.
    let out = tributary(&["attribution", "explain", &id, "--store", s, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let explained: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(explained["choices"][0]["bits"], c0["bits"]);
    let out = tributary(&["attribution", "explain", &id, "--store", s]);
    assert!(
        out.status.success() && stdout(&out).contains("shares"),
        "{}",
        stderr(&out)
    );
    let out = tributary(&[
        "attribution",
        "rerun",
        &id,
        "--store",
        s,
        "--base-model",
        base.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let rerun: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(rerun["bits_equal"], true, "{rerun}");
    // A record whose stored bits were altered fails the rerun.
    let rec_path = store.join(format!("attribution/records/{id}.json"));
    let original = std::fs::read(&rec_path).unwrap();
    let mut altered: Value = serde_json::from_slice(&original).unwrap();
    altered["choices"][0]["bits"]["fee"]["builder"] = serde_json::json!(tokens * 250 + 1);
    std::fs::write(&rec_path, serde_json::to_vec(&altered).unwrap()).unwrap();
    let out = tributary(&[
        "attribution",
        "rerun",
        &id,
        "--store",
        s,
        "--base-model",
        base.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "an altered record must fail: {}",
        stdout(&out)
    );
    std::fs::write(&rec_path, &original).unwrap();

    // Exactly once: the process stops after the log acknowledged but (as if it crashed
    // before) without the receipt, so the reward's pending marker is still there; the
    // restarted process re-sends the reward, and the log leaves it out.
    drop(dev);
    std::fs::remove_file(store.join(format!("attribution/rewards/{id}.json"))).unwrap();
    std::fs::write(
        store.join(format!("attribution/pending/{id}.json")),
        serde_json::json!({"request_id": id, "answered_ms": 0}).to_string(),
    )
    .unwrap();
    // (The restarted process has a one-answer queue: answers beyond it wait in the durable
    // backlog, below.)
    let dev = dev_on(tmp.path(), &data, &base, &["--attribution-queue", "1"]);
    let again = attribution(&dev, &id);
    assert!(
        again["reward"]["seq"].is_null(),
        "re-sent, already in the log: {again}"
    );
    assert_eq!(
        balances(&data),
        first_balances,
        "a retry must not pay twice"
    );
    let report = verified(&data);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["records"], 1,
        "one record for one request id: {report}"
    );
    // The API (and the dashboard's Rewards page) read the same log.
    let (code, body) = dev.request("GET", "/v1/rewards", "text/plain", "");
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["ok"], true, "{api}");
    assert_eq!(api["records"], 1, "{api}");
    assert_eq!(api["balances"], first_balances, "{api}");

    // Withdrawal: the top contributor takes all their data back; the same question answered
    // after the takedown (greedy: the same answer) pays them nothing.
    ok(&[
        "datanet",
        "takedown",
        "clinic",
        "--contributor",
        &top,
        "--reason",
        "withdrawn",
        "--store",
        s,
    ]);
    let answer2 = complete(&dev, "clinic-bot", "Who records blood pressure?");
    assert_eq!(answer2["choices"][0]["text"], answer["choices"][0]["text"]);
    let id2 = answer2["id"].as_str().unwrap().to_string();
    let rec2 = attribution(&dev, &id2);
    let b2 = &rec2["choices"][0]["bits"];
    assert!(
        b2["shares"].get(&top).is_none(),
        "{top} withdrew before the answer: {rec2}"
    );
    assert!(!b2["withdrawn"].as_array().unwrap().is_empty(), "{rec2}");
    assert!(
        b2["top"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["contributor"] == top.as_str())
            .all(|t| t["paid"] == false),
        "{rec2}"
    );
    let after = balances(&data);
    assert_eq!(
        after[&top], first_balances[&top],
        "no new reward for {top}: {after}"
    );
    assert_eq!(verified(&data)["records"], 2);
    // The first answer still reruns to the same bits (it came before the takedown).
    let out = tributary(&[
        "attribution",
        "rerun",
        &id,
        "--store",
        s,
        "--base-model",
        base.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // A burst against the one-answer queue: answers beyond it wait in the store's backlog,
    // and every one is attributed and paid.
    let ids: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let dev = &dev;
                sc.spawn(move || {
                    let a = complete(
                        dev,
                        "clinic-bot",
                        &format!("What does the clinic keep {i}?"),
                    );
                    a["id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for id in &ids {
        let r = attribution(&dev, id);
        assert!(!r["reward"].is_null());
    }
    assert_eq!(verified(&data)["records"], 2 + ids.len() as u64);
    let (_, metrics) = http_get(dev.port, "/metrics").unwrap();
    let spilled: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tributary_attribution_spilled_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        spilled > 0.0,
        "the burst should overflow a one-answer queue:\n{metrics}"
    );
    assert!(
        std::fs::read_dir(store.join("attribution/backlog"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the backlog is empty once everything is attributed"
    );
    // (Each marker goes right after its receipt.)
    let t = Instant::now();
    while std::fs::read_dir(store.join("attribution/pending"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no reward is pending once every receipt is written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The reward views: the builder has a part of every answer's fee. Its rewards page in
    // answer order (the pages join up to the unpaged list, whose total is the log's
    // balance); the adapter view counts every answer; a bad page request is a 400 naming
    // the field.
    let builder = rec["builder"].as_str().unwrap().to_string();
    let all = get_ok(&dev, &format!("/v1/contributors/{builder}/rewards"));
    let rows = all["rewards"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2 + ids.len(), "{all}");
    assert!(all["next"].is_null(), "{all}");
    assert_eq!(all["total"], balances(&data)[&builder], "{all}");
    let times: Vec<u64> = rows
        .iter()
        .map(|r| r["time_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "answer order: {times:?}"
    );
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/contributors/{builder}/rewards?limit=3&after={c}"),
            None => format!("/v1/contributors/{builder}/rewards?limit=3"),
        };
        let page = get_ok(&dev, &path);
        let got = page["rewards"].as_array().unwrap();
        assert!(got.len() <= 3, "{page}");
        paged.extend(got.iter().cloned());
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, rows, "pages join up to the whole list");
    let view = get_ok(&dev, "/v1/adapters/clinic-bot/contributors");
    assert_eq!(view["answers"], 2 + ids.len() as u64, "{view}");
    for bad in ["?limit=0", "?limit=x", "?limit=10001", "?after=nope"] {
        let (code, text) = dev.request(
            "GET",
            &format!("/v1/contributors/{builder}/rewards{bad}"),
            "text/plain",
            "",
        );
        assert_eq!(code, 400, "{bad}: {text}");
        let field = if bad.starts_with("?limit") {
            "limit"
        } else {
            "after"
        };
        assert!(text.contains(field), "{bad}: {text}");
    }
    // /metrics lists the backlog and the reward lag.
    let (_, metrics) = http_get(dev.port, "/metrics").unwrap();
    assert!(
        metrics.contains("tributary_attribution_backlog"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_reward_lag_seconds_count"),
        "{metrics}"
    );
}

/// `GET path` on `dev`, which must answer 200 with JSON.
fn get_ok(dev: &Dev, path: &str) -> Value {
    let (code, text) = dev.request("GET", path, "text/plain", "");
    assert_eq!(code, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn job_cli(dev: &Dev, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("job")
        .args(args)
        .env("TRIBUTARY_COORDINATOR", dev.url())
        .env("TRIBUTARY_API_KEY", dev.key())
        .output()
        .unwrap()
}
