//! The reward actor (ractor): the single writer of the reward log for attributed answers.
//! It aggregates reward records per window and appends each window's batch with
//! [`LogWriter::append_once`], so a request id is paid once whatever is retried: a batch
//! whose append failed or whose outcome was unknown stays pending and is appended again on
//! the next window, and the log leaves out what it already holds. After the log
//! acknowledges, it writes each request's [`RewardReceipt`], deletes the request's pending
//! marker and observes the reward lag.
//!
//! Where it runs: in `tributary dev` (the log's own epoch fencing; the attribution thread
//! also sends each record at once), and on the coordinator leader of a cluster, writing
//! under the leader's fencing token (its etcd election revision; the writer's epoch is
//! `token × 2¹⁶ + the leader's open attempt`, see [`leader_epoch`]). Every
//! window it lists `attribution/pending/` and takes up the records whose reward is not
//! acknowledged yet: answers attributed on the serving workers, and whatever a crashed
//! process or a deposed leader left. The marker is deleted only after the receipt, so a
//! reward is found until it is acknowledged, and the log's dedup pays it once whoever
//! appends it.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as Key;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tributary_ledger::rewards::{
    Fencing, LogError, LogWriter, Replicas, RewardRecord, WriterOptions,
};
use tributary_ledger::store::Store;

use super::metrics::{BACKLOG, REWARD_LAG};
use super::now_ms;
use super::receipt_index;
use super::record::{
    AttributionRecord, RewardReceipt, pending_key, receipt_key, record_key, reward_record,
};

/// A leader opens the log at most this many times under one token (see [`leader_epoch`]).
const OPENS_PER_TOKEN: u64 = 1 << 16;

/// The reward-log epoch of a leader's `attempt`-th writer: `token × 2¹⁶ + attempt`. A newer
/// leader (a higher etcd revision) always has higher epochs than an older one, and a leader
/// whose open failed after its epoch was claimed can open again with the next one (the log
/// refuses to claim an epoch twice). `None` past the bound or on overflow.
pub fn leader_epoch(token: u64, attempt: u64) -> Option<u64> {
    if attempt >= OPENS_PER_TOKEN {
        return None;
    }
    token.checked_mul(OPENS_PER_TOKEN)?.checked_add(attempt)
}

/// Rewards held in memory at most; more pending markers wait in the store for later windows.
const MAX_QUEUED: usize = 4096;

/// A reward waiting for the log.
#[derive(Debug, Clone)]
pub struct Pending {
    pub reward: RewardRecord,
    pub adapter: String,
    pub builder: String,
}

/// Messages of the reward actor.
#[derive(Debug)]
pub enum RewardMsg {
    /// An attributed answer's reward record.
    Attributed(Pending),
    /// The window closed: append what is pending.
    Flush,
}

/// Settings of the reward actor.
pub struct RewardArgs {
    pub replicas: Replicas,
    pub store: Store,
    pub window: Duration,
    /// Records per append at most (a window with more appends several batches).
    pub max_batch: usize,
    /// How the writer claims its epoch: [`Fencing::Embedded`] in `dev`, the leader's token in
    /// a cluster.
    /// (For a leader, `Fencing::Token(t)` is the election revision; each open uses
    /// [`leader_epoch`]`(t, attempt)`.)
    pub fencing: Fencing,
    /// Whether the log is opened at start, its error failing the start (`dev`), or when
    /// there is first something to append, and again on every window until it opens (a
    /// cluster leader: leading jobs never waits for the reward log).
    pub must_open: bool,
}

pub struct RewardState {
    replicas: Replicas,
    fencing: Fencing,
    /// Opens tried so far (a leader's epoch moves on with each).
    opens: u64,
    writer: Option<LogWriter>,
    store: Store,
    pending: Vec<Pending>,
    /// The request ids in `pending`.
    queued: HashSet<String>,
    max_batch: usize,
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// Whether receipts stored before the per-contributor and per-adapter views existed
    /// have been indexed ([`receipt_index::backfill`], tried each window until it succeeds).
    views_backfilled: bool,
}

/// The actor.
pub struct RewardActor;

