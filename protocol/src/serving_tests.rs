//! The serving protocol over real QUIC with mutual TLS on loopback, against a scripted
//! engine: a streamed answer, an overload refusal, cancellation by a gateway that stops
//! reading, an unload reaching the engine, the version handshake, and bounds on what a
//! request may carry.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::certs;
use crate::endpoint::QuicServer;
use crate::ids::Digest;
use crate::inference::{
    EngineInfo, EventStream, FinishReason, InferenceService, ModelChoice, SamplingParams,
};
use crate::link::BoxFuture;
use crate::shutdown::ShutdownController;

/// Answers "hi" then finishes; refuses everything while `overloaded`; keeps the sender of
/// a request whose prompt is "hold" so a test can watch it being cancelled; records the
/// adapters it was asked to unload (and refuses to unload `Digest::of(b"pinned")`).
struct Scripted {
    overloaded: bool,
    held: Mutex<Option<mpsc::Sender<InferenceEvent>>>,
    unloaded: Mutex<Vec<Digest>>,
}

impl InferenceService for Scripted {
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, std::result::Result<EventStream, InferenceError>> {
        Box::pin(async move {
            if self.overloaded {
                return Err(InferenceError::Overloaded {
                    retry_after_ms: 250,
                });
            }
            let (tx, rx) = mpsc::channel(8);
            if request.prompt == Prompt::Text("hold".into()) {
                let _ = tx.send(InferenceEvent::Started { prompt_tokens: 1 }).await;
                if let Ok(mut h) = self.held.lock() {
                    *h = Some(tx);
                }
                return Ok(rx);
            }
            for ev in [
                InferenceEvent::Started { prompt_tokens: 3 },
                InferenceEvent::Text {
                    choice: 0,
                    text: "hi".into(),
                    logprobs: vec![],
                },
                InferenceEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Length,
                    completion_tokens: 1,
                },
            ] {
                let _ = tx.send(ev).await;
            }
            Ok(rx)
        })
    }

    fn unload(&self, adapter: Digest) -> BoxFuture<'_, std::result::Result<(), InferenceError>> {
        Box::pin(async move {
            if adapter == Digest::of(b"pinned") {
                return Err(InferenceError::Invalid {
                    field: "adapter".into(),
                    message: "pinned".into(),
                });
            }
            self.unloaded.lock().unwrap().push(adapter);
            Ok(())
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

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

fn request(prompt: &str) -> InferenceRequest {
    InferenceRequest {
        request_id: "cmpl-test".into(),
        model: ModelChoice::Adapter(Digest::of(b"a")),
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

struct Setup {
    _dir: tempfile::TempDir,
    _ctl: ShutdownController,
    addr: SocketAddr,
    gateway: NodeTls,
    engine: Arc<Scripted>,
}

fn setup(overloaded: bool) -> Setup {
    setup_speaking(
        overloaded,
        MIN_SERVING_PROTOCOL_VERSION..=SERVING_PROTOCOL_VERSION,
    )
}

/// A worker whose inference endpoint accepts only `versions` (an older build: 1001..=1001).
fn setup_speaking(overloaded: bool, versions: std::ops::RangeInclusive<u32>) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    certs::init_ca(dir.path()).unwrap();
    certs::issue(dir.path(), &node("w1")).unwrap();
    certs::issue(dir.path(), &node("gw")).unwrap();
    let worker = NodeTls::load(dir.path(), &node("w1")).unwrap();
    let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), node("w1"), &worker).unwrap();
    let addr = server.local_addr().unwrap();
    let ctl = ShutdownController::new();
    let engine = Arc::new(Scripted {
        overloaded,
        held: Mutex::new(None),
        unloaded: Mutex::new(Vec::new()),
    });
    let handler = Arc::new(InferenceHandler::new(engine.clone()));
    tokio::spawn(server.run_streams(handler, versions, ctl.subscribe()));
    Setup {
        gateway: NodeTls::load(dir.path(), &node("gw")).unwrap(),
        _dir: dir,
        _ctl: ctl,
        addr,
        engine,
    }
}

#[tokio::test]
async fn an_answer_streams_back_event_by_event() {
    let s = setup(false);
    let conn = InferenceConn::connect(s.addr, &node("w1"), &node("gw"), &s.gateway)
        .await
        .unwrap();
    assert_eq!(conn.peer().as_str(), "w1");
    let mut events = conn.submit(&request("x")).await.unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(ev) = events.next().await.unwrap() {
        got.push(ev);
    }
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(matches!(got[1], InferenceEvent::Text { ref text, .. } if text == "hi"));
    assert!(matches!(
        got[2],
        InferenceEvent::Finished {
            reason: FinishReason::Length,
            ..
        }
    ));
    // Many requests share one connection.
    for _ in 0..20 {
        let mut ev = conn.submit(&request("x")).await.unwrap().unwrap();
        while ev.next().await.unwrap().is_some() {}
    }
}

#[tokio::test]
async fn overload_is_an_explicit_refusal() {
    let s = setup(true);
    let conn = InferenceConn::connect(s.addr, &node("w1"), &node("gw"), &s.gateway)
        .await
        .unwrap();
    let refused = conn.submit(&request("x")).await.unwrap().unwrap_err();
    assert_eq!(
        refused,
        InferenceError::Overloaded {
            retry_after_ms: 250
        }
    );
}

#[tokio::test]
async fn a_gateway_that_stops_reading_cancels_the_request() {
    let s = setup(false);
    let conn = InferenceConn::connect(s.addr, &node("w1"), &node("gw"), &s.gateway)
        .await
        .unwrap();
    let mut events = conn.submit(&request("hold")).await.unwrap().unwrap();
    assert!(matches!(
        events.next().await.unwrap(),
        Some(InferenceEvent::Started { .. })
    ));
    let held = s.engine.held.lock().unwrap().clone().unwrap();
    assert!(!held.is_closed());
    drop(events);
    // The worker drops its receiver: the engine sees the request cancelled within 1 s.
    tokio::time::timeout(Duration::from_secs(1), held.closed())
        .await
        .expect("the worker did not cancel the request within 1 s");
}

#[tokio::test]
async fn an_unload_reaches_the_engine_and_its_refusal_comes_back() {
    let s = setup(false);
    let conn = InferenceConn::connect(s.addr, &node("w1"), &node("gw"), &s.gateway)
        .await
        .unwrap();
    let a = Digest::of(b"a");
    conn.unload(a).await.unwrap().unwrap();
    assert_eq!(*s.engine.unloaded.lock().unwrap(), vec![a]);
    let refused = conn
        .unload(Digest::of(b"pinned"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(refused, InferenceError::Invalid { .. }),
        "{refused:?}"
    );
    // The connection still serves requests after both.
    let mut ev = conn.submit(&request("x")).await.unwrap().unwrap();
    while ev.next().await.unwrap().is_some() {}
}

#[tokio::test]
async fn a_peer_speaking_another_version_is_refused_at_the_handshake() {
    let s = setup(false);
    let err = QuicClient::connect_with_version(
        s.addr,
        "w1",
        &node("gw"),
        s.gateway.client_config().unwrap(),
        crate::PROTOCOL_VERSION,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::VersionMismatch { theirs, .. } if theirs == SERVING_PROTOCOL_VERSION),
        "{err}"
    );
}

#[test]
fn requests_round_trip_and_oversized_ones_are_refused() {
    let mut r = request("x");
    r.params.stop = vec!["\n".into(); 3];
    let bytes = r.encode().unwrap();
    assert_eq!(InferenceRequest::decode(&bytes).unwrap(), r);
    r.params.stop = vec![String::new(); MAX_WIRE_ITEMS + 1];
    let bytes = r.encode().unwrap();
    let err = InferenceRequest::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("stop strings exceeds the maximum"), "{err}");
    // The same check applies to a request inside a call.
    let call = ServeCall::Infer(r);
    let err = ServeCall::decode(&call.encode().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("stop strings exceeds the maximum"), "{err}");
    let unload = ServeCall::Unload(Digest::of(b"a"));
    assert_eq!(
        ServeCall::decode(&unload.encode().unwrap()).unwrap(),
        unload
    );
    let reply = InferReply::Refused(InferenceError::ContextOverflow {
        prompt_tokens: 9,
        max_tokens: 9,
        context: 16,
    });
    assert_eq!(InferReply::decode(&reply.encode().unwrap()).unwrap(), reply);
}

