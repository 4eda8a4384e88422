//! Starting online attribution: the bounded queue and its durable overflow
//! ([`AttributionSink`]), the attribution thread, and the reward actor.
//!
//! Every finished answer is first written to the durable backlog
//! (`attribution/backlog/<request id>.json`) and removed once its record is stored (or its
//! attribution failed, logged and counted). The attribution thread takes answers from the
//! queue one at a time; when the queue is empty it takes up what waits in the backlog
//! (answers that did not fit the queue, and an earlier process's). At start it also
//! re-sends the reward of every stored record that has no receipt yet (a crash between
//! storing a record and the log's acknowledgement): the log's dedup by request id pays
//! each once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as Key;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tributary_ledger::rewards::Replicas;
use tributary_ledger::store::Store;

use super::actor::{Pending, RewardArgs, RewardMsg};
use super::compute::{AnswerJob, Attributor, Pricing};
use super::metrics::{BACKLOG, OUTCOMES, SECONDS, SPILLED};
use super::record::{
    AttributionRecord, Params, backlog_key, receipt_key, record_key, reward_record,
    valid_request_id,
};
use super::{AttrError, metrics};

/// Online attribution settings.
#[derive(Debug, Clone)]
pub struct AttributionConfig {
    /// The base model the engine serves (the attribution thread loads its own copy).
    pub base_model: PathBuf,
    pub params: Params,
    pub pricing: Pricing,
    /// In-memory queue of finished answers; beyond it answers go to the durable backlog.
    pub queue: usize,
    /// The reward actor's aggregation window.
    pub window: Duration,
    /// Records per reward-log append at most.
    pub max_batch: usize,
    /// How long the attribution thread waits, before each answer, for the answers in
    /// flight to finish (attribution yields the CPU to serving; 0: never waits).
    pub defer: Duration,
}

/// Where finished answers go. Never blocks and never drops: a full queue spills to the
/// store.
#[derive(Clone)]
pub struct AttributionSink {
    tx: mpsc::Sender<AnswerJob>,
    store: Store,
    /// Answers being generated now (taps in flight).
    active: Arc<AtomicUsize>,
}

impl AttributionSink {
    /// An answer started streaming; the guard marks its end when dropped.
    pub fn answer_started(&self) -> ActiveAnswer {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveAnswer(self.active.clone())
    }

    /// Hands over a finished answer (returns at once). The answer is first written to the
    /// durable backlog (`attribution/backlog/<request id>.json`, off the serving path), so a
    /// crash or a restart loses nothing; it then goes to the in-memory queue, or, when the
    /// queue is full, waits in the backlog until the queue drains.
    pub fn submit(&self, job: AnswerJob) {
        if !valid_request_id(&job.request_id) {
            tracing::warn!(request_id = %job.request_id, "attribution: request id not usable as a key; skipped");
            return;
        }
        BACKLOG.inc();
        let (tx, store) = (self.tx.clone(), self.store.clone());
        tokio::spawn(async move {
            let key = Key::from(backlog_key(&job.request_id));
            let written = match serde_json::to_vec(&job) {
                Ok(b) => store
                    .put(&key, Bytes::from(b))
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = &written {
                tracing::error!(error = %e, request_id = %job.request_id, "attribution backlog write failed: the answer waits in memory only");
            }
            match tx.try_send(job) {
                Ok(()) => {}
                Err(
                    mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job),
                ) => {
                    SPILLED.inc();
                    if written.is_ok() {
                        tracing::warn!(request_id = %job.request_id, "attribution queue full: the answer waits in the durable backlog");
                    } else {
                        // Neither queued nor stored: counted and logged, never silent.
                        BACKLOG.dec();
                        OUTCOMES.with_label_values(&["failed"]).inc();
                        tracing::error!(request_id = %job.request_id, "attribution queue full and backlog unwritable: the answer is not attributed");
                    }
                }
            }
        });
    }
}

/// One answer in flight (see [`AttributionSink::answer_started`]).
pub struct ActiveAnswer(Arc<AtomicUsize>);

