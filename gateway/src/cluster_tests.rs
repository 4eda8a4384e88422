//! The cluster engine against two scripted workers served over real QUIC with mutual TLS on
//! loopback: affinity, a worker lost before the answer started (retried elsewhere) and
//! after (a failure event for a streamed answer, the answer generated again elsewhere for a
//! whole one), overload moving a request on, overload everywhere, and a deleted adapter's
//! unload reaching every worker (and again one that still lists it); a worker restarted at
//! a new address not held down by its old process.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tributary_coordinator::StaticMembership;
use tributary_protocol::inference::FinishReason;
use tributary_protocol::serving::{
    InferenceHandler, MIN_SERVING_PROTOCOL_VERSION, SERVING_PROTOCOL_VERSION,
};
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
    unloaded: Mutex<Vec<Digest>>,
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

    fn unload(&self, adapter: Digest) -> BoxFuture<'_, Result<(), InferenceError>> {
        self.unloaded.lock().unwrap().push(adapter);
        Box::pin(async { Ok(()) })
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
    rig_with(overloaded, ClusterConfig::default()).await
}

async fn rig_with(overloaded: [bool; 2], config: ClusterConfig) -> Rig {
    let current = MIN_SERVING_PROTOCOL_VERSION..=SERVING_PROTOCOL_VERSION;
    rig_versions(overloaded, config, [current.clone(), current]).await
}

/// w0 is an older build that speaks only 1001 (no unload).
async fn rig_old_w0(config: ClusterConfig) -> Rig {
    rig_versions(
        [false, false],
        config,
        [
            1001..=1001,
            MIN_SERVING_PROTOCOL_VERSION..=SERVING_PROTOCOL_VERSION,
        ],
    )
    .await
}

async fn rig_versions(
    overloaded: [bool; 2],
    config: ClusterConfig,
    versions: [std::ops::RangeInclusive<u32>; 2],
) -> Rig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    certs::init_ca(dir.path()).unwrap();
    let mut infos = Vec::new();
    let (mut engines, mut servers) = (Vec::new(), Vec::new());
    for (i, (over, speaks)) in overloaded.into_iter().zip(versions).enumerate() {
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
            unloaded: Mutex::new(Vec::new()),
        });
        let ctl = ShutdownController::new();
        let handler = Arc::new(InferenceHandler::new(engine.clone()));
        tokio::spawn(server.run_streams(handler, speaks, ctl.subscribe()));
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
        config,
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
    collect(c.submit(r).await?).await
}

