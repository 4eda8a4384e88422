//! The coordinator actor (ractor): the job queue and its state machine (queued → running →
//! succeeded / failed / cancelled), placement onto workers, and one driver task per running
//! job. It is a thin shell: the state machine is [`crate::jobs_state::Jobs`] (pure, with an
//! injected clock), placement is [`crate::placement::place_on`], the step loop is
//! [`crate::driver::JobRun`], persistence is a [`JobStore`], membership a [`Membership`].
//! Embedded and cluster mode run this same actor; only the links, store and membership
//! differ.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use tributary_protocol::link::{LinkFactory, WorkerLink};
use tributary_protocol::{JobId, JobSpec, NodeId};

use crate::artifacts::Artifacts;
use crate::driver::{JobEvent, JobOutcome, JobRun};
use crate::error::CoordError;
use crate::jobs_state::{Clock, Effect, Jobs, RetryPolicy, SystemClock};
use crate::membership::Membership;
use crate::metrics;
use crate::placement::{Demand, demand, place_on, waiting_reason};
use crate::store::{JobRecord, JobStore};

/// A worker lost by a job is not offered back to running jobs for this long (its
/// registration may outlive it by up to a lease).
pub const REJOIN_AFTER: Duration = Duration::from_secs(10);

/// Least time between two progress writes of one job to the store.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(crate::jobs_state::PROGRESS_EVERY_MS);

/// Most messages waiting in the coordinator's mailbox from outside (HTTP submissions,
/// status and cancel requests); beyond it callers get [`CoordError::Busy`].
pub const MAILBOX_BOUND: usize = 1024;

/// Messages the coordinator accepts.
#[derive(Debug)]
pub enum CoordinatorMsg {
    /// Queue a job; replies with its id.
    Submit(JobSpec, RpcReplyPort<Result<JobId, CoordError>>),
    /// One job's record, or all of them.
    Status(Option<JobId>, RpcReplyPort<Vec<JobRecord>>),
    /// Cancel a queued or running job.
    Cancel(JobId, RpcReplyPort<Result<(), CoordError>>),
    /// Re-read the store and membership, and place what can be placed.
    Tick,
    /// From a job's driver.
    Event(JobEvent),
}

/// What the coordinator runs with.
#[derive(Clone)]
pub struct CoordinatorConfig {
    /// This leader's fencing token (its election revision; any constant in embedded mode).
    pub fencing: u64,
    pub membership: Arc<dyn Membership>,
    pub store: Arc<dyn JobStore>,
    pub links: Arc<dyn LinkFactory>,
    /// Object storage for checkpoints and adapters.
    pub artifacts: Artifacts,
    /// How often to re-check membership and the store.
    pub tick: Duration,
}

/// The coordinator's policies and clock (defaults: [`RetryPolicy::default`], the system
/// clock).
#[derive(Clone)]
pub struct CoordinatorOptions {
    pub retry: RetryPolicy,
    pub clock: Arc<dyn Clock>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

struct Running {
    cancel: watch::Sender<bool>,
    /// Workers the job holds a slot on (its live workers and those offered to it).
    workers: Vec<NodeId>,
    /// Most workers the job can use.
    max: usize,
    /// Replacement workers for the driver to take in at a step boundary.
    joins: mpsc::Sender<(NodeId, Arc<dyn WorkerLink>)>,
}

/// The actor's state.
pub struct CoordinatorState {
    cfg: CoordinatorConfig,
    clock: Arc<dyn Clock>,
    jobs: Jobs,
    running: BTreeMap<JobId, Running>,
    links: BTreeMap<NodeId, Arc<dyn WorkerLink>>,
    /// Workers a job lost, and when.
    recently_lost: BTreeMap<NodeId, std::time::Instant>,
    /// When each worker was last seen in membership (for the heartbeat-age gauge).
    last_seen: BTreeMap<NodeId, std::time::Instant>,
    /// Records whose last write failed (store down); written again on the next tick.
    dirty: std::collections::BTreeSet<JobId>,
    events: mpsc::Sender<JobEvent>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

/// The coordinator actor.
#[derive(Debug, Default)]
pub struct CoordinatorActor;

impl CoordinatorState {
    /// Writes a record; a leadership error is returned, other failures mark it dirty.
    async fn persist(&mut self, rec: &JobRecord) -> Result<(), CoordError> {
        match self.cfg.store.put(rec).await {
            Ok(()) => {
                self.dirty.remove(&rec.id);
                Ok(())
            }
            Err(e @ CoordError::NotLeader(_)) => Err(e),
            Err(e) => {
                warn!(job = %rec.id, error = %e, "job record not written; will retry");
                self.dirty.insert(rec.id.clone());
                Ok(())
            }
        }
    }

