//! Rolling restart of a whole cluster under serving load, with real processes (see
//! `tests/common/process_cluster.rs`): etcd over mutual TLS, two coordinators, two serving
//! workers (`tributary worker --base-model`, the tiny fixture model) and two gateways, all
//! QUIC with mutual TLS on loopback, certificates from `tributary certs`.
//!
//! A load generator sends OpenAI chat requests (streamed and not) without pause from four
//! clients through a load balancer that does what a Kubernetes Service does: it polls each
//! gateway's `/readyz` and sends new requests only to the ready ones. Meanwhile each gateway
//! is restarted in turn (SIGTERM: its `/readyz` answers 503 at once, the balancer stops
//! sending to it, the HTTP server serves out `--shutdown-delay-secs` and the requests in
//! flight, the process exits 0, a new one starts and becomes ready), then each worker (SIGTERM
//! while it has answers running: it leaves membership and drains them), then each
//! coordinator while a training job runs (the standby takes over; the job finishes with the
//! adapter a fault-free run trains). Not one request may fail; the served requests are
//! counted per phase.
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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process_cluster::*;
use serde_json::{Value, json};
use tributary_coordinator::JobState;
use tributary_coordinator::etcd::submit_job;

/// Seconds a gateway keeps serving after SIGTERM (its `/readyz` is 503 meanwhile): longer
/// than the balancer's poll period, as a preStop sleep must exceed the readiness probe's.
const SHUTDOWN_DELAY_SECS: &str = "1";
/// How often the balancer polls each gateway's `/readyz`.
const LB_POLL: Duration = Duration::from_millis(200);
/// How long a worker lets running answers finish after SIGTERM.
const DRAIN_TIMEOUT_SECS: &str = "20";
/// Load clients sending requests back to back.
const CLIENTS: usize = 4;
/// Steps of the training job run across the coordinators' restarts.
const JOB_STEPS: u64 = 250;
/// Requests each phase must serve before the next starts (so that serving is shown to go on
/// after each restart, and every phase's count means something).
const MIN_SERVED: usize = 20;
const PHASES: [&str; 7] = [
    "steady",
    "gateway gw1",
    "gateway gw2",
    "worker w1",
    "worker w2",
    "coordinator coord-a",
    "coordinator coord-b",
];

/// One request of the load, as the client saw it.
struct Outcome {
    phase: usize,
    gateway: usize,
    ok: bool,
    detail: String,
}

/// The load balancer and the load: what a Kubernetes Service and its clients do.
struct Load {
    ports: [u16; 2],
    key: String,
    ready: [AtomicBool; 2],
    phase: AtomicUsize,
    stop: AtomicBool,
    next: AtomicUsize,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Load {
    /// Polls every gateway's `/readyz`; a gateway is in rotation while it answers 200.
    fn balance(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            for (i, port) in self.ports.iter().enumerate() {
                let up = matches!(common::http_get(*port, "/readyz"), Ok((200, _)));
                self.ready[i].store(up, Ordering::SeqCst);
            }
            std::thread::sleep(LB_POLL);
        }
    }

    /// A ready gateway, round robin; `None` while none is.
    fn pick(&self) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (0..2)
            .map(|k| (n + k) % 2)
            .find(|&i| self.ready[i].load(Ordering::SeqCst))
    }

    /// One client: requests back to back until stopped (client 0 sends non-streaming
    /// requests, the others stream).
    fn client(&self, id: usize) {
        let stream = id != 0;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(gw) = self.pick() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let phase = self.phase.load(Ordering::SeqCst);
            let (code, body) = chat(self.ports[gw], &self.key, stream, 24);
            let ok = answer_ok(code, &body, stream);
            let detail = if ok {
                String::new()
            } else {
                format!("{code} {body}")
            };
            self.outcomes.lock().unwrap().push(Outcome {
                phase,
                gateway: gw,
                ok,
                detail,
            });
        }
    }

    fn served_in(&self, phase: usize) -> usize {
        let o = self.outcomes.lock().unwrap();
        o.iter().filter(|o| o.phase == phase && o.ok).count()
    }
}

