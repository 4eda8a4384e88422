//! Serving load for the rolling-restart tests (`tests/rolling_restart.rs` on processes,
//! `tests/container_rolling.rs` on containers): clients sending OpenAI chat requests back to
//! back through a load balancer that does what a Kubernetes Service does (it polls each
//! gateway's `/readyz` and sends new requests only to the ready ones), every outcome counted
//! per phase; and the gateway restart both tests run (a long answer in flight at SIGTERM,
//! the gateway out of rotation at once, back in after its restart).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common;

/// The served base model (the `tiny-llama` fixture).
pub const MODEL: &str = "tiny-llama";
/// How often the balancer polls each gateway's `/readyz`.
pub const LB_POLL: Duration = Duration::from_millis(200);
/// Load clients sending requests back to back.
pub const CLIENTS: usize = 4;
/// Requests each phase must serve before the next starts (so that serving is shown to go on
/// after each restart, and every phase's count means something).
pub const MIN_SERVED: usize = 20;
/// The phases of a rolling restart, in order: each role restarted one node at a time (the
/// leading coordinator first, then the other, which leads by then).
pub const PHASES: [&str; 7] = [
    "steady",
    "gateway gw1",
    "gateway gw2",
    "worker w1",
    "worker w2",
    "coordinator (leader)",
    "coordinator (other)",
];

/// One request of the load, as the client saw it.
pub struct Outcome {
    pub phase: usize,
    pub gateway: usize,
    pub ok: bool,
    pub detail: String,
}

/// The load balancer and the load: what a Kubernetes Service and its clients do.
pub struct Load {
    /// Each gateway's HTTP address (a restarted container may come back at another one).
    targets: RwLock<Vec<SocketAddr>>,
    key: String,
    ready: Vec<AtomicBool>,
    phase: AtomicUsize,
    stop: AtomicBool,
    next: AtomicUsize,
    outcomes: Mutex<Vec<Outcome>>,
}

impl Load {
    /// Load on the gateways at `targets`, with API key `key`; nothing runs until
    /// [`start`](Self::start).
    pub fn new(targets: Vec<SocketAddr>, key: &str) -> Arc<Self> {
        Arc::new(Self {
            ready: targets.iter().map(|_| AtomicBool::new(false)).collect(),
            targets: RwLock::new(targets),
            key: key.to_string(),
            phase: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            outcomes: Mutex::new(Vec::new()),
        })
    }

    /// Starts one readiness poller per gateway and `clients` clients (client 0 sends
    /// non-streaming requests, the others stream).
    pub fn start(self: &Arc<Self>, clients: usize) -> Vec<JoinHandle<()>> {
        let mut threads = Vec::new();
        for i in 0..self.ready.len() {
            let l = self.clone();
            threads.push(std::thread::spawn(move || l.probe(i)));
        }
        for id in 0..clients {
            let l = self.clone();
            threads.push(std::thread::spawn(move || l.client(id)));
        }
        threads
    }