    async fn persist_all(&mut self, recs: Vec<JobRecord>) -> Result<(), CoordError> {
        for rec in recs {
            self.persist(&rec).await?;
        }
        Ok(())
    }

    async fn flush_dirty(&mut self) -> Result<(), CoordError> {
        let ids: Vec<JobId> = self.dirty.iter().cloned().collect();
        for id in ids {
            if let Some(rec) = self.jobs.get(&id).cloned() {
                self.persist(&rec).await?;
            }
        }
        Ok(())
    }

    fn update_gauges(&self) {
        metrics::set_jobs_by_state(self.jobs.all().map(|r| r.state));
    }

    /// Picks up jobs written to the store by others (cluster submissions, a previous leader).
    async fn sync_store(&mut self) -> Result<(), CoordError> {
        let found = self.cfg.store.list().await?;
        let changed = self.jobs.adopt(found, self.clock.now_ms());
        self.persist_all(changed).await
    }

    #[allow(clippy::disallowed_methods)] // the actor is the shell: it reads the clock and hands it to the pure state machine
    async fn schedule(&mut self) -> Result<(), CoordError> {
        let members = self.cfg.membership.workers().await?;
        let now = std::time::Instant::now();
        for w in &members {
            self.last_seen.insert(w.node.clone(), now);
        }
        // A worker that left membership keeps its last time: its age grows until it returns.
        for (node, seen) in &self.last_seen {
            metrics::WORKER_HEARTBEAT_AGE
                .with_label_values(&[node.as_str()])
                .set(now.duration_since(*seen).as_secs_f64());
        }
        let free = self.free_slots(&members);
        let gpus: BTreeSet<NodeId> = members
            .iter()
            .filter(|w| w.gpu)
            .map(|w| w.node.clone())
            .collect();
        let queue = self.jobs.placeable(self.clock.now_ms());
        let demands: Vec<Demand> = queue.iter().map(|r| demand(r)).collect();
        let placements = place_on(&demands, &free, &gpus);
        for d in &demands {
            let reason = (!placements.iter().any(|p| p.job == d.job))
                .then(|| waiting_reason(d, &free, &gpus));
            if let Some(rec) = self.jobs.set_waiting(&d.job, reason) {
                self.persist(&rec).await?;
            }
        }
        for p in placements {
            let mut links = Vec::new();
            for node in &p.workers {
                if let Some(l) = self.links.get(node) {
                    links.push((node.clone(), l.clone()));
                    continue;
                }
                let Some(info) = members.iter().find(|m| &m.node == node) else {
                    continue;
                };
                match self.cfg.links.connect(info).await {
                    Ok(l) => {
                        self.links.insert(node.clone(), l.clone());
                        links.push((node.clone(), l));
                    }
                    Err(e) => warn!(%node, error = %e, "cannot reach worker"),
                }
            }
            let Some(rec) = self.jobs.get(&p.job).cloned() else {
                continue;
            };
            if links.len() < demand(&rec).min as usize || links.is_empty() {
                continue;
            }
            let devices = device_entries(&members, links.iter().map(|(n, _)| n));
            self.jobs.note_devices(&rec.id, devices);
            self.start(rec, links).await?;
        }
        self.offer_replacements(&members).await;
        self.update_gauges();
        Ok(())
    }

    /// Free slots per worker, counting the jobs running now (and workers offered to them).
    fn free_slots(&self, members: &[tributary_protocol::WorkerInfo]) -> BTreeMap<NodeId, u32> {
        members
            .iter()
            .map(|w| {
                let used = self
                    .running
                    .values()
                    .filter(|r| r.workers.contains(&w.node))
                    .count() as u32;
                (w.node.clone(), w.slots.saturating_sub(used))
            })
            .collect()
    }