impl Actor for RewardActor {
    type Msg = RewardMsg;
    type State = RewardState;
    type Arguments = RewardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RewardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // `dev` opens the log now (an error is shown at start); a leader opens it when it
        // first has a reward to append, so taking over jobs never waits for the log and a
        // cluster that serves nothing never writes it.
        let writer = if args.must_open {
            Some(open(&args.replicas, args.fencing, 0).await?)
        } else {
            None
        };
        let ticker = myself.send_interval(args.window, || RewardMsg::Flush);
        Ok(RewardState {
            replicas: args.replicas,
            fencing: args.fencing,
            opens: u64::from(args.must_open),
            writer,
            store: args.store,
            pending: Vec::new(),
            queued: HashSet::new(),
            max_batch: args.max_batch.max(1),
            ticker: Some(ticker),
            views_backfilled: false,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RewardMsg::Attributed(p) => {
                if state.queued.insert(p.reward.request_id.clone()) {
                    state.pending.push(p);
                } else {
                    // Already taken up from its pending marker (counted then).
                    BACKLOG.dec();
                }
                if state.pending.len() >= state.max_batch {
                    flush(state).await;
                }
            }
            RewardMsg::Flush => {
                if !state.views_backfilled {
                    match receipt_index::backfill(&state.store).await {
                        Ok(n) => {
                            if n > 0 {
                                tracing::info!(
                                    receipts = n,
                                    "indexed earlier reward receipts by contributor and adapter"
                                );
                            }
                            state.views_backfilled = true;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "indexing earlier reward receipts failed; retrying next window")
                        }
                    }
                }
                collect(state).await;
                flush(state).await
            }
        }
        Ok(())
    }
}

async fn open(replicas: &Replicas, fencing: Fencing, attempt: u64) -> Result<LogWriter, LogError> {
    let fencing = match fencing {
        Fencing::Token(t) => match leader_epoch(t, attempt) {
            Some(epoch) => Fencing::Token(epoch),
            None => {
                return Err(LogError::StaleEpoch {
                    token: t,
                    current: t,
                });
            }
        },
        f => f,
    };
    LogWriter::open(
        replicas.clone(),
        WriterOptions {
            fencing,
            ..WriterOptions::default()
        },
    )
    .await
}

/// Takes up the stored records whose reward is not acknowledged yet (their pending markers),
/// up to [`MAX_QUEUED`] in memory.
async fn collect(state: &mut RewardState) {
    let names = match state
        .store
        .list_names(&Key::from("attribution/pending"))
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "listing pending rewards failed; retrying next window");
            return;
        }
    };
    for name in names {
        if state.pending.len() >= MAX_QUEUED {
            break;
        }
        let Some(rid) = name.strip_suffix(".json") else {
            continue;
        };
        if state.queued.contains(rid) {
            continue;
        }
        match state.store.get(&Key::from(receipt_key(rid))).await {
            Ok(Some(bytes)) => {
                // Acknowledged before, the marker outlived a crash (perhaps before the
                // receipt's view entries were written: they are written again).
                match serde_json::from_slice::<RewardReceipt>(&bytes) {
                    Ok(r) => index_then_release(&state.store, &r).await,
                    Err(_) => {
                        let _ = state.store.delete(&Key::from(pending_key(rid))).await;
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading a receipt failed; retrying next window");
                return;
            }
        }
        let bytes = match state.store.get(&Key::from(record_key(rid))).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::error!(
                    request_id = rid,
                    "a pending reward without its record: removed, nothing to pay"
                );
                let _ = state.store.delete(&Key::from(pending_key(rid))).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading a record failed; retrying next window");
                return;
            }
        };
        match serde_json::from_slice::<AttributionRecord>(&bytes) {
            Ok(rec) => {
                tracing::info!(request_id = rid, "taking up a reward without receipt");
                BACKLOG.inc();
                state.queued.insert(rid.to_owned());
                state.pending.push(Pending {
                    reward: reward_record(&rec, &bytes),
                    adapter: rec.adapter,
                    builder: rec.builder,
                });
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = rid, "an unreadable record: its reward is not paid");
                let _ = state.store.delete(&Key::from(pending_key(rid))).await;
            }
        }
    }
}

async fn flush(state: &mut RewardState) {
    while !state.pending.is_empty() {
        let n = state.pending.len().min(state.max_batch);
        if let Err(e) = append(state, n).await {
            tracing::warn!(error = %e, pending = state.pending.len(), "reward append failed; retrying next window");
            return;
        }
    }
}