async fn collect(mut ev: EventStream) -> Result<String, InferenceError> {
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

/// An adapter whose requests land on w0.
async fn homed_on_w0(c: &ClusterInference) -> ModelChoice {
    for i in 0..64 {
        let m = adapter(i);
        if answer(c, request(m, "x")).await.unwrap() == "w0" {
            return m;
        }
    }
    panic!("no adapter lives on w0");
}

/// Waits until `engine` holds `n` requests.
async fn held(engine: &Scripted, n: usize) {
    for _ in 0..300 {
        if engine.held.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the worker never held {n} requests");
}

#[tokio::test]
async fn a_whole_answer_lost_in_the_middle_is_generated_again_elsewhere() {
    let mut r = rig([false, false]).await;
    let m = homed_on_w0(&r.cluster).await;
    // w0 sends "partial" and holds the rest; then w0 goes away.
    let whole = r
        .cluster
        .submit_whole(request(m, "hold-late"))
        .await
        .unwrap();
    let got = tokio::spawn(collect(whole));
    held(&r.engines[0], 1).await;
    r.servers.remove(0).shutdown().await;
    // Started again on w1 (which also sends "partial"): finish it there.
    held(&r.engines[1], 1).await;
    let tx = r.engines[1].held.lock().unwrap().pop().unwrap();
    for ev in [
        InferenceEvent::Text {
            choice: 0,
            text: " from w1".into(),
            logprobs: vec![],
        },
        InferenceEvent::Finished {
            choice: 0,
            reason: FinishReason::Length,
            completion_tokens: 2,
        },
    ] {
        tx.send(ev).await.unwrap();
    }
    drop(tx);
    // w0's partial text is gone: the answer is w1's alone.
    assert_eq!(got.await.unwrap().unwrap(), "partial from w1");
    assert_eq!(
        r.engines[1].seen.lock().unwrap().last(),
        Some(&m),
        "w1 did not get the request"
    );
}

#[tokio::test]
async fn a_whole_answer_with_no_worker_left_fails_naming_the_lost_one() {
    let mut r = rig([false, false]).await;
    let m = homed_on_w0(&r.cluster).await;
    // w1 is gone before w0 is lost: nowhere to start again.
    r.servers.remove(1).shutdown().await;
    r.cluster.mark_down(&node("w1"));
    let whole = r
        .cluster
        .submit_whole(request(m, "hold-late"))
        .await
        .unwrap();
    let got = tokio::spawn(collect(whole));
    held(&r.engines[0], 1).await;
    r.servers.remove(0).shutdown().await;
    let err = got.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, InferenceError::Unavailable(m) if m.contains("w0") && m.contains("could not be generated again")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unload_reaches_every_worker_and_again_one_still_listing_it() {
    let config = ClusterConfig {
        unload_resend: Duration::from_millis(50),
        ..ClusterConfig::default()
    };
    let r = rig_with([false, false], config).await;
    let (gone, kept) = (Digest::of(b"deleted"), Digest::of(b"kept"));
    r.cluster.unload(gone).await.unwrap();
    for e in &r.engines {
        assert_eq!(*e.unloaded.lock().unwrap(), vec![gone], "{}", e.name);
    }
    // Not asked again at once, even where a record still lists it.
    let addrs: Vec<String> = {
        let t = r.cluster.inner.table.read().unwrap();
        t.workers.values().map(|w| w.serving.addr.clone()).collect()
    };
    let records = |w0: Vec<Digest>| {
        BTreeMap::from([
            (node("w0"), serving(addrs[0].clone(), w0)),
            (node("w1"), serving(addrs[1].clone(), vec![kept])),
        ])
    };
    r.cluster.update(records(vec![gone, kept]));
    assert!(r.cluster.stale_unloads().is_empty());
    tokio::time::sleep(Duration::from_millis(60)).await;
    // w0 still lists it (it finished loading it after the delete): asked again, once per
    // interval; an adapter never deleted is left alone.
    r.cluster.update(records(vec![gone, kept]));
    assert_eq!(r.cluster.stale_unloads(), vec![(node("w0"), gone)]);
    assert!(r.cluster.stale_unloads().is_empty());
    // The follower sends it: w0 gets a second unload.
    tokio::time::sleep(Duration::from_millis(60)).await;
    r.cluster.update(records(vec![gone]));
    for (n, a) in r.cluster.stale_unloads() {
        assert!(r.cluster.unload_on(&n, a).await);
    }
    assert_eq!(*r.engines[0].unloaded.lock().unwrap(), vec![gone, gone]);
    assert_eq!(*r.engines[1].unloaded.lock().unwrap(), vec![gone]);
}

#[tokio::test]
async fn an_old_worker_that_cannot_unload_is_not_asked_again_and_again() {
    let config = ClusterConfig {
        unload_resend: Duration::from_millis(50),
        ..ClusterConfig::default()
    };
    let r = rig_old_w0(config).await;
    let gone = Digest::of(b"deleted");
    r.cluster.unload(gone).await.unwrap();
    // The current worker unloads it; the 1001 worker cannot be asked (its protocol has no
    // unload) and the gateway refuses requests for the adapter itself.
    assert!(r.engines[0].unloaded.lock().unwrap().is_empty());
    assert_eq!(*r.engines[1].unloaded.lock().unwrap(), vec![gone]);
    let addrs: Vec<String> = {
        let t = r.cluster.inner.table.read().unwrap();
        t.workers.values().map(|w| w.serving.addr.clone()).collect()
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Both still list it after the resend interval: only the worker that can unload is due.
    r.cluster.update(BTreeMap::from([
        (node("w0"), serving(addrs[0].clone(), vec![gone])),
        (node("w1"), serving(addrs[1].clone(), vec![gone])),
    ]));
    assert_eq!(r.cluster.stale_unloads(), vec![(node("w1"), gone)]);
}

/// A worker restarted under the same name shows up at another address: the down mark its
/// old process earned goes, and a failure reported against the old address neither marks
/// the new one down nor closes its connection (the rolling restart of
/// `tests/rolling_restart.rs` hit both: 503s, and answers cut on the new process).
#[tokio::test]
async fn a_worker_restarted_at_a_new_address_is_not_held_down_by_its_old_process() {
    let mut r = rig([false, false]).await;
    // From here on the test makes the membership updates; only w0 serves.
    r._follow.shutdown().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.servers.remove(1).shutdown().await;
    let w0 = node("w0");
    let old = r.cluster.addr_of(&w0).unwrap();
    r.cluster.mark_down(&w0);
    // The same server under another address stands for the new process.
    let port = old.rsplit(':').next().unwrap();
    let new = format!("localhost:{port}");
    r.cluster
        .update(BTreeMap::from([(w0.clone(), serving(new.clone(), vec![]))]));
    let got = answer(&r.cluster, request(ModelChoice::Base, "hi")).await;
    assert_eq!(
        got.unwrap(),
        "w0",
        "the new process is held down by the old one's mark"
    );
    r.cluster.mark_down_at(&w0, &old);
    let got = answer(&r.cluster, request(ModelChoice::Base, "hi")).await;
    assert_eq!(
        got.unwrap(),
        "w0",
        "a failure on the old address marked the new one down"
    );
    let open = {
        let t = r.cluster.inner.table.read().unwrap();
        t.workers[&w0].conn.as_ref().is_some_and(|c| !c.is_closed())
    };
    assert!(
        open,
        "a failure on the old address closed the new one's connection"
    );
    // A failure at the address it has now still marks it down (its connection closed).
    r.cluster.mark_down_at(&w0, &new);
    let closed = {
        let t = r.cluster.inner.table.read().unwrap();
        t.workers[&w0].conn.is_none() && t.workers[&w0].down_until.is_some()
    };
    assert!(closed, "a failure at the current address left w0 up");
    // With nothing else left, the marked worker is still tried (and here it answers).
    let got = answer(&r.cluster, request(ModelChoice::Base, "hi")).await;
    assert_eq!(got.unwrap(), "w0");
}

/// A down mark steers requests to the workers not marked; when every worker is marked (the
/// rolling restart's 503s "0 tried": failures of other requests marked both workers of a
/// busy gateway within `down_for`), the request tries them instead of failing untried.
#[tokio::test]
async fn down_marks_steer_requests_but_never_fail_one_untried() {
    let r = rig([false, false]).await;
    r.cluster.mark_down(&node("w0"));
    for _ in 0..4 {
        let got = answer(&r.cluster, request(ModelChoice::Base, "hi")).await;
        assert_eq!(
            got.unwrap(),
            "w1",
            "a request went to the worker marked down"
        );
    }
    r.cluster.mark_down(&node("w1"));
    let got = answer(&r.cluster, request(ModelChoice::Base, "hi")).await;
    assert!(
        matches!(got.as_deref(), Ok("w0" | "w1")),
        "every worker marked down failed the request: {got:?}"
    );
}
