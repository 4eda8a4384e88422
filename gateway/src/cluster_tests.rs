//! The cluster engine against two scripted workers served over real QUIC with mutual TLS on
//! loopback: affinity, a worker lost before the answer started (retried elsewhere) and
//! after (a failure event), overload moving a request on, and overload everywhere.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tributary_coordinator::StaticMembership;
use tributary_protocol::inference::FinishReason;
use tributary_protocol::serving::serve_inference;
use tributary_protocol::{
    Prompt, QuicServer, SamplingParams, ShutdownController, WorkerInfo, certs,
};

use super::*;

/// Answers "<name>" (its worker's name) in one text event; refuses all while `overloaded`;
/// holds a request whose prompt is "hold" after `Started` (or after one text for
/// "hold-late") so a test can kill the worker at that point.
struct Scripted {
    name: String,
    overloaded: bool,
    seen: Mutex<Vec<ModelChoice>>,
    held: Mutex<Vec<mpsc::Sender<InferenceEvent>>>,
}

impl InferenceService for Scripted {
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        Box::pin(async move {
            if self.overloaded {
                return Err(InferenceError::Overloaded { retry_after_ms: 70 });
            }
            if let Ok(mut s) = self.seen.lock() {
                s.push(request.model);
            }
            let (tx, rx) = mpsc::channel(8);
            let _ = tx.send(InferenceEvent::Started { prompt_tokens: 2 }).await;
            let text = |t: &str| InferenceEvent::Text {
                choice: 0,
                text: t.into(),
                logprobs: vec![],
            };
            match &request.prompt {
                Prompt::Text(p) if p.starts_with("hold") => {
                    if p == "hold-late" {
                        let _ = tx.send(text("partial")).await;
                    }
                    if let Ok(mut h) = self.held.lock() {
                        h.push(tx);
                    }
                }
                _ => {
                    let _ = tx.send(text(&self.name)).await;
                    let _ = tx
                        .send(InferenceEvent::Finished {
                            choice: 0,
                            reason: FinishReason::Stop,
                            completion_tokens: 1,
                        })
                        .await;
                }
            }
            Ok(rx)
        })
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            base_name: "tiny".into(),
            base_digest: Digest::of(b"tiny"),
            context_window: 64,
            max_lora_rank: 8,
        }
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    cluster: ClusterInference,
    engines: Vec<Arc<Scripted>>,
    servers: Vec<ShutdownController>,
    _follow: ShutdownController,
}

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

fn serving(addr: String, resident: Vec<Digest>) -> ServingInfo {
    ServingInfo {
        addr,
        base_name: "tiny".into(),
        base_digest: Digest::of(b"tiny"),
        context_window: 64,
        max_lora_rank: 8,
        resident,
        in_flight: 0,
        queue_depth: 0,
        max_in_flight: 16,
        kv_blocks_used: 0,
        kv_blocks: 100,
    }
}

async fn rig(overloaded: [bool; 2]) -> Rig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    certs::init_ca(dir.path()).unwrap();
    let mut infos = Vec::new();
    let (mut engines, mut servers) = (Vec::new(), Vec::new());
    for (i, over) in overloaded.into_iter().enumerate() {
        let name = format!("w{i}");
        certs::issue(dir.path(), &node(&name)).unwrap();
        let tls = NodeTls::load(dir.path(), &node(&name)).unwrap();
        let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), node(&name), &tls).unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let engine = Arc::new(Scripted {
            name: name.clone(),
            overloaded: over,
            seen: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
        });
        let ctl = ShutdownController::new();
        tokio::spawn(serve_inference(server, engine.clone(), ctl.subscribe()));
        let mut info = WorkerInfo::in_process(node(&name));
        info.serving = Some(serving(addr, vec![]));
        infos.push(info);
        engines.push(engine);
        servers.push(ctl);
    }
    certs::issue(dir.path(), &node("gw")).unwrap();
    let follow = ShutdownController::new();
    let cluster = ClusterInference::start(
        node("gw"),
        NodeTls::load(dir.path(), &node("gw")).unwrap(),
        Arc::new(StaticMembership::new(infos)),
        ClusterConfig::default(),
        follow.subscribe(),
    );
    for _ in 0..100 {
        if cluster.workers() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.ready().is_ok());
    Rig {
        _dir: dir,
        cluster,
        engines,
        servers,
        _follow: follow,
    }
}

