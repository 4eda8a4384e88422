//! The data-parallel step loop for one job on its workers: send each worker its shard of
//! micro-batches, gather the gradients, reduce them in fixed order, broadcast the update;
//! re-shard a step's missing micro-batches over the remaining workers when one dies; take in
//! replacement workers at step boundaries; checkpoint every N steps to object storage; at the
//! end export the adapter and register it. The decisions (sharding, reduction) are the pure functions in
//! [`crate::sharding`] and [`crate::reduce`]; this module only does the I/O around them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};
use tributary_protocol::link::WorkerLink;
use tributary_protocol::{
    Command, CommandBody, Digest, JobId, JobSpec, MicroBatch, NodeId, Payload, Reply,
};

use crate::artifacts::{Artifacts, CheckpointRef};

mod history;
mod register;
use crate::metrics;
use crate::progress::Progress;
use crate::reduce::{Contribution, reduce_in_order};
use crate::sharding::assign;
use tributary_model::train::driver::{Action, Driver, RunPlan, StepOutput, Steps};

/// How long checkpoint and adapter writes are retried while the store is down.
pub const STORE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What the driver reports to the coordinator actor.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// Every worker loaded the job: the dataset size fixes the step count.
    Loaded {
        job: JobId,
        total_steps: u64,
        examples: u64,
        base_model: Digest,
        data: Digest,
    },
    /// A checkpoint object was written: the record's pointer may move to it.
    Checkpointed {
        job: JobId,
        checkpoint: CheckpointRef,
    },
    /// A line for the job's log.
    Log {
        job: JobId,
        msg: String,
    },
    Progress {
        job: JobId,
        progress: Progress,
        workers: Vec<NodeId>,
    },
    WorkerLost {
        job: JobId,
        node: NodeId,
        reason: String,
    },
    Done {
        job: JobId,
        outcome: JobOutcome,
    },
}

/// How a run of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Succeeded {
        /// Digest of the adapter's files (see `tributary_ledger::adapters::adapter_digest`).
        adapter_digest: Digest,
        /// Where the adapter's files are.
        adapter: String,
        steps: u64,
        final_loss: Option<f32>,
    },
    Failed(String),
    Cancelled,
    /// Every worker was lost: queue again and resume from the last checkpoint.
    Requeue(String),
    /// A worker refused our fencing token: another leader is active.
    Fenced {
        token: u64,
        highest: u64,
    },
}

/// Everything a run needs.
pub struct JobRun {
    pub job: JobId,
    pub spec: JobSpec,
    pub fencing: u64,
    pub workers: Vec<(NodeId, Arc<dyn WorkerLink>)>,
    /// Where checkpoints and the adapter go.
    pub artifacts: Artifacts,
    /// The checkpoint to resume from.
    pub resume: Option<CheckpointRef>,
    pub events: mpsc::Sender<JobEvent>,
    pub cancel: watch::Receiver<bool>,
    /// Replacement workers offered by the coordinator; taken in at a step boundary.
    pub joins: mpsc::Receiver<(NodeId, Arc<dyn WorkerLink>)>,
}

type Live = Vec<(NodeId, Arc<dyn WorkerLink>)>;

/// What the workers loaded (they must agree).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Loaded {
    examples: u64,
    base_model: Digest,
    data: Digest,
}

enum CallError {
    /// The worker is unreachable: drop it.
    Lost(String),
    /// The worker answered with a failure: the job fails.
    Failed(String),
    Fenced {
        token: u64,
        highest: u64,
    },
}

async fn call(link: &dyn WorkerLink, cmd: Payload<Command>) -> Result<Payload<Reply>, CallError> {
    match link.call(cmd).await {
        Err(e) => Err(CallError::Lost(e.to_string())),
        Ok(p) => match p.msg {
            Reply::Refused { token, highest } => Err(CallError::Fenced { token, highest }),
            Reply::Failed { reason } => Err(CallError::Failed(reason)),
            _ => Ok(p),
        },
    }
}

impl JobRun {
    fn cmd(&self, body: CommandBody) -> Payload<Command> {
        Payload::bare(Command {
            fencing: self.fencing,
            job: self.job.clone(),
            body,
        })
    }

    async fn emit(&self, ev: JobEvent) {
        let _ = self.events.send(ev).await;
    }

    async fn log(&self, msg: String) {
        self.emit(JobEvent::Log {
            job: self.job.clone(),
            msg,
        })
        .await;
    }

    async fn lose(&self, live: &mut Live, node: &NodeId, why: String) {
        warn!(job = %self.job, %node, reason = %why, "worker lost; re-sharding over the rest");
        live.retain(|(n, _)| n != node);
        self.log(format!("worker {node} lost: {why}")).await;
        self.emit(JobEvent::WorkerLost {
            job: self.job.clone(),
            node: node.clone(),
            reason: why,
        })
        .await;
    }