/// Version skew in a rolling upgrade: a new gateway and an old worker (1001) agree on 1001
/// and requests go through in 1001's framing (unload is refused by the gateway, naming the
/// version); an old gateway (1001 only) and a new worker agree on 1001 too; a gateway too
/// new for any version the worker speaks is refused.
#[tokio::test]
async fn a_new_and_an_old_peer_agree_on_the_older_serving_version() {
    let old_worker = setup_speaking(false, 1001..=1001);
    let conn = InferenceConn::connect(
        old_worker.addr,
        &node("w1"),
        &node("gw"),
        &old_worker.gateway,
    )
    .await
    .unwrap();
    assert_eq!(conn.version(), 1001);
    let mut ev = conn.submit(&request("x")).await.unwrap().unwrap();
    let mut n = 0;
    while ev.next().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 3);
    let err = conn.unload(Digest::of(b"a")).await.unwrap_err();
    assert!(err.to_string().contains("1001"), "{err}");
    assert!(old_worker.engine.unloaded.lock().unwrap().is_empty());

    let new_worker = setup(false);
    let old_gateway = InferenceConn::connect_with_versions(
        new_worker.addr,
        &node("w1"),
        &node("gw"),
        &new_worker.gateway,
        1001..=1001,
    )
    .await
    .unwrap();
    assert_eq!(old_gateway.version(), 1001);
    let mut ev = old_gateway.submit(&request("x")).await.unwrap().unwrap();
    while ev.next().await.unwrap().is_some() {}
    let current = InferenceConn::connect(
        new_worker.addr,
        &node("w1"),
        &node("gw"),
        &new_worker.gateway,
    )
    .await
    .unwrap();
    assert_eq!(current.version(), SERVING_PROTOCOL_VERSION);

    let err = InferenceConn::connect_with_versions(
        old_worker.addr,
        &node("w1"),
        &node("gw"),
        &old_worker.gateway,
        1002..=1003,
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, ProtocolError::VersionMismatch { theirs: 1001, .. }),
        "{err}"
    );
}