async fn append(state: &mut RewardState, n: usize) -> Result<(), LogError> {
    if state.writer.is_none() {
        let attempt = state.opens;
        state.opens = state.opens.saturating_add(1);
        state.writer = Some(open(&state.replicas, state.fencing, attempt).await?);
    }
    let Some(writer) = state.writer.as_mut() else {
        return Ok(());
    };
    let batch: Vec<RewardRecord> = state.pending[..n]
        .iter()
        .map(|p| p.reward.clone())
        .collect();
    let span = tracing::info_span!("reward_append", records = n);
    let outcome = match tracing::Instrument::instrument(writer.append_once(batch), span).await {
        Ok(o) => o,
        Err(e) => {
            if matches!(e, LogError::Fenced { .. } | LogError::StaleEpoch { .. }) {
                // Another writer took over; a new one is opened on the next window.
                state.writer = None;
            }
            return Err(e);
        }
    };
    let seq = outcome.appended.map(|a| a.seq);
    let acked = now_ms();
    let done: Vec<Pending> = state.pending.drain(..n).collect();
    for p in done {
        let already = outcome.already_recorded.contains(&p.reward.request_id);
        let receipt = RewardReceipt {
            request_id: p.reward.request_id.clone(),
            adapter: p.adapter.clone(),
            builder: p.builder.clone(),
            time_ms: p.reward.time_ms,
            total: p.reward.total,
            shares: p
                .reward
                .shares
                .iter()
                .map(|s| (s.contributor.clone(), s.amount))
                .collect(),
            seq: if already { None } else { seq },
            acknowledged_ms: acked,
        };
        let key = Key::from(receipt_key(&p.reward.request_id));
        // A receipt that exists is kept: the first acknowledgement names the entry.
        let existing = match state.store.get(&key).await {
            Ok(Some(b)) => serde_json::from_slice::<RewardReceipt>(&b).ok(),
            _ => None,
        };
        let receipt = match existing {
            Some(r) => Some(r),
            None => match serde_json::to_vec(&receipt) {
                Ok(b) => match state.store.put(&key, Bytes::from(b)).await {
                    Ok(_) => Some(receipt),
                    Err(e) => {
                        tracing::warn!(error = %e, request_id = %receipt.request_id, "writing the reward receipt; its pending marker brings it back next window");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "encoding the reward receipt");
                    None
                }
            },
        };
        if let Some(r) = &receipt {
            index_then_release(&state.store, r).await;
        }
        state.queued.remove(&p.reward.request_id);
        REWARD_LAG.observe(acked.saturating_sub(p.reward.time_ms) as f64 / 1000.0);
        BACKLOG.dec();
        tracing::info!(request_id = %p.reward.request_id, total = p.reward.total, already, "reward acknowledged");
    }
    Ok(())
}

/// Writes the view entries of `receipt` ([`receipt_index`]), then deletes its pending marker.
/// The entries go after the receipt and before the marker, so a crash or a failed write in
/// between leaves the marker, and the next window writes them again.
async fn index_then_release(store: &Store, receipt: &RewardReceipt) {
    match receipt_index::write_entries(store, receipt).await {
        Ok(()) => {
            let _ = store
                .delete(&Key::from(pending_key(&receipt.request_id)))
                .await;
        }
        Err(e) => {
            tracing::warn!(error = %e, request_id = %receipt.request_id, "writing the reward receipt's views; its pending marker brings it back next window");
        }
    }
}

/// Starts the actor (opens the reward log: self-test, epoch claim, reconciliation).
pub async fn spawn(args: RewardArgs) -> Result<ActorRef<RewardMsg>, AttrSpawnError> {
    let (actor, _) = Actor::spawn(None, RewardActor, args)
        .await
        .map_err(|e| AttrSpawnError(e.to_string()))?;
    Ok(actor)
}

/// Starts the reward actor of a coordinator leader: it writes the reward log in `replicas`
/// under the leader's fencing token `token` and pays the records the serving workers left
/// pending in `store`, every `window`. The log is opened when there is first something to
/// append (and again on every window until it opens).
pub async fn spawn_leader(
    replicas: Replicas,
    store: Store,
    token: u64,
    window: Duration,
) -> Result<LeaderRewards, AttrSpawnError> {
    super::metrics::init();
    spawn(RewardArgs {
        replicas,
        store,
        window,
        max_batch: 256,
        fencing: Fencing::Token(token),
        must_open: false,
    })
    .await
    .map(LeaderRewards)
}

/// The leader's running reward actor.
pub struct LeaderRewards(pub ActorRef<RewardMsg>);

impl LeaderRewards {
    /// Stops it (leadership lost, or shutdown); what is pending stays in the store.
    pub fn stop(&self) {
        self.0.stop(None);
    }
}

/// The actor could not start.
#[derive(Debug, thiserror::Error)]
#[error("reward actor: {0}")]
pub struct AttrSpawnError(pub String);

#[cfg(test)]
#[path = "actor_tests.rs"]
mod tests;