/// A chat request for the base model: (status, body).
fn chat(port: u16, key: &str, stream: bool, max_tokens: u32) -> (u16, String) {
    let body = json!({
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": 11,
        "stream": stream,
    });
    common::http_request_key(
        port,
        "POST",
        "/v1/chat/completions",
        "application/json",
        &body.to_string(),
        Some(key),
    )
    .unwrap_or_else(|e| (0, format!("connection: {e}")))
}

/// A long streamed answer (16 choices of 200 tokens with log-probabilities: about a second
/// here), read as it comes: `first_event` is told when its first event has arrived, so the
/// answer is known to be in flight. Returns (status, body) and when the body ended.
fn long_stream(
    port: u16,
    key: &str,
    first_event: std::sync::mpsc::Sender<()>,
) -> ((u16, String), Instant) {
    use std::io::{Read, Write};
    let body = json!({
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 200,
        "n": 16,
        "temperature": 1.0,
        "seed": 7,
        "logprobs": true,
        "top_logprobs": 20,
        "stream": true,
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut told = false;
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !told && String::from_utf8_lossy(&raw).contains("data: ") {
            told = true;
            let _ = first_event.send(());
        }
    }
    let ended = Instant::now();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    ((code, body.to_string()), ended)
}

/// The serving address of a worker's latest run, from its log.
fn new_serve_addr(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("for inference on "))
        .and_then(|l| l.rsplit("for inference on ").next())
        .expect("a serving worker logs its inference address")
        .trim()
        .to_string()
}

/// A whole answer: 200 and, streamed, every event up to `[DONE]` with no error event.
fn answer_ok(code: u16, body: &str, stream: bool) -> bool {
    if code != 200 {
        return false;
    }
    if stream {
        return body.contains("data: [DONE]")
            && !body.contains("\"error\"")
            && body.contains("\"finish_reason\":\"");
    }
    serde_json::from_str::<Value>(body).is_ok_and(|v| v["choices"][0]["finish_reason"].is_string())
}

/// The gateway's metrics (empty when it does not answer).
fn metrics(port: u16) -> String {
    common::http_get(port, "/metrics").map_or(String::new(), |(_, m)| m)
}