    /// Runs the job to an outcome.
    pub async fn run(mut self) -> JobOutcome {
        let span = info_span!("job", job = %self.job);
        let mut joins = std::mem::replace(&mut self.joins, mpsc::channel(1).1);
        self.run_inner(&mut joins).instrument(span).await
    }

    /// Loads the job on `workers` (and the checkpoint `state` at `step`, if any); returns
    /// what they loaded. Workers that cannot be reached are dropped from `workers`.
    async fn load(
        &self,
        workers: &mut Live,
        resume: Option<(u64, &[u8])>,
    ) -> Result<Option<Loaded>, JobOutcome> {
        let spec_json = self
            .spec
            .to_json()
            .map_err(|e| JobOutcome::Failed(e.to_string()))?;
        let replies = self
            .broadcast(workers, CommandBody::Start { spec_json }, Vec::new())
            .await?;
        let mut loaded: Option<Loaded> = None;
        for (node, reply) in replies {
            let Reply::Loaded {
                examples,
                base_model,
                data,
            } = reply
            else {
                return Err(JobOutcome::Failed(format!(
                    "{node}: unexpected reply to start: {reply:?}"
                )));
            };
            let this = Loaded {
                examples,
                base_model,
                data,
            };
            match loaded {
                None => loaded = Some(this),
                Some(first) if first != this => {
                    return Err(JobOutcome::Failed(format!(
                        "{node} loaded other data or another base model than its peers \
                         ({examples} examples, base {base_model}, data {data}; the others: \
                         {} examples, base {}, data {})",
                        first.examples, first.base_model, first.data
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some((step, state)) = resume {
            self.broadcast(
                workers,
                CommandBody::Restore {
                    step,
                    state: state.to_vec(),
                },
                Vec::new(),
            )
            .await?;
        }
        Ok(loaded)
    }

    #[allow(clippy::disallowed_methods)] // times steps and bounds store retries in real time
    async fn run_inner(
        &self,
        joins: &mut mpsc::Receiver<(NodeId, Arc<dyn WorkerLink>)>,
    ) -> JobOutcome {
        let mut live = self.workers.clone();
        let state = match &self.resume {
            Some(cp) => match self.with_retry(|| self.artifacts.load_checkpoint(cp)).await {
                Ok(s) => Some(s),
                Err(o) => return o,
            },
            None => None,
        };
        let resume = self
            .resume
            .as_ref()
            .zip(state.as_deref())
            .map(|(c, s)| (c.step, s));
        let loaded = match self.load(&mut live, resume).await {
            Ok(Some(l)) => l,
            Ok(None) => return JobOutcome::Requeue("every worker was lost".into()),
            Err(o) => return o,
        };
        let steps = match (self.spec.train.steps, self.spec.train.epochs) {
            (Some(s), _) => Steps::Fixed(s),
            (None, e) => Steps::Epochs(u64::from(e.unwrap_or(1))),
        };
        let (train_examples, eval_examples) = self.spec.eval_split(loaded.examples);
        let mut plan = match RunPlan::new(
            train_examples,
            self.spec.micro_batch_size(),
            self.spec.micro_batches(),
            steps,
        ) {
            Ok(p) => p,
            Err(e) => return JobOutcome::Failed(e.to_string()),
        };
        plan.checkpoint_every = self.spec.train.checkpoint_every;
        let total_steps = plan.total_steps;
        self.emit(JobEvent::Loaded {
            job: self.job.clone(),
            total_steps,
            examples: loaded.examples,
            base_model: loaded.base_model,
            data: loaded.data,
        })
        .await;
        let start_step = resume.map_or(0, |(s, _)| s);
        if start_step > 0 {
            self.log(format!("resumed from the checkpoint at step {start_step}"))
                .await;
        }
        info!(
            start_step,
            total = total_steps,
            workers = live.len(),
            "job running"
        );
        // The one training loop's decisions (tributary_model::train::driver); this loop only
        // carries them out over the network.
        let mut driver = Driver::new(plan, start_step);
        let mut history = self
            .start_history(start_step, eval_examples, total_steps)
            .await;
        if let Err(o) = self.maybe_eval(&mut live, &mut history, start_step).await {
            return o;
        }
        loop {
            let (step, micro) = match driver.next_action() {
                Action::Finish => break,
                // Jobs have no held-out split.
                Action::Eval { .. } => {
                    driver.eval_done(None);
                    continue;
                }
                Action::Checkpoint { .. } => {
                    if let Err(o) = self.save_checkpoint(&mut live).await {
                        return o;
                    }
                    continue;
                }
                Action::Step { step, micro } => (step, micro),
            };
            if *self.cancel.borrow() {
                let _ = self
                    .broadcast(&mut live, CommandBody::Stop, Vec::new())
                    .await;
                return JobOutcome::Cancelled;
            }
            if let Err(o) = self.take_in(&mut live, joins, step).await {
                return o;
            }
            let t0 = Instant::now();
            let batch: Vec<MicroBatch> = micro
                .iter()
                .map(|m| MicroBatch {
                    index: m.index,
                    start: m.start,
                    len: m.len,
                })
                .collect();
            let parts = match self.gather(&mut live, step, &batch).await {
                Ok(p) => p,
                Err(o) => return o,
            };
            let reduced = match reduce_in_order(parts, batch.len() as u32) {
                Ok(r) => r,
                Err(e) => return JobOutcome::Failed(format!("step {step}: {e}")),
            };
            if let Err(o) = self
                .broadcast(
                    &mut live,
                    CommandBody::Apply {
                        step,
                        tokens: reduced.tokens,
                    },
                    vec![reduced.grads],
                )
                .await
            {
                return o;
            }
            metrics::TRAIN_TOKENS.inc_by(reduced.tokens);
            let secs = t0.elapsed().as_secs_f64();
            metrics::STEP_SECONDS.observe(secs);
            let out = StepOutput {
                loss: reduced.loss,
                tokens: reduced.tokens,
                ..StepOutput::default()
            };
            let p = Progress::from(driver.step_done(&out, secs));
            self.record_train(&mut history, step + 1, reduced.loss)
                .await;
            if let Err(o) = self.maybe_eval(&mut live, &mut history, step + 1).await {
                return o;
            }
            self.emit(JobEvent::Progress {
                job: self.job.clone(),
                progress: p,
                workers: live.iter().map(|(n, _)| n.clone()).collect(),
            })
            .await;
        }
        let last_loss = driver.summary().final_loss;
        self.flush_history(&mut history, true).await;
        if let Err(o) = self.save_checkpoint(&mut live).await {
            return o;
        }
        let outcome = self
            .register(&mut live, loaded, total_steps, last_loss)
            .await;
        let _ = self
            .broadcast(&mut live, CommandBody::Stop, Vec::new())
            .await;
        outcome
    }

    /// Takes in replacement workers before `step`: each loads the job and the live workers'
    /// current state, so it computes exactly what they would.
    async fn take_in(
        &self,
        live: &mut Live,
        joins: &mut mpsc::Receiver<(NodeId, Arc<dyn WorkerLink>)>,
        step: u64,
    ) -> Result<(), JobOutcome> {
        let max = self.spec.micro_batches().max(1) as usize;
        while live.len() < max {
            let Ok((node, link)) = joins.try_recv() else {
                return Ok(());
            };
            if live.iter().any(|(n, _)| n == &node) {
                continue;
            }
            let state = match self.checkpoint_state(live).await? {
                (s, _) if s != step => {
                    return Err(JobOutcome::Failed(format!(
                        "state at step {s} while taking in {node} before step {step}"
                    )));
                }
                (_, state) => state,
            };
            let mut newcomer = vec![(node.clone(), link)];
            match self.load(&mut newcomer, Some((step, &state))).await {
                Ok(Some(_)) if !newcomer.is_empty() => {
                    info!(%node, step, "replacement worker joined");
                    self.log(format!("worker {node} joined at step {step}"))
                        .await;
                    live.extend(newcomer);
                }
                // A newcomer that cannot load is not a reason to stop the job.
                Ok(_) | Err(JobOutcome::Requeue(_)) | Err(JobOutcome::Failed(_)) => {
                    warn!(%node, "replacement worker could not load the job");
                }
                Err(o) => return Err(o),
            }
        }
        Ok(())
    }

    /// Sends `body` to every live worker; drops the unreachable ones; returns the replies.
    async fn broadcast(
        &self,
        live: &mut Live,
        body: CommandBody,
        tensors: Vec<Vec<f32>>,
    ) -> Result<Vec<(NodeId, Reply)>, JobOutcome> {
        let calls = live.iter().map(|(n, link)| {
            let mut cmd = self.cmd(body.clone());
            cmd.tensors = tensors.clone();
            async move { (n.clone(), call(link.as_ref(), cmd).await) }
        });
        let mut replies = Vec::new();
        for (node, r) in join_all(calls).await {
            match r {
                Ok(p) => replies.push((node, p.msg)),
                Err(CallError::Lost(why)) => self.lose(live, &node, why).await,
                Err(CallError::Failed(why)) => {
                    return Err(JobOutcome::Failed(format!("{node}: {why}")));
                }
                Err(CallError::Fenced { token, highest }) => {
                    return Err(JobOutcome::Fenced { token, highest });
                }
            }
        }
        if live.is_empty() {
            return Err(JobOutcome::Requeue("every worker was lost".into()));
        }
        Ok(replies)
    }

    /// Computes every micro-batch of a step, re-dealing the ones a lost worker held.
    async fn gather(
        &self,
        live: &mut Live,
        step: u64,
        batch: &[MicroBatch],
    ) -> Result<Vec<Contribution>, JobOutcome> {
        let mut got: BTreeMap<u32, Contribution> = BTreeMap::new();
        loop {
            let missing: Vec<MicroBatch> = batch
                .iter()
                .filter(|m| !got.contains_key(&m.index))
                .copied()
                .collect();
            if missing.is_empty() {
                return Ok(got.into_values().collect());
            }
            if live.is_empty() {
                return Err(JobOutcome::Requeue("every worker was lost".into()));
            }
            let shards = assign(&missing, live.len());
            let calls = live.iter().zip(shards).filter(|(_, s)| !s.is_empty()).map(
                |((node, link), shard)| {
                    let cmd = self.cmd(CommandBody::Gradients {
                        step,
                        micro_batches: shard,
                    });
                    async move { (node.clone(), call(link.as_ref(), cmd).await) }
                },
            );
            for (node, r) in join_all(calls).await {
                match r {
                    Ok(Payload {
                        msg: Reply::Gradients { results },
                        tensors,
                    }) if results.len() == tensors.len() => {
                        for (res, grads) in results.into_iter().zip(tensors) {
                            got.insert(
                                res.index,
                                Contribution {
                                    index: res.index,
                                    loss_sum: res.loss_sum,
                                    tokens: res.tokens,
                                    grads,
                                },
                            );
                        }
                    }
                    Ok(other) => {
                        return Err(JobOutcome::Failed(format!(
                            "{node}: unexpected reply to gradients: {:?}",
                            other.msg
                        )));
                    }
                    Err(CallError::Lost(why)) => self.lose(live, &node, why).await,
                    Err(CallError::Failed(why)) => {
                        return Err(JobOutcome::Failed(format!("{node}: {why}")));
                    }
                    Err(CallError::Fenced { token, highest }) => {
                        return Err(JobOutcome::Fenced { token, highest });
                    }
                }
            }
        }
    }

    /// Retries a store operation while the store is unreachable, up to [`STORE_RETRY_FOR`].
    #[allow(clippy::disallowed_methods)] // times steps and bounds store retries in real time
    async fn with_retry<T, F, Fut>(&self, mut op: F) -> Result<T, JobOutcome>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::error::CoordError>>,
    {
        let deadline = Instant::now() + STORE_RETRY_FOR;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, "object store unavailable; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(JobOutcome::Failed(e.to_string())),
            }
        }
    }

    /// Asks the first live worker that answers for its `(step, state)`.
    async fn checkpoint_state(&self, live: &mut Live) -> Result<(u64, Vec<u8>), JobOutcome> {
        while let Some((node, link)) = live.first().cloned() {
            match call(link.as_ref(), self.cmd(CommandBody::Checkpoint)).await {
                Ok(Payload {
                    msg: Reply::Checkpoint { step, state },
                    ..
                }) => return Ok((step, state)),
                Ok(other) => {
                    return Err(JobOutcome::Failed(format!(
                        "{node}: unexpected reply to checkpoint: {:?}",
                        other.msg
                    )));
                }
                Err(CallError::Lost(why)) => self.lose(live, &node, why).await,
                Err(CallError::Failed(why)) => return Err(JobOutcome::Failed(why)),
                Err(CallError::Fenced { token, highest }) => {
                    return Err(JobOutcome::Fenced { token, highest });
                }
            }
        }
        Err(JobOutcome::Requeue("every worker was lost".into()))
    }

    /// Takes a checkpoint, writes it to object storage, then tells the coordinator to move
    /// the record's pointer to it.
    async fn save_checkpoint(&self, live: &mut Live) -> Result<CheckpointRef, JobOutcome> {
        let (step, state) = self.checkpoint_state(live).await?;
        let cp = self
            .with_retry(|| {
                self.artifacts
                    .save_checkpoint(&self.job, step, state.clone())
            })
            .await?;
        self.log(format!(
            "checkpoint at step {step}: {} ({} bytes)",
            cp.key, cp.bytes
        ))
        .await;
        self.emit(JobEvent::Checkpointed {
            job: self.job.clone(),
            checkpoint: cp.clone(),
        })
        .await;
        Ok(cp)
    }
}
