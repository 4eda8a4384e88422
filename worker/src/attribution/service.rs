//! Starting online attribution: the bounded queue and its durable overflow
//! ([`AttributionSink`]), the attribution thread, and the reward actor.
//!
//! Every finished answer is first written to the durable backlog
//! (`attribution/backlog/<request id>.json`) and removed once its record and its pending
//! marker (`attribution/pending/<request id>.json`) are stored, or once it failed for good.
//! The attribution thread takes answers from the queue one at a time; when the queue is
//! empty it takes up what waits in the backlog (answers that did not fit the queue, answers
//! waiting for a retry, and an earlier process's).
//!
//! A failed attribution is retried `retries` times, after a back-off that doubles from
//! `retry_backoff` (at most a minute; the answer waits in the backlog meanwhile, counted in
//! `tributary_attribution_retries_total`). After the last attempt it is recorded as failed
//! with its error (`attribution/failed/<request id>.json`, shown by
//! `GET /v1/attributions/{id}`) and counted in `tributary_attributions_total{outcome="failed"}`.
//!
//! Rewards: the pending marker is what the reward actor takes up ([`super::actor`]); it is
//! deleted after the log's acknowledgement and the receipt. In `dev` ([`Rewards::Actor`])
//! the actor runs in this process and also gets each record at once; on a cluster's serving
//! worker ([`Rewards::Leader`]) the coordinator leader's actor finds the markers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as Key;
use ractor::ActorRef;
use tokio::sync::mpsc;
use tributary_ledger::rewards::{Fencing, Replicas};
use tributary_ledger::store::Store;

use super::actor::{Pending, RewardArgs, RewardMsg};
use super::compute::{AnswerJob, Attributor, Pricing};
use super::metrics::{BACKLOG, OUTCOMES, RETRIES, SECONDS, SPILLED};
use super::record::{
    AttributionRecord, FailedAttribution, Params, PendingMarker, backlog_key, failed_key,
    pending_key, receipt_key, record_key, reward_record, valid_request_id,
};
use super::{AttrError, metrics, now_ms};

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
    /// Attempts after the first for a failed attribution.
    pub retries: u32,
    /// Back-off before the first retry; it doubles for each further one (at most a minute).
    pub retry_backoff: Duration,
    /// The durable backlog's prefix ([`super::record::DEV_BACKLOG`], or
    /// [`super::record::worker_backlog`] on a cluster's serving worker).
    pub backlog: String,
}

/// Where the rewards of the records go.
pub enum Rewards {
    /// `tributary dev`: a reward actor in this process writes the log (its own epoch
    /// fencing) and gets each record at once.
    Actor(Replicas),
    /// A serving worker of a cluster: records and pending markers only; the coordinator
    /// leader's reward actor takes them up (see [`super::actor`]).
    Leader,
}