/// This gateway's requests in flight on `worker`, if it knows the worker.
fn in_flight_on(metrics: &str, worker: &str) -> Option<f64> {
    let prefix = format!("tributary_gateway_worker_in_flight{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_until(secs: u64, what: &str, c: &Cluster, ok: &dyn Fn() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what} within {secs} s\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn gateway_args(port: u16) -> Vec<String> {
    [
        "gateway",
        "--http",
        &format!("127.0.0.1:{port}"),
        "--shutdown-delay-secs",
        SHUTDOWN_DELAY_SECS,
    ]
    .map(String::from)
    .to_vec()
}

fn worker_args(c: &Cluster, name: &str) -> Vec<String> {
    let base = common::fixtures().join("tiny-llama");
    let cache = c.dir.path().join(format!("{name}-cache"));
    [
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--serve-listen",
        "127.0.0.1:0",
        "--base-model",
        base.to_str().unwrap(),
        "--max-in-flight",
        "64",
        "--drain-timeout-secs",
        DRAIN_TIMEOUT_SECS,
        "--micro-batch-delay-ms",
        "5",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_gateways_workers_and_coordinators_fails_no_request() {
    let t0 = Instant::now();
    let want = embedded_digest(spec(JOB_STEPS)).await;
    let mut c = Cluster::with_etcd_tls();
    let certs = c.dir.path().join("certs");
    for n in ["gw1", "gw2"] {
        run_ok(&[
            "certs",
            "issue",
            "--name",
            n,
            "--dir",
            certs.to_str().unwrap(),
        ]);
    }
    let key = {
        let out = std::process::Command::new(bin())
            .args(["keys", "create", "--store", &c.store, "--owner", "load"])
            .args(["--scope", "admin"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    for w in ["w1", "w2"] {
        let args = worker_args(&c, w);
        c.spawn(w, &strs(&args));
    }
    c.coordinator("coord-a");
    wait_log(&c, "coord-a", "leader with fencing token", 30).await;
    c.coordinator("coord-b");
    let ports = [common::free_tcp_port(), common::free_tcp_port()];
    for (name, port) in [("gw1", ports[0]), ("gw2", ports[1])] {
        c.spawn(name, &strs(&gateway_args(port)));
    }
    for port in ports {
        common::wait_ready(port, "/readyz", 60, &|| c.dump_logs());
    }
    for port in ports {
        wait_until(30, "both workers known to every gateway", &c, &|| {
            let m = metrics(port);
            in_flight_on(&m, "w1").is_some() && in_flight_on(&m, "w2").is_some()
        });
    }
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());

    let load = Arc::new(Load {
        ports,
        key: key.clone(),
        ready: [AtomicBool::new(false), AtomicBool::new(false)],
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        next: AtomicUsize::new(0),
        outcomes: Mutex::new(Vec::new()),
    });
    let mut threads = Vec::new();
    let l = load.clone();
    threads.push(std::thread::spawn(move || l.balance()));
    for id in 0..CLIENTS {
        let l = load.clone();
        threads.push(std::thread::spawn(move || l.client(id)));
    }
    let enter = |phase: usize| {
        if phase > 0 {
            // Serving went on through the phase before (and the restart is over).
            let before = phase - 1;
            let t = Instant::now();
            while load.served_in(before) < MIN_SERVED {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "serving stalled after {}: {} served",
                    PHASES[before],
                    load.served_in(before)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        load.phase.store(phase, Ordering::SeqCst);
        eprintln!("{:6.1} s  {}", t0.elapsed().as_secs_f64(), PHASES[phase]);
    };
    enter(0);

    // Gateways, one at a time: SIGTERM, not ready at once, out of rotation, exits 0 after
    // serving out its delay and the answer in flight, started again, ready, in rotation.
    for (i, name) in ["gw1", "gw2"].into_iter().enumerate() {
        enter(1 + i);
        let port = ports[i];
        // A long answer in flight on this gateway when SIGTERM arrives must end whole.
        let k = key.clone();
        let (first_event, started) = std::sync::mpsc::channel();
        let long = std::thread::spawn(move || long_stream(port, &k, first_event));
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the long answer's first event");
        let termed = Instant::now();
        c.signal(name, "-TERM");
        // The gateway says so itself at once (its listener is still open).
        wait_until(2, "/readyz 503 shutting down", &c, &|| {
            common::http_get(port, "/readyz")
                .is_ok_and(|(code, why)| code == 503 && why.contains("shutting down"))
        });
        wait_until(2, "the balancer took the gateway out", &c, &|| {
            !load.ready[i].load(Ordering::SeqCst)
        });
        let status = c.wait_exit(name, 30);
        assert!(
            status.success(),
            "{name} exited {status}\n{}",
            c.dump_logs()
        );
        let ((code, body), ended) = long.join().unwrap();
        assert!(
            answer_ok(code, &body, true),
            "the answer in flight on {name} at SIGTERM: {code} {body}"
        );
        assert!(ended > termed, "the long answer ended before SIGTERM");
        assert_eq!(
            body.matches("\"finish_reason\":\"").count(),
            16,
            "every choice of the long answer finished: {body}"
        );
        eprintln!(
            "  the answer in flight on {name} ended {:.2} s after SIGTERM",
            (ended - termed).as_secs_f64()
        );
        c.restart(name, &strs(&gateway_args(port)));
        wait_until(60, "the gateway back in rotation", &c, &|| {
            load.ready[i].load(Ordering::SeqCst)
        });
    }

    // Workers, one at a time, each while answers run on it: it leaves membership, the
    // gateways route around it, its running answers finish, it exits 0 and comes back.
    for (i, name) in ["w1", "w2"].into_iter().enumerate() {
        enter(3 + i);
        wait_until(10, "answers running on the worker", &c, &|| {
            ports
                .iter()
                .filter_map(|p| in_flight_on(&metrics(*p), name))
                .sum::<f64>()
                >= 1.0
        });
        c.signal(name, "-TERM");
        let status = c.wait_exit(name, 40);
        assert!(
            status.success(),
            "{name} exited {status}\n{}",
            c.dump_logs()
        );
        assert!(
            c.log(name).contains(&format!("{name}: drained in")),
            "{}",
            c.dump_logs()
        );
        let runs = c.log_count(name, &format!("{name}: serving on"));
        let args = worker_args(&c, name);
        c.restart(name, &strs(&args));
        wait_until(60, "the worker registered again", &c, &|| {
            c.log_count(name, &format!("{name}: serving on")) > runs
        });
        // Ready: every gateway routes to the new process (what waiting for a restarted pod's
        // readiness gives a Kubernetes rollout, whose probes are seconds apart; here the
        // next restart follows at once).
        let serve_addr = new_serve_addr(&c.log(name));
        for gw in ["gw1", "gw2"] {
            wait_until(10, "every gateway routing to the new worker", &c, &|| {
                c.log(gw).contains(&serve_addr)
            });
        }
    }

    // Coordinators, one at a time, while a job trains on the workers.
    enter(5);
    let etcd = c.etcd_client().await;
    let id = submit_job(&etcd, spec(JOB_STEPS)).await.unwrap();
    wait_for(&c, &etcd, &id, "the job running", 60, |r| {
        r.progress.step >= 10
    })
    .await;
    for (i, (name, other)) in [("coord-a", "coord-b"), ("coord-b", "coord-a")]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            enter(5 + i);
        }
        let r = record(&etcd, &id).await.unwrap();
        assert!(
            !r.state.is_terminal(),
            "the job ended before {name}'s restart: raise JOB_STEPS: {r:?}"
        );
        let leads = c.log_count(other, "leader with fencing token");
        let termed = Instant::now();
        c.signal(name, "-TERM");
        let status = c.wait_exit(name, 30);
        assert!(
            status.success(),
            "{name} exited {status}\n{}",
            c.dump_logs()
        );
        wait_until(15, "the standby leads", &c, &|| {
            c.log_count(other, "leader with fencing token") > leads
        });
        eprintln!(
            "  {other} leads {:.2} s after {name}'s SIGTERM",
            termed.elapsed().as_secs_f64()
        );
        c.restart(name, &["coordinator"]);
        let at = record(&etcd, &id).await.unwrap().progress.step;
        wait_for(&c, &etcd, &id, "progress under the new leader", 60, |r| {
            r.progress.step > at + 5 || r.state.is_terminal()
        })
        .await;
    }
    let r = wait_for(&c, &etcd, &id, "the job's end", 120, |r| {
        r.state.is_terminal()
    })
    .await;
    wait_until(20, "the last phase served", &c, &|| {
        load.served_in(PHASES.len() - 1) >= MIN_SERVED
    });
    load.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(
        r.adapter_digest,
        Some(want),
        "the adapter trained across two coordinator restarts != a fault-free run"
    );

    let outcomes = load.outcomes.lock().unwrap();
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| format!("[{}] gw{}: {}", PHASES[o.phase], o.gateway + 1, o.detail))
        .collect();
    for (p, name) in PHASES.iter().enumerate() {
        let by_gw: Vec<usize> = (0..2)
            .map(|g| {
                outcomes
                    .iter()
                    .filter(|o| o.phase == p && o.gateway == g && o.ok)
                    .count()
            })
            .collect();
        eprintln!(
            "{name:>20}: {} served (gw1 {}, gw2 {})",
            by_gw[0] + by_gw[1],
            by_gw[0],
            by_gw[1]
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed:\n{}\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n"),
        c.dump_logs()
    );
    eprintln!(
        "{} requests, 0 failed; {:.1} s in all",
        outcomes.len(),
        t0.elapsed().as_secs_f64()
    );
}