    /// Offers free workers to running jobs that have fewer than they can use (a worker died
    /// and another registered); the driver takes them in at its next step boundary. Runs
    /// after placement, so queued jobs get free workers first.
    async fn offer_replacements(&mut self, members: &[tributary_protocol::WorkerInfo]) {
        self.recently_lost.retain(|_, t| t.elapsed() < REJOIN_AFTER);
        let mut free = self.free_slots(members);
        let ids: Vec<JobId> = self.running.keys().cloned().collect();
        for id in ids {
            for info in members {
                let Some(run) = self.running.get(&id) else {
                    break;
                };
                if run.workers.len() >= run.max
                    || run.workers.contains(&info.node)
                    || self.recently_lost.contains_key(&info.node)
                    || free.get(&info.node).copied().unwrap_or(0) == 0
                {
                    continue;
                }
                let link = match self.links.get(&info.node) {
                    Some(l) => l.clone(),
                    None => match self.cfg.links.connect(info).await {
                        Ok(l) => {
                            self.links.insert(info.node.clone(), l.clone());
                            l
                        }
                        Err(e) => {
                            warn!(node = %info.node, error = %e, "cannot reach worker");
                            continue;
                        }
                    },
                };
                if let Some(run) = self.running.get_mut(&id)
                    && run.joins.try_send((info.node.clone(), link)).is_ok()
                {
                    run.workers.push(info.node.clone());
                    // Written with the job's next progress record.
                    let devices = device_entries(members, [&info.node]);
                    self.jobs.note_devices(&id, devices);
                    if let Some(n) = free.get_mut(&info.node) {
                        *n = n.saturating_sub(1);
                    }
                    info!(job = %id, node = %info.node, "replacement worker offered");
                }
            }
        }
    }

    async fn start(
        &mut self,
        rec: JobRecord,
        links: Vec<(NodeId, Arc<dyn WorkerLink>)>,
    ) -> Result<(), CoordError> {
        let workers = links.iter().map(|(n, _)| n.clone()).collect();
        let Some(rec) = self.jobs.start(&rec.id, workers, self.clock.now_ms()) else {
            return Ok(());
        };
        self.persist(&rec).await?;
        info!(job = %rec.id, workers = ?rec.workers, "job placed");
        let (cancel, cancel_rx) = watch::channel(false);
        let (joins, joins_rx) = mpsc::channel(8);
        self.running.insert(
            rec.id.clone(),
            Running {
                cancel,
                workers: rec.workers.clone(),
                max: demand(&rec).max as usize,
                joins,
            },
        );
        let run = JobRun {
            job: rec.id.clone(),
            spec: rec.spec.clone(),
            fencing: self.cfg.fencing,
            workers: links,
            artifacts: self.cfg.artifacts.clone(),
            resume: rec.checkpoint.clone(),
            events: self.events.clone(),
            cancel: cancel_rx,
            joins: joins_rx,
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            let job = run.job.clone();
            let outcome = run.run().await;
            let _ = events.send(JobEvent::Done { job, outcome }).await;
        });
        Ok(())
    }

    /// Applies a driver event; returns an error when this leader has been fenced out.
    #[allow(clippy::disallowed_methods)] // the actor is the shell: it reads the clock and hands it to the pure state machine
    async fn on_event(&mut self, ev: JobEvent) -> Result<(), CoordError> {
        // The runtime side: which workers each running job holds, which links are dead.
        match &ev {
            JobEvent::Progress { job, workers, .. } => {
                if let Some(run) = self.running.get_mut(job) {
                    // Offered workers not yet taken in keep their place.
                    let pending: Vec<NodeId> = run
                        .workers
                        .iter()
                        .filter(|n| !workers.contains(n))
                        .cloned()
                        .collect();
                    run.workers = workers.clone();
                    run.workers.extend(pending);
                }
            }
            JobEvent::WorkerLost { job, node, .. } => {
                self.links.remove(node);
                self.recently_lost
                    .insert(node.clone(), std::time::Instant::now());
                if let Some(run) = self.running.get_mut(job) {
                    run.workers.retain(|n| n != node);
                }
            }
            JobEvent::Done { job, outcome } => {
                self.running.remove(job);
                if let JobOutcome::Requeue(why) | JobOutcome::Failed(why) = outcome {
                    warn!(%job, reason = %why, "job run ended without success");
                }
            }
            _ => {}
        }
        let done = matches!(ev, JobEvent::Done { .. });
        let recs = self.jobs.on_event(ev, self.clock.now_ms())?;
        self.persist_all(recs).await?;
        if done {
            self.update_gauges();
        }
        Ok(())
    }