/// Where finished answers go. Never blocks and never drops: a full queue spills to the
/// store.
#[derive(Clone)]
pub struct AttributionSink {
    tx: mpsc::Sender<AnswerJob>,
    store: Store,
    /// The durable backlog's prefix.
    backlog: Arc<str>,
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
    /// durable backlog (`<backlog>/<request id>.json`, off the serving path), so a
    /// crash or a restart loses nothing; it then goes to the in-memory queue, or, when the
    /// queue is full, waits in the backlog until the queue drains.
    pub fn submit(&self, job: AnswerJob) {
        if !valid_request_id(&job.request_id) {
            tracing::warn!(request_id = %job.request_id, "attribution: request id not usable as a key; skipped");
            return;
        }
        BACKLOG.inc();
        let (tx, store) = (self.tx.clone(), self.store.clone());
        let key = Key::from(backlog_key(&self.backlog, &job.request_id));
        tokio::spawn(async move {
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

/// Starts the attribution thread and, for [`Rewards::Actor`], the reward actor; returns the
/// sink (and the actor).
pub async fn start(
    cfg: AttributionConfig,
    store: Store,
    rewards: Rewards,
) -> Result<(AttributionSink, Option<ActorRef<RewardMsg>>), AttrError> {
    metrics::init();
    let actor = match rewards {
        Rewards::Actor(ledger) => Some(
            super::actor::spawn(RewardArgs {
                replicas: ledger,
                store: store.clone(),
                window: cfg.window,
                max_batch: cfg.max_batch,
                fencing: Fencing::Embedded,
                must_open: true,
            })
            .await
            .map_err(|e| AttrError::Log(e.to_string()))?,
        ),
        Rewards::Leader => None,
    };
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let rt = tokio::runtime::Handle::current();
    let (s, a) = (store.clone(), actor.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let active = Arc::new(AtomicUsize::new(0));
    let busy = active.clone();
    let backlog: Arc<str> = Arc::from(cfg.backlog.as_str());
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
                    let mut t = Thread {
                        at,
                        actor: a,
                        store: s,
                        rt,
                        retries: cfg.retries,
                        backoff: cfg.retry_backoff,
                        backlog: cfg.backlog,
                    };
                    t.run(rx, &busy, cfg.defer);
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
    Ok((
        AttributionSink {
            tx,
            store,
            backlog,
            active,
        },
        actor,
    ))
}

/// The attribution thread's state.
struct Thread {
    at: Attributor,
    actor: Option<ActorRef<RewardMsg>>,
    store: Store,
    rt: tokio::runtime::Handle,
    retries: u32,
    backoff: Duration,
    /// The durable backlog's prefix (only this worker's answers).
    backlog: String,
}

/// The back-off before retry number `attempt` (1-based): doubling, at most a minute.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(60))
}

impl Thread {
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    fn run(&mut self, mut rx: mpsc::Receiver<AnswerJob>, busy: &AtomicUsize, defer: Duration) {
        self.recover();
        // Yields to serving: waits (at most `defer`) while answers are being generated.
        let yield_to_serving = || {
            let t0 = std::time::Instant::now();
            while busy.load(Ordering::Relaxed) > 0 && t0.elapsed() < defer {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // Waits for the next answer by polling the channel, not with a tokio timer: the
        // runtime may be shutting down while this thread waits (a worker's SIGTERM), and a
        // timer on a runtime being shut down panics.
        let mut idle_since = std::time::Instant::now();
        loop {
            match rx.try_recv() {
                Ok(job) => {
                    yield_to_serving();
                    self.handle(&job);
                    idle_since = std::time::Instant::now();
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return,
                Err(mpsc::error::TryRecvError::Empty)
                    if idle_since.elapsed() < Duration::from_millis(500) =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    idle_since = std::time::Instant::now();
                    // Idle: take up the durable backlog, oldest name first (answers waiting
                    // for a retry when their back-off is over).
                    for name in self.backlog_names() {
                        if !rx.is_empty() {
                            break;
                        }
                        let key = Key::from(format!("{}/{name}", self.backlog));
                        let Ok(Some(bytes)) = self.rt.block_on(self.store.get(&key)) else {
                            continue;
                        };
                        match serde_json::from_slice::<AnswerJob>(&bytes) {
                            Ok(job) if job.retry_at_ms > now_ms() => {}
                            Ok(job) => {
                                yield_to_serving();
                                self.handle(&job)
                            }
                            Err(e) => {
                                tracing::error!(error = %e, %name, "unreadable backlog entry: removed, the answer is not attributed");
                                OUTCOMES.with_label_values(&["failed"]).inc();
                                BACKLOG.dec();
                                let _ = self.rt.block_on(self.store.delete(&key));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The answers in this backlog (not those of other workers' backlogs under it).
    fn backlog_names(&self) -> Vec<String> {
        self.rt
            .block_on(self.store.list_names(&Key::from(self.backlog.as_str())))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.contains('/'))
            .collect()
    }

    fn exists(&self, key: String) -> bool {
        matches!(
            self.rt.block_on(self.store.get(&Key::from(key))),
            Ok(Some(_))
        )
    }

    /// Marks a stored record's reward as pending (unless the log already acknowledged it).
    fn mark_pending(&self, rid: &str, answered_ms: u64) -> Result<(), AttrError> {
        if self.exists(receipt_key(rid)) {
            return Ok(());
        }
        let marker = PendingMarker {
            request_id: rid.to_owned(),
            answered_ms,
        };
        let bytes = serde_json::to_vec(&marker).map_err(AttrError::io)?;
        self.rt
            .block_on(
                self.store
                    .put(&Key::from(pending_key(rid)), Bytes::from(bytes)),
            )
            .map_err(AttrError::store)
    }

    /// Counts the durable backlog left by an earlier process; an answer whose record was
    /// stored before the crash gets its pending marker and leaves the backlog.
    fn recover(&self) {
        for name in self.backlog_names() {
            let Some(rid) = name.strip_suffix(".json") else {
                continue;
            };
            if self.exists(record_key(rid)) {
                match self.mark_pending(rid, now_ms()) {
                    Ok(()) => {
                        let _ = self.rt.block_on(
                            self.store
                                .delete(&Key::from(backlog_key(&self.backlog, rid))),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, request_id = rid, "marking a recovered record's reward pending");
                        BACKLOG.inc();
                    }
                }
            } else {
                BACKLOG.inc();
            }
        }
    }

    fn send(&self, rec: &AttributionRecord, bytes: &[u8]) {
        let Some(actor) = &self.actor else {
            // The coordinator leader's actor takes it up from its pending marker.
            BACKLOG.dec();
            return;
        };
        let reward = reward_record(rec, bytes);
        if let Err(e) = actor.cast(RewardMsg::Attributed(Pending {
            reward,
            adapter: rec.adapter.clone(),
            builder: rec.builder.clone(),
        })) {
            tracing::error!(error = %e, request_id = %rec.request_id, "reward actor gone; the record stays pending and is paid by the next actor");
        }
    }

    /// Attributes one answer, stores its record and pending marker, and sends its reward.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    fn handle(&mut self, job: &AnswerJob) {
        let span =
            tracing::info_span!("attribute", request_id = %job.request_id, adapter = %job.adapter);
        let _g = span.enter();
        let t0 = std::time::Instant::now();
        let backlog = Key::from(backlog_key(&self.backlog, &job.request_id));
        // Already attributed (the answer was taken from the backlog before the queue
        // delivered it, or the marker could not be written): its reward is pending.
        if self.exists(record_key(&job.request_id)) {
            match self.mark_pending(&job.request_id, job.answered_ms) {
                Ok(()) => {
                    let _ = self.rt.block_on(self.store.delete(&backlog));
                    if job.attempts > 0 {
                        // A retry of the marker only: its count ends here (the reward
                        // actor counts the reward when it takes up the marker).
                        BACKLOG.dec();
                    }
                }
                Err(e) => self.retry_or_fail(job, &e),
            }
            return;
        }
        let (rt, store) = (self.rt.clone(), self.store.clone());
        let result = self.at.attribute(job).and_then(|r| {
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
        match result {
            Ok(Some((rec, bytes))) => {
                OUTCOMES.with_label_values(&["recorded"]).inc();
                tracing::info!(seconds = rec.seconds, "attribution recorded");
                if let Err(e) = self.mark_pending(&rec.request_id, rec.answered_ms) {
                    // The record is stored: the retry only writes the marker.
                    self.retry_or_fail(job, &e);
                    return;
                }
                let _ = self.rt.block_on(self.store.delete(&backlog));
                self.send(&rec, &bytes);
            }
            Ok(None) => {
                let _ = self.rt.block_on(self.store.delete(&backlog));
                OUTCOMES.with_label_values(&["no_index"]).inc();
                BACKLOG.dec();
                tracing::info!("the adapter has no attribution index: answer not attributed");
            }
            Err(e) => self.retry_or_fail(job, &e),
        }
    }

    /// Puts a failed answer back in the backlog for a later attempt, or, after the last
    /// one, records it as failed.
    fn retry_or_fail(&self, job: &AnswerJob, e: &AttrError) {
        let attempts = job.attempts.saturating_add(1);
        let backlog = Key::from(backlog_key(&self.backlog, &job.request_id));
        if attempts <= self.retries {
            let wait = backoff(self.backoff, attempts);
            let mut next = job.clone();
            next.attempts = attempts;
            next.retry_at_ms = now_ms().saturating_add(wait.as_millis() as u64);
            RETRIES.inc();
            tracing::warn!(error = %e, attempt = attempts, retry_in_ms = wait.as_millis() as u64, "attribution failed; retrying");
            let put = serde_json::to_vec(&next)
                .map_err(AttrError::io)
                .and_then(|b| {
                    self.rt
                        .block_on(self.store.put(&backlog, Bytes::from(b)))
                        .map_err(AttrError::store)
                });
            if let Err(e2) = put {
                tracing::error!(error = %e2, "recording the retry failed: the answer is retried from its backlog entry, if stored");
            }
            return;
        }
        let failed = FailedAttribution {
            request_id: job.request_id.clone(),
            adapter: job.adapter.clone(),
            requester: job.requester.clone(),
            answered_ms: job.answered_ms,
            attempts,
            error: e.to_string(),
            failed_ms: now_ms(),
        };
        let stored = serde_json::to_vec_pretty(&failed)
            .map_err(AttrError::io)
            .and_then(|b| {
                self.rt
                    .block_on(
                        self.store
                            .put(&Key::from(failed_key(&job.request_id)), Bytes::from(b)),
                    )
                    .map_err(AttrError::store)
            });
        if let Err(e2) = stored {
            tracing::error!(error = %e2, "recording the failed attribution failed");
        }
        let _ = self.rt.block_on(self.store.delete(&backlog));
        OUTCOMES.with_label_values(&["failed"]).inc();
        BACKLOG.dec();
        tracing::error!(error = %e, attempts, "attribution failed for good: the answer is not attributed nor billed");
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn the_back_off_doubles_and_is_capped() {
        let b = Duration::from_millis(500);
        assert_eq!(backoff(b, 1), Duration::from_millis(500));
        assert_eq!(backoff(b, 3), Duration::from_secs(2));
        assert_eq!(backoff(b, 40), Duration::from_secs(60));
    }
}
