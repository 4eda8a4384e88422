//! The gateway's added latency: the same requests to an engine that answers at once
//! (`InstantEngine`, test-only), sent through the whole HTTP gateway on loopback (auth,
//! admission, validation, the catalog, JSON) and straight to the engine; prints the p50 and
//! p99 of the difference (the issue's figure; run with `--nocapture`), and checks it stays
//! far below an engine step.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tributary_gateway::{Auth, Parts, ServeConfig};
use tributary_ledger::keys::{KeyStore, Scope};
use tributary_ledger::store::Store;
use tributary_protocol::inference::FinishReason;
use tributary_protocol::{
    BoxFuture, ChatMessage, Digest, EngineInfo, EventStream, InferenceError, InferenceEvent,
    InferenceRequest, InferenceService, ModelChoice, Prompt, SamplingParams,
};

/// Answers every request at once: started, one piece of text, finished.
struct InstantEngine;

impl InferenceService for InstantEngine {
    fn submit(&self, _r: InferenceRequest) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        Box::pin(async {
            let (tx, rx) = mpsc::channel(4);
            let _ = tx.try_send(InferenceEvent::Started { prompt_tokens: 4 });
            let _ = tx.try_send(InferenceEvent::Text {
                choice: 0,
                text: "ok".into(),
                logprobs: Vec::new(),
            });
            let _ = tx.try_send(InferenceEvent::Finished {
                choice: 0,
                reason: FinishReason::Stop,
                completion_tokens: 1,
            });
            Ok(rx)
        })
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            base_name: "instant".into(),
            base_digest: Digest::of(b"instant"),
            context_window: 4096,
            max_lora_rank: 8,
        }
    }
}

fn request() -> InferenceRequest {
    InferenceRequest {
        request_id: "chatcmpl-x".into(),
        model: ModelChoice::Base,
        prompt: Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }]),
        params: SamplingParams {
            max_tokens: 8,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: Vec::new(),
            n: 1,
            logprobs: None,
        },
        identity: None,
    }
}

/// One keep-alive HTTP/1.1 POST; returns the status.
fn post(conn: &mut BufReader<TcpStream>, key: &str, body: &str) -> u16 {
    write!(
        conn.get_mut(),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).unwrap();
    status.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

#[test]
fn the_gateway_adds_well_under_a_millisecond_at_the_median() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(&format!("memory://latency-{}", std::process::id())).unwrap();
    let keys = KeyStore::new(store.clone());
    let (key, _) = rt
        .block_on(keys.create("bench", &[Scope::Inference], 0))
        .unwrap();
    let engine: Arc<dyn InferenceService> = Arc::new(InstantEngine);
    let app = tributary_gateway::app(Parts {
        reward_log: None,
        auth: Auth::keys(keys),
        store,
        engine: Some(engine.clone()),
        jobs: None,
        ready: Arc::new(|| Box::pin(async { Ok(()) })),
        config: ServeConfig::default(),
    });
    let (addr, _task) = rt
        .block_on(tributary_gateway::serve(
            "127.0.0.1:0".parse().unwrap(),
            app,
            std::future::pending(),
        ))
        .unwrap();
    let body = r#"{"model":"instant","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0}"#;
    let mut conn = BufReader::new(TcpStream::connect(addr).unwrap());
    conn.get_ref().set_nodelay(true).unwrap();
    conn.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    const N: usize = 2000;
    for _ in 0..200 {
        assert_eq!(post(&mut conn, &key, body), 200);
    }
    let mut through = Vec::with_capacity(N);
    let mut direct = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        assert_eq!(post(&mut conn, &key, body), 200);
        through.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        rt.block_on(async {
            let mut rx = engine.submit(request()).await.unwrap();
            while rx.recv().await.is_some() {}
        });
        direct.push(t.elapsed().as_secs_f64());
    }
    let (t50, t99) = (quantile(&mut through, 0.5), quantile(&mut through, 0.99));
    let (d50, d99) = (quantile(&mut direct, 0.5), quantile(&mut direct, 0.99));
    println!(
        "gateway round trip p50 {:.3} ms p99 {:.3} ms; engine direct p50 {:.3} ms p99 {:.3} ms; added p50 {:.3} ms p99 {:.3} ms ({N} requests, loadavg {})",
        t50 * 1e3,
        t99 * 1e3,
        d50 * 1e3,
        d99 * 1e3,
        (t50 - d50) * 1e3,
        (t99 - d99) * 1e3,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    // A loose bound (CI machines are shared): the median stays far below an engine step.
    assert!(t50 - d50 < 0.005, "added p50 {:.3} ms", (t50 - d50) * 1e3);
}