    /// Stops the load and waits for its threads.
    pub fn finish(&self, threads: Vec<JoinHandle<()>>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().unwrap();
        }
    }

    pub fn target(&self, i: usize) -> SocketAddr {
        self.targets.read().unwrap()[i]
    }

    /// Gateway `i` now listens at `addr`.
    pub fn set_target(&self, i: usize, addr: SocketAddr) {
        self.targets.write().unwrap()[i] = addr;
    }

    /// Whether gateway `i` is in rotation.
    pub fn in_rotation(&self, i: usize) -> bool {
        self.ready[i].load(Ordering::SeqCst)
    }

    /// Polls gateway `i`'s `/readyz`; it is in rotation while it answers 200.
    fn probe(&self, i: usize) {
        while !self.stop.load(Ordering::Relaxed) {
            let up = matches!(
                common::http_request_to(self.target(i), "GET", "/readyz", "text/plain", "", None),
                Ok((200, _))
            );
            self.ready[i].store(up, Ordering::SeqCst);
            std::thread::sleep(LB_POLL);
        }
    }

    /// A ready gateway, round robin; `None` while none is.
    fn pick(&self) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let k = self.ready.len();
        (0..k).map(|j| (n + j) % k).find(|&i| self.in_rotation(i))
    }

    /// One client: requests back to back until stopped.
    fn client(&self, id: usize) {
        let stream = id != 0;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(gw) = self.pick() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let phase = self.phase.load(Ordering::SeqCst);
            let (code, body) = chat(self.target(gw), &self.key, stream, 24);
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

    pub fn served_in(&self, phase: usize) -> usize {
        let o = self.outcomes.lock().unwrap();
        o.iter().filter(|o| o.phase == phase && o.ok).count()
    }

    /// Enters `phase` once the phase before served `min_served` (serving went on through it,
    /// and its restart is over), within `secs`.
    pub fn enter(&self, phase: usize, names: &[&str], min_served: usize, secs: u64, t0: Instant) {
        if phase > 0 {
            let before = phase - 1;
            let t = Instant::now();
            while self.served_in(before) < min_served {
                assert!(
                    t.elapsed() < Duration::from_secs(secs),
                    "serving stalled after {}: {} served",
                    names[before],
                    self.served_in(before)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.phase.store(phase, Ordering::SeqCst);
        eprintln!("{:6.1} s  {}", t0.elapsed().as_secs_f64(), names[phase]);
    }

    /// Prints what each phase served on each gateway and returns the failed requests.
    pub fn report(&self, names: &[&str]) -> (usize, Vec<String>) {
        let outcomes = self.outcomes.lock().unwrap();
        let failed = outcomes
            .iter()
            .filter(|o| !o.ok)
            .map(|o| format!("[{}] gw{}: {}", names[o.phase], o.gateway + 1, o.detail))
            .collect();
        for (p, name) in names.iter().enumerate() {
            let by_gw: Vec<String> = (0..self.ready.len())
                .map(|g| {
                    let n = outcomes
                        .iter()
                        .filter(|o| o.phase == p && o.gateway == g && o.ok)
                        .count();
                    format!("gw{} {n}", g + 1)
                })
                .collect();
            let all = outcomes.iter().filter(|o| o.phase == p && o.ok).count();
            eprintln!("{name:>20}: {all} served ({})", by_gw.join(", "));
        }
        (outcomes.len(), failed)
    }
}

/// How a test stops and starts one gateway: a process or a container.
pub struct GatewayControl<'a> {
    /// Sends SIGTERM and returns at once.
    pub terminate: &'a mut dyn FnMut(),
    /// Waits for the gateway to exit and asserts it exited 0.
    pub exited: &'a mut dyn FnMut(),
    /// Starts it again; returns its HTTP address.
    pub start: &'a mut dyn FnMut() -> SocketAddr,
    /// The cluster's logs, for a failure.
    pub logs: &'a dyn Fn() -> String,
}

/// Restarts gateway `i` (`name`) under the load: a long answer is in flight on it at
/// SIGTERM; its `/readyz` answers 503 "shutting down" at once and the balancer takes it
/// out; it exits 0 after serving out its shutdown delay and the answer, which ends whole;
/// then it starts again and the balancer puts it back in rotation.
pub fn restart_gateway(load: &Load, i: usize, name: &str, key: &str, ctl: GatewayControl<'_>) {
    let addr = load.target(i);
    let k = key.to_string();
    let (first_event, started) = std::sync::mpsc::channel();
    let long = std::thread::spawn(move || long_stream(addr, &k, first_event));
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the long answer's first event");
    let termed = Instant::now();
    (ctl.terminate)();
    // The gateway says so itself at once (its listener is still open). The bound allows for
    // `docker stop` delivering the signal late on loaded cores; it is not the gateway's speed.
    wait_until(5, "/readyz 503 shutting down", ctl.logs, &|| {
        common::http_request_to(addr, "GET", "/readyz", "text/plain", "", None)
            .is_ok_and(|(code, why)| code == 503 && why.contains("shutting down"))
    });
    wait_until(5, "the balancer took the gateway out", ctl.logs, &|| {
        !load.in_rotation(i)
    });
    (ctl.exited)();
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
    let addr = (ctl.start)();
    load.set_target(i, addr);
    wait_until(60, "the gateway back in rotation", ctl.logs, &|| {
        load.in_rotation(i)
    });
}

/// A chat request for the base model: (status, body).
pub fn chat(addr: SocketAddr, key: &str, stream: bool, max_tokens: u32) -> (u16, String) {
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": 11,
        "stream": stream,
    });
    common::http_request_to(
        addr,
        "POST",
        "/v1/chat/completions",
        "application/json",
        &body.to_string(),
        Some(key),
    )
    .unwrap_or_else(|e| (0, format!("connection: {e}")))
}

/// A long streamed answer (16 choices of 200 tokens with log-probabilities: about a second
/// on loopback), read as it comes: `first_event` is told when its first event has arrived,
/// so the answer is known to be in flight. Returns (status, body) and when the body ended.
pub fn long_stream(
    addr: SocketAddr,
    key: &str,
    first_event: Sender<()>,
) -> ((u16, String), Instant) {
    use std::io::{Read, Write};
    let body = json!({
        "model": MODEL,
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
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
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

/// A whole answer: 200 and, streamed, every event up to `[DONE]` with no error event.
pub fn answer_ok(code: u16, body: &str, stream: bool) -> bool {
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

/// A gateway's metrics (empty when it does not answer).
pub fn metrics(addr: SocketAddr) -> String {
    common::http_request_to(addr, "GET", "/metrics", "text/plain", "", None)
        .map_or(String::new(), |(_, m)| m)
}

/// A gateway's requests in flight on `worker`, if it knows the worker.
pub fn in_flight_on(metrics: &str, worker: &str) -> Option<f64> {
    let prefix = format!("tributary_gateway_worker_in_flight{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `ok`, at most `secs` (else fails with `logs`); returns how long it took.
pub fn wait_until(
    secs: u64,
    what: &str,
    logs: &dyn Fn() -> String,
    ok: &dyn Fn() -> bool,
) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what} within {secs} s\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}
