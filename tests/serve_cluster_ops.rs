//! Cluster serving end to end, the operations beside routing (real etcd, a `tributary
//! gateway` and two `tributary worker --base-model` processes over QUIC with mutual TLS,
//! the tiny fixture model; see `tests/common/serve_rig.rs`):
//!
//! - deleting an adapter through the gateway unloads it from the worker holding it (its
//!   `tributary_adapter_resident` series goes away) after the request running on it has
//!   finished whole, and a request naming it gets 404;
//! - a non-streaming request whose worker is killed with -9 in the middle of generating
//!   gets a whole 200 answer, generated again on the other worker (the same tokens: greedy
//!   with a seed), and the gateway counts it as regenerated.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;
#[path = "common/serve_rig.rs"]
mod serve_rig;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use serve_rig::*;

/// Choices per long request: each step decodes all of them, so a request lasts long enough
/// to act on while it runs.
const CHOICES: u32 = 16;
/// Tokens per choice of a long request (the fixture's context is 256).
const LONG_TOKENS: u32 = 200;

/// A long chat request (many seeded choices, many tokens): (status, body).
fn long_chat(rig: &Rig, model: &str, stream: bool) -> (u16, String) {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": LONG_TOKENS,
        "n": CHOICES,
        "temperature": 1.0,
        "seed": 7,
        "logprobs": true,
        "top_logprobs": 20,
        "stream": stream,
    });
    http_request_key(
        rig.gateway_port,
        "POST",
        "/v1/chat/completions",
        "application/json",
        &body.to_string(),
        Some(&rig.key),
    )
    .unwrap_or((0, String::new()))
}