impl Drop for ActiveAnswer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the reward actor (over `ledger`) and the attribution thread; returns the sink.
pub async fn start(
    cfg: AttributionConfig,
    store: Store,
    ledger: Replicas,
) -> Result<(AttributionSink, ActorRef<RewardMsg>), AttrError> {
    metrics::init();
    let actor = super::actor::spawn(RewardArgs {
        replicas: ledger,
        store: store.clone(),
        window: cfg.window,
        max_batch: cfg.max_batch,
    })
    .await
    .map_err(|e| AttrError::Log(e.to_string()))?;
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let rt = tokio::runtime::Handle::current();
    let (s, a) = (store.clone(), actor.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let active = Arc::new(AtomicUsize::new(0));
    let (busy, defer) = (active.clone(), cfg.defer);
    std::thread::Builder::new()
        .name("attribution".into())
        .spawn(move || {
            let attributor = Attributor::new(
                &cfg.base_model,
                s.clone(),
                rt.clone(),
                cfg.params,
                cfg.pricing.clone(),
            );
            match attributor {
                Ok(at) => {
                    let _ = ready_tx.send(Ok(()));
                    run(at, rx, a, s, rt, &busy, defer);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(AttrError::io)?;
    ready_rx
        .await
        .map_err(|_| AttrError::Model("the attribution thread stopped".into()))??;
    Ok((AttributionSink { tx, store, active }, actor))
}

#[allow(clippy::disallowed_methods)] // measures elapsed time
fn run(
    mut at: Attributor,
    mut rx: mpsc::Receiver<AnswerJob>,
    actor: ActorRef<RewardMsg>,
    store: Store,
    rt: tokio::runtime::Handle,
    busy: &AtomicUsize,
    defer: Duration,
) {
    recover(&store, &rt, &actor);
    // Yields to serving: waits (at most `defer`) while answers are being generated.
    let yield_to_serving = || {
        let t0 = std::time::Instant::now();
        while busy.load(Ordering::Relaxed) > 0 && t0.elapsed() < defer {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    loop {
        let next = rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(500), rx.recv()).await });
        match next {
            Ok(Some(job)) => {
                yield_to_serving();
                handle(&mut at, &job, &actor, &store, &rt)
            }
            Ok(None) => return,
            Err(_) => {
                // Idle: take up the durable backlog, oldest name first.
                let names = rt
                    .block_on(store.list_names(&Key::from("attribution/backlog")))
                    .unwrap_or_default();
                for name in names {
                    if !rx.is_empty() {
                        break;
                    }
                    let key = Key::from(format!("attribution/backlog/{name}"));
                    let Ok(Some(bytes)) = rt.block_on(store.get(&key)) else {
                        continue;
                    };
                    match serde_json::from_slice::<AnswerJob>(&bytes) {
                        Ok(job) => {
                            yield_to_serving();
                            handle(&mut at, &job, &actor, &store, &rt)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, %name, "unreadable backlog entry: removed, the answer is not attributed");
                            OUTCOMES.with_label_values(&["failed"]).inc();
                            BACKLOG.dec();
                            let _ = rt.block_on(store.delete(&key));
                        }
                    }
                }
            }
        }
    }
}

/// Re-sends the rewards of stored records without a receipt, and counts the durable
/// backlog left by an earlier process.
fn recover(store: &Store, rt: &tokio::runtime::Handle, actor: &ActorRef<RewardMsg>) {
    let backlog = rt
        .block_on(store.list_names(&Key::from("attribution/backlog")))
        .unwrap_or_default();
    for name in backlog {
        let Some(rid) = name.strip_suffix(".json") else {
            continue;
        };
        if matches!(
            rt.block_on(store.get(&Key::from(record_key(rid)))),
            Ok(Some(_))
        ) {
            let _ = rt.block_on(store.delete(&Key::from(backlog_key(rid))));
        } else {
            BACKLOG.inc();
        }
    }
    let records = rt
        .block_on(store.list_names(&Key::from("attribution/records")))
        .unwrap_or_default();
    for name in records {
        let Some(rid) = name.strip_suffix(".json") else {
            continue;
        };
        if matches!(
            rt.block_on(store.get(&Key::from(receipt_key(rid)))),
            Ok(Some(_))
        ) {
            continue;
        }
        let Ok(Some(bytes)) = rt.block_on(store.get(&Key::from(record_key(rid)))) else {
            continue;
        };
        if let Ok(rec) = serde_json::from_slice::<AttributionRecord>(&bytes) {
            tracing::info!(
                request_id = rid,
                "re-sending the reward of a record without receipt"
            );
            BACKLOG.inc();
            send(actor, &rec, &bytes);
        }
    }
}

fn send(actor: &ActorRef<RewardMsg>, rec: &AttributionRecord, bytes: &[u8]) {
    let reward = reward_record(rec, bytes);
    if let Err(e) = actor.cast(RewardMsg::Attributed(Pending {
        reward,
        adapter: rec.adapter.clone(),
        builder: rec.builder.clone(),
    })) {
        tracing::error!(error = %e, request_id = %rec.request_id, "reward actor gone; the record stays without receipt and is re-sent at the next start");
    }
}

#[allow(clippy::disallowed_methods)] // measures elapsed time
fn handle(
    at: &mut Attributor,
    job: &AnswerJob,
    actor: &ActorRef<RewardMsg>,
    store: &Store,
    rt: &tokio::runtime::Handle,
) {
    let span =
        tracing::info_span!("attribute", request_id = %job.request_id, adapter = %job.adapter);
    let _g = span.enter();
    let t0 = std::time::Instant::now();
    let backlog = Key::from(backlog_key(&job.request_id));
    // Already attributed (the answer was taken from the backlog before the queue delivered
    // it): its reward is on its way, or re-sent at the next start if it has no receipt.
    if matches!(
        rt.block_on(store.get(&Key::from(record_key(&job.request_id)))),
        Ok(Some(_))
    ) {
        let _ = rt.block_on(store.delete(&backlog));
        return;
    }
    let result = at.attribute(job).and_then(|r| {
        let Some((rec, objects)) = r else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec_pretty(&rec).map_err(AttrError::io)?;
        for (k, b) in objects {
            rt.block_on(store.put(&Key::from(k), Bytes::from(b)))
                .map_err(AttrError::store)?;
        }
        rt.block_on(store.put(
            &Key::from(record_key(&rec.request_id)),
            Bytes::from(bytes.clone()),
        ))
        .map_err(AttrError::store)?;
        Ok(Some((rec, bytes)))
    });
    SECONDS.observe(t0.elapsed().as_secs_f64());
    // Attributed, or failed for good (logged and counted): out of the durable backlog.
    let _ = rt.block_on(store.delete(&backlog));
    match result {
        Ok(Some((rec, bytes))) => {
            OUTCOMES.with_label_values(&["recorded"]).inc();
            tracing::info!(seconds = rec.seconds, "attribution recorded");
            send(actor, &rec, &bytes);
        }
        Ok(None) => {
            OUTCOMES.with_label_values(&["no_index"]).inc();
            BACKLOG.dec();
            tracing::info!("the adapter has no attribution index: answer not attributed");
        }
        Err(e) => {
            OUTCOMES.with_label_values(&["failed"]).inc();
            BACKLOG.dec();
            tracing::error!(error = %e, "attribution failed");
        }
    }
}
