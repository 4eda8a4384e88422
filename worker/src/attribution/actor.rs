//! The reward actor (ractor): the single writer of the reward log for attributed answers.
//! It aggregates reward records per window and appends each window's batch with
//! [`LogWriter::append_once`], so a request id is paid once whatever is retried: a batch
//! whose append failed or whose outcome was unknown stays pending and is appended again on
//! the next window, and the log leaves out what it already holds. After the log
//! acknowledges, it writes each request's [`RewardReceipt`] and observes the reward lag.

use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tributary_ledger::rewards::{LogError, LogWriter, Replicas, RewardRecord, WriterOptions};
use tributary_ledger::store::Store;

use super::metrics::{BACKLOG, REWARD_LAG};
use super::now_ms;
use super::record::{RewardReceipt, receipt_key};

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
}

pub struct RewardState {
    replicas: Replicas,
    writer: Option<LogWriter>,
    store: Store,
    pending: Vec<Pending>,
    max_batch: usize,
    ticker: Option<tokio::task::JoinHandle<()>>,
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
        let writer = LogWriter::open(args.replicas.clone(), WriterOptions::default()).await?;
        let ticker = myself.send_interval(args.window, || RewardMsg::Flush);
        Ok(RewardState {
            replicas: args.replicas,
            writer: Some(writer),
            store: args.store,
            pending: Vec::new(),
            max_batch: args.max_batch.max(1),
            ticker: Some(ticker),
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
                state.pending.push(p);
                if state.pending.len() >= state.max_batch {
                    flush(state).await;
                }
            }
            RewardMsg::Flush => flush(state).await,
        }
        Ok(())
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
        state.writer =
            Some(LogWriter::open(state.replicas.clone(), WriterOptions::default()).await?);
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
        let key = object_store::path::Path::from(receipt_key(&p.reward.request_id));
        // A receipt that exists is kept: the first acknowledgement names the entry.
        let exists = matches!(state.store.get(&key).await, Ok(Some(_)));
        if !exists {
            match serde_json::to_vec(&receipt) {
                Ok(b) => {
                    if let Err(e) = state.store.put(&key, Bytes::from(b)).await {
                        tracing::warn!(error = %e, request_id = %receipt.request_id, "writing the reward receipt");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "encoding the reward receipt"),
            }
        }
        REWARD_LAG.observe(acked.saturating_sub(p.reward.time_ms) as f64 / 1000.0);
        BACKLOG.dec();
        tracing::info!(request_id = %p.reward.request_id, total = p.reward.total, already, "reward acknowledged");
    }
    Ok(())
}

/// Starts the actor (opens the reward log: self-test, epoch claim, reconciliation).
pub async fn spawn(args: RewardArgs) -> Result<ActorRef<RewardMsg>, AttrSpawnError> {
    let (actor, _) = Actor::spawn(None, RewardActor, args)
        .await
        .map_err(|e| AttrSpawnError(e.to_string()))?;
    Ok(actor)
}

/// The actor could not start.
#[derive(Debug, thiserror::Error)]
#[error("reward actor: {0}")]
pub struct AttrSpawnError(pub String);