/// The choices' texts of a non-streaming answer, in order.
fn texts(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["finish_reason"].is_string(), "{c}");
            c["message"]["content"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Polls the gateway's metrics until `ok` holds for them; panics with them after `secs`.
fn wait_metrics(rig: &Rig, secs: u64, what: &str, ok: &dyn Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (_, m) = rig.get("/metrics");
        if ok(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {secs} s\n{m}\n{}",
            rig.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Requests the gateway has sent to `worker` whose answer started there (it counts one as
/// soon as the first text comes back, so a rise means a request is generating there now).
fn started_on(metrics: &str, worker: &str) -> f64 {
    metric(
        metrics,
        &format!("tributary_gateway_routed_total{{outcome=\"ok\",worker=\"{worker}\"}}"),
    )
}

#[test]
fn deletes_unload_from_workers_and_a_whole_answer_outlives_its_worker() {
    let t0 = Instant::now();
    let rig = start(&["w1", "w2"]);
    let adapters = register_adapters(&rig, 3);
    for (name, _) in &adapters {
        let (code, body) = chat(rig.gateway_port, &rig.key, name, false, 4);
        assert_eq!(code, 200, "{body}\n{}", rig.logs());
    }
    wait_metrics(&rig, 5, "every adapter resident", &|m| {
        adapters.iter().all(|(_, d)| holders(m, d).len() == 1)
    });

    // Deleting an adapter while a long request runs on it.
    let (gone, gone_digest) = adapters[0].clone();
    let home = holders(&rig.get("/metrics").1, &gone_digest)[0].clone();
    let t = Instant::now();
    let (code, body) = long_chat(&rig, &gone, false);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    eprintln!(
        "a long request takes {:.2} s ({} tokens)",
        t.elapsed().as_secs_f64(),
        v["usage"]["completion_tokens"]
    );
    let started = started_on(&rig.get("/metrics").1, &home);
    std::thread::scope(|s| {
        let running = s.spawn(|| {
            let r = long_chat(&rig, &gone, true);
            (r, Instant::now())
        });
        wait_metrics(&rig, 5, "the long request generating", &|m| {
            started_on(m, &home) > started
        });
        let (code, body) = http_request_key(
            rig.gateway_port,
            "DELETE",
            &format!("/v1/adapters/{gone}"),
            "application/json",
            "",
            Some(&rig.key),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        let deleted_at = Instant::now();
        let ((code, body), ended) = running.join().unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("data: [DONE]") && !body.contains("\"error\""),
            "the running request did not finish whole: {body}"
        );
        assert!(
            ended > deleted_at,
            "the long request ended before the delete: it did not run across it"
        );
        eprintln!(
            "the running request ended {:.2} s after the delete",
            (ended - deleted_at).as_secs_f64()
        );
    });
    for id in [&gone, &gone_digest] {
        let (code, body) = chat(rig.gateway_port, &rig.key, id, false, 4);
        assert_eq!(code, 404, "{body}");
        assert!(body.contains(id.as_str()), "{body}");
    }
    let m = wait_metrics(&rig, 5, "the deleted adapter unloaded", &|m| {
        holders(m, &gone_digest).is_empty()
    });
    for (name, d) in &adapters[1..] {
        assert_eq!(holders(&m, d).len(), 1, "{name} was unloaded too\n{m}");
    }
    assert!(
        rig.logs().contains("deleted adapter unloaded"),
        "{}",
        rig.logs()
    );

    // A non-streaming request whose worker dies mid-answer.
    let (name, digest) = adapters[1].clone();
    let victim = holders(&rig.get("/metrics").1, &digest)[0].clone();
    let (code, reference) = long_chat(&rig, &name, false);
    assert_eq!(code, 200, "{reference}");
    let before = metric(
        &rig.get("/metrics").1,
        "tributary_gateway_retries_total{reason=\"regenerated\"}",
    );
    let started = started_on(&rig.get("/metrics").1, &victim);
    let (code, body) = std::thread::scope(|s| {
        let running = s.spawn(|| long_chat(&rig, &name, false));
        wait_metrics(&rig, 5, "the request generating on its worker", &|m| {
            started_on(m, &victim) > started
        });
        let pid = rig.pid(&victim);
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        running.join().unwrap()
    });
    assert_eq!(code, 200, "{body}\n{}", rig.logs());
    assert_eq!(texts(&body), texts(&reference), "not the same answer");
    let m = rig.get("/metrics").1;
    let after = metric(
        &m,
        "tributary_gateway_retries_total{reason=\"regenerated\"}",
    );
    assert!(
        after >= before + 1.0,
        "the answer was not generated again ({before} -> {after})\n{m}"
    );
    eprintln!("{:.1} s in all", t0.elapsed().as_secs_f64());
}

/// Rolling restart: a worker sent SIGTERM leaves membership first (its lease revoked, so
/// the gateway routes nothing new there) and exits only after the answer it is generating
/// has finished, whole; requests meanwhile go to the other worker. Without the drain the
/// gateway closed the departed worker's connection and the running answer was cut.
#[test]
fn sigterm_drains_a_worker_without_cutting_its_running_answer() {
    let mut rig = start(&["w1", "w2"]);
    let adapters = register_adapters(&rig, 1);
    let (name, digest) = adapters[0].clone();
    let (code, body) = chat(rig.gateway_port, &rig.key, &name, false, 4);
    assert_eq!(code, 200, "{body}\n{}", rig.logs());
    let m = wait_metrics(&rig, 5, "the adapter resident", &|m| {
        holders(m, &digest).len() == 1
    });
    let home = holders(&m, &digest)[0].clone();
    let started = started_on(&m, &home);
    let (code, body) = std::thread::scope(|s| {
        let running = s.spawn(|| long_chat(&rig, &name, true));
        wait_metrics(&rig, 5, "the long answer generating", &|m| {
            started_on(m, &home) > started
        });
        let pid = rig.pid(&home);
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        // While it drains, the gateway routes around it.
        wait_metrics(&rig, 10, "the draining worker out of routing", &|m| {
            !m.contains(&format!("worker=\"{home}\""))
                || holders(m, &digest).iter().all(|w| *w != home)
        });
        let (code, body) = chat(rig.gateway_port, &rig.key, &name, false, 4);
        assert_eq!(
            code,
            200,
            "a request during the drain: {body}\n{}",
            rig.logs()
        );
        running.join().unwrap()
    });
    let (_, p) = rig.procs.iter_mut().find(|(n, _)| *n == home).unwrap();
    let status = p.child.wait().unwrap();
    assert_eq!(code, 200, "{body}\n{}", rig.logs());
    assert!(
        body.contains("data: [DONE]") && !body.contains("\"error\""),
        "the running answer was cut by the worker's SIGTERM: {body}\n{}",
        rig.logs()
    );
    assert_eq!(
        body.matches("\"finish_reason\":\"").count(),
        16,
        "every choice finished (length or stop): {body}"
    );
    assert!(
        status.success(),
        "the worker exited {status}\n{}",
        rig.logs()
    );
    assert!(
        rig.logs().contains(&format!("{home}: drained in")),
        "{}",
        rig.logs()
    );
}
