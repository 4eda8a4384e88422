//! The data-parallel step loop for one job on its workers: send each worker its shard of
//! micro-batches, gather the gradients, reduce them in fixed order, broadcast the update;
//! re-shard a step's missing micro-batches over the remaining workers when one dies;
//! checkpoint every N steps. The decisions (sharding, reduction) are the pure functions in
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

use crate::error::CoordError;
use crate::metrics;
use crate::progress::{Progress, progress};
use crate::reduce::{Contribution, reduce_in_order};
use crate::sharding::{assign, global_batch};
use crate::store::{Checkpoint, JobStore};

/// How long checkpoint writes are retried while the store is down.
pub const STORE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What the driver reports to the coordinator actor.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
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
        adapter_digest: Digest,
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
    pub total_steps: u64,
    pub fencing: u64,
    pub workers: Vec<(NodeId, Arc<dyn WorkerLink>)>,
    pub store: Arc<dyn JobStore>,
    pub events: mpsc::Sender<JobEvent>,
    pub cancel: watch::Receiver<bool>,
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

    async fn lose(
        &self,
        live: &mut Vec<(NodeId, Arc<dyn WorkerLink>)>,
        node: &NodeId,
        why: String,
    ) {
        warn!(job = %self.job, %node, reason = %why, "worker lost; re-sharding over the rest");
        live.retain(|(n, _)| n != node);
        let _ = self
            .events
            .send(JobEvent::WorkerLost {
                job: self.job.clone(),
                node: node.clone(),
                reason: why,
            })
            .await;
    }

    /// Runs the job to an outcome.
    pub async fn run(self) -> JobOutcome {
        let span = info_span!("job", job = %self.job);

        self.run_inner().instrument(span).await
    }

    async fn run_inner(&self) -> JobOutcome {
        let mut live = self.workers.clone();
        let spec_json = match self.spec.to_json() {
            Ok(j) => j,
            Err(e) => return JobOutcome::Failed(e.to_string()),
        };
        let resume = match self.store.checkpoint(&self.job).await {
            Ok(c) => c,
            Err(e) => return JobOutcome::Failed(e.to_string()),
        };
        // Load the job (and its checkpoint) everywhere.
        let mut start_cmds = vec![CommandBody::Start { spec_json }];
        if let Some(cp) = &resume {
            start_cmds.push(CommandBody::Restore {
                step: cp.step,
                state: cp.state.clone(),
            });
        }
        for body in start_cmds {
            if let Err(o) = self.broadcast(&mut live, body, Vec::new()).await {
                return o;
            }
        }
        let start_step = resume.as_ref().map_or(0, |c| c.step);
        info!(
            start_step,
            total = self.total_steps,
            workers = live.len(),
            "job running"
        );
        let started = Instant::now();
        let mut tokens_total = 0u64;
        let mut last_loss = None;
        for step in start_step..self.total_steps {
            if *self.cancel.borrow() {
                return JobOutcome::Cancelled;
            }
            let t0 = Instant::now();
            let batch = global_batch(&self.spec, step);
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
            tokens_total += reduced.tokens;
            last_loss = Some(reduced.loss);
            metrics::TRAIN_TOKENS.inc_by(reduced.tokens);
            metrics::STEP_SECONDS.observe(t0.elapsed().as_secs_f64());
            let done = step + 1;
            let every = self.spec.train.checkpoint_every.unwrap_or(u64::MAX);
            if done % every == 0
                && done < self.total_steps
                && let Err(o) = self.save_checkpoint(&mut live).await
            {
                return o;
            }
            let p = progress(
                done,
                self.total_steps,
                start_step,
                last_loss,
                tokens_total,
                started.elapsed().as_secs_f64(),
            );
            let _ = self
                .events
                .send(JobEvent::Progress {
                    job: self.job.clone(),
                    progress: p,
                    workers: live.iter().map(|(n, _)| n.clone()).collect(),
                })
                .await;
        }
        let cp = match self.save_checkpoint(&mut live).await {
            Ok(cp) => cp,
            Err(o) => return o,
        };
        let _ = self
            .broadcast(&mut live, CommandBody::Stop, Vec::new())
            .await;
        JobOutcome::Succeeded {
            adapter_digest: Digest::of(&cp.state),
            steps: self.total_steps,
            final_loss: last_loss,
        }
    }

    /// Sends `body` to every live worker; drops the unreachable ones.
    async fn broadcast(
        &self,
        live: &mut Vec<(NodeId, Arc<dyn WorkerLink>)>,
        body: CommandBody,
        tensors: Vec<Vec<f32>>,
    ) -> Result<(), JobOutcome> {
        let calls = live.iter().map(|(n, link)| {
            let mut cmd = self.cmd(body.clone());
            cmd.tensors = tensors.clone();
            async move { (n.clone(), call(link.as_ref(), cmd).await) }
        });
        for (node, r) in join_all(calls).await {
            match r {
                Ok(_) => {}
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
        Ok(())
    }

    /// Computes every micro-batch of a step, re-dealing the ones a lost worker held.
    async fn gather(
        &self,
        live: &mut Vec<(NodeId, Arc<dyn WorkerLink>)>,
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

    /// Stores a checkpoint, retrying while the store is unreachable (etcd restarting).
    async fn store_checkpoint(&self, cp: &Checkpoint) -> Result<(), JobOutcome> {
        let deadline = Instant::now() + STORE_RETRY_FOR;
        loop {
            match self.store.put_checkpoint(&self.job, cp).await {
                Ok(()) => return Ok(()),
                Err(CoordError::NotLeader(why)) => {
                    return Err(JobOutcome::Fenced {
                        token: self.fencing,
                        highest: 0,
                    })
                    .inspect_err(|_| warn!(reason = %why, "lost leadership while checkpointing"));
                }
                Err(e) if Instant::now() < deadline => {
                    warn!(error = %e, "checkpoint store unavailable; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => return Err(JobOutcome::Failed(format!("saving checkpoint: {e}"))),
            }
        }
    }

    /// Takes a checkpoint from the first live worker that answers and stores it.
    async fn save_checkpoint(
        &self,
        live: &mut Vec<(NodeId, Arc<dyn WorkerLink>)>,
    ) -> Result<Checkpoint, JobOutcome> {
        while let Some((node, link)) = live.first().cloned() {
            match call(link.as_ref(), self.cmd(CommandBody::Checkpoint)).await {
                Ok(Payload {
                    msg: Reply::Checkpoint { step, state },
                    ..
                }) => {
                    let cp = Checkpoint { step, state };
                    self.store_checkpoint(&cp).await?;
                    return Ok(cp);
                }
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
}