fn request(model: ModelChoice, prompt: &str) -> InferenceRequest {
    InferenceRequest {
        request_id: "cmpl-t".into(),
        model,
        prompt: Prompt::Text(prompt.into()),
        params: SamplingParams {
            max_tokens: 4,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            stop: vec![],
            n: 1,
            logprobs: None,
        },
        identity: None,
    }
}

/// The whole answer's text, or the failure.
async fn answer(c: &ClusterInference, r: InferenceRequest) -> Result<String, InferenceError> {
    let mut ev = c.submit(r).await?;
    let mut text = String::new();
    while let Some(e) = ev.recv().await {
        match e {
            InferenceEvent::Text { text: t, .. } => text.push_str(&t),
            InferenceEvent::Failed(e) => return Err(e),
            _ => {}
        }
    }
    Ok(text)
}

fn adapter(i: u32) -> ModelChoice {
    ModelChoice::Adapter(Digest::of(&i.to_le_bytes()))
}

#[tokio::test]
async fn each_adapter_sticks_to_one_worker_and_both_workers_serve() {
    let r = rig([false, false]).await;
    let mut homes = std::collections::BTreeSet::new();
    for a in 0..8 {
        let first = answer(&r.cluster, request(adapter(a), "x")).await.unwrap();
        for _ in 0..4 {
            assert_eq!(
                answer(&r.cluster, request(adapter(a), "x")).await.unwrap(),
                first
            );
        }
        homes.insert(first);
    }
    assert_eq!(homes.len(), 2, "8 adapters all on one worker: {homes:?}");
}

#[tokio::test]
async fn a_worker_lost_before_streaming_is_retried_and_after_is_a_failure() {
    let mut r = rig([false, false]).await;
    // Find an adapter whose home is w0, then hold a request there and kill w0's endpoint.
    let mut home0 = None;
    for i in 0..64 {
        let m = adapter(i);
        if answer(&r.cluster, request(m, "x")).await.unwrap() == "w0" {
            home0 = Some(m);
            break;
        }
    }
    let m = home0.expect("some adapter lives on w0");
    let c = r.cluster.clone();
    let early = tokio::spawn(async move { answer(&c, request(m, "hold")).await });
    let c = r.cluster.clone();
    let late = tokio::spawn(async move { answer(&c, request(m, "hold-late")).await });
    for _ in 0..100 {
        if r.engines[0].held.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.engines[0].held.lock().unwrap().len(), 2);
    // w0 goes away (its endpoint closes every connection).
    r.servers.remove(0).shutdown().await;
    // Not yet streaming: moved to w1, which holds it too (prompt "hold"): release it there.
    for _ in 0..200 {
        if !r.engines[1].held.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved = r.engines[1]
        .held
        .lock()
        .unwrap()
        .pop()
        .expect("retried on w1");
    moved
        .send(InferenceEvent::Text {
            choice: 0,
            text: "from w1".into(),
            logprobs: vec![],
        })
        .await
        .unwrap();
    drop(moved);
    assert_eq!(early.await.unwrap().unwrap(), "from w1");
    // Already streaming: a failure naming the lost worker.
    let err = late.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, InferenceError::Unavailable(m) if m.contains("w0")),
        "{err:?}"
    );
}

#[tokio::test]
async fn overload_moves_a_request_on_and_everywhere_is_a_429() {
    let r = rig([true, false]).await;
    for a in 0..6 {
        assert_eq!(
            answer(&r.cluster, request(adapter(a), "x")).await.unwrap(),
            "w1"
        );
    }
    let all = rig([true, true]).await;
    let err = answer(&all.cluster, request(adapter(0), "x"))
        .await
        .unwrap_err();
    assert_eq!(err, InferenceError::Overloaded { retry_after_ms: 70 });
}