    /// Acts on cancel requests filed in the store by any process.
    async fn sync_cancels(&mut self) -> Result<(), CoordError> {
        for id in self.cfg.store.cancel_requests().await? {
            match cancel(self, &id).await {
                Ok(()) | Err(CoordError::NoSuchJob(_)) | Err(CoordError::BadState { .. }) => {}
                Err(e) => return Err(e),
            }
            self.cfg.store.clear_cancel(&id).await?;
        }
        Ok(())
    }
}

impl Actor for CoordinatorActor {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = (CoordinatorConfig, CoordinatorOptions);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (cfg, opts): (CoordinatorConfig, CoordinatorOptions),
    ) -> Result<Self::State, ActorProcessingErr> {
        let (tx, mut rx) = mpsc::channel::<JobEvent>(256);
        let me = myself.clone();
        let forwarder = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if me.cast(CoordinatorMsg::Event(ev)).is_err() {
                    break;
                }
            }
        });
        let me = myself.clone();
        let period = cfg.tick;
        let ticker = tokio::spawn(async move {
            let mut iv = tokio::time::interval(period);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                if me.cast(CoordinatorMsg::Tick).is_err() {
                    break;
                }
            }
        });
        Ok(CoordinatorState {
            cfg,
            clock: opts.clock,
            jobs: Jobs::new(opts.retry),
            running: BTreeMap::new(),
            links: BTreeMap::new(),
            dirty: Default::default(),
            last_seen: BTreeMap::new(),
            recently_lost: BTreeMap::new(),
            events: tx,
            ticker: Some(ticker),
            forwarder: Some(forwarder),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for t in [state.ticker.take(), state.forwarder.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        for r in state.running.values() {
            let _ = r.cancel.send(true);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let result = match msg {
            CoordinatorMsg::Submit(spec, reply) => {
                let r = submit(state, spec).await;
                let _ = reply.send(r);
                state.schedule().await
            }
            CoordinatorMsg::Status(job, reply) => {
                let recs = match job {
                    Some(id) => state.jobs.get(&id).cloned().into_iter().collect(),
                    None => state.jobs.all().cloned().collect(),
                };
                let _ = reply.send(recs);
                Ok(())
            }
            CoordinatorMsg::Cancel(job, reply) => {
                let _ = reply.send(cancel(state, &job).await);
                Ok(())
            }
            CoordinatorMsg::Tick => match state.flush_dirty().await.and(state.sync_store().await) {
                Ok(()) => match state.sync_cancels().await {
                    Ok(()) => state.schedule().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            CoordinatorMsg::Event(ev) => state.on_event(ev).await,
        };
        match result {
            Err(e @ (CoordError::Fenced { .. } | CoordError::NotLeader(_))) => {
                warn!(error = %e, "stepping down");
                myself.stop(Some(e.to_string()));
            }
            // Store or membership trouble (etcd restarting): keep going, retry on next tick.
            Err(e) => warn!(error = %e, "coordinator tick failed; will retry"),
            Ok(()) => {}
        }
        Ok(())
    }
}

async fn submit(state: &mut CoordinatorState, spec: JobSpec) -> Result<JobId, CoordError> {
    let rec = state.jobs.submit(spec, state.clock.now_ms())?;
    state.persist(&rec).await?;
    Ok(rec.id)
}

async fn cancel(state: &mut CoordinatorState, job: &JobId) -> Result<(), CoordError> {
    match state.jobs.cancel(job, state.clock.now_ms())? {
        Effect::Persist(rec) => state.persist(&rec).await,
        Effect::StopRun(id) => {
            if let Some(r) = state.running.get(&id) {
                let _ = r.cancel.send(true);
            }
            Ok(())
        }
    }
}

/// Spawns a coordinator actor.
pub async fn spawn_coordinator(
    cfg: CoordinatorConfig,
) -> Result<(ActorRef<CoordinatorMsg>, tokio::task::JoinHandle<()>), CoordError> {
    spawn_coordinator_with(cfg, CoordinatorOptions::default()).await
}

/// Spawns a coordinator actor with the given retry policy and clock.
pub async fn spawn_coordinator_with(
    cfg: CoordinatorConfig,
    opts: CoordinatorOptions,
) -> Result<(ActorRef<CoordinatorMsg>, tokio::task::JoinHandle<()>), CoordError> {
    Actor::spawn(None, CoordinatorActor, (cfg, opts))
        .await
        .map_err(|e| CoordError::Actor(e.to_string()))
}

/// `(node, device)` entries of a job record for these workers, from their membership
/// records: the device they advertise, marked ` [gpu]` when it is a hardware GPU.
fn device_entries<'a>(
    members: &[tributary_protocol::WorkerInfo],
    nodes: impl IntoIterator<Item = &'a NodeId>,
) -> Vec<(String, String)> {
    nodes
        .into_iter()
        .filter_map(|n| members.iter().find(|m| &m.node == n))
        .map(|m| {
            let gpu = if m.gpu { " [gpu]" } else { "" };
            (m.node.to_string(), format!("{}{gpu}", m.device))
        })
        .collect()
}
