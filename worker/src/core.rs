//! The worker's logic as plain synchronous code: fencing and command handling over the jobs
//! it holds. The actor in [`crate::actor`] is a thin shell around [`WorkerCore::handle`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};
use tributary_protocol::{
    Command, CommandBody, JobId, JobSpec, MicroResult, NodeId, Payload, Reply,
};

use crate::executor::{ExecutorFactory, ShardExecutor};

/// Fencing rule: a token lower than the highest seen is refused; otherwise it becomes the
/// highest seen. Returns the new highest, or `Err(highest)`.
pub fn fence(highest: u64, token: u64) -> Result<u64, u64> {
    if token < highest {
        Err(highest)
    } else {
        Ok(token)
    }
}

struct JobSlot {
    exec: Box<dyn ShardExecutor>,
    /// Next step to train (steps applied so far).
    step: u64,
}

/// A worker's jobs and the highest fencing token it has seen.
pub struct WorkerCore {
    node: NodeId,
    /// Shared with the cores a supervisor restarts in this one's place, so a restart never
    /// forgets the highest fencing token seen.
    highest_seen: Arc<AtomicU64>,
    highest: u64,
    factory: Arc<dyn ExecutorFactory>,
    jobs: BTreeMap<JobId, JobSlot>,
}

impl std::fmt::Debug for WorkerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCore")
            .field("node", &self.node)
            .field("highest", &self.highest)
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn failed(reason: impl Into<String>) -> Payload<Reply> {
    Payload::bare(Reply::Failed {
        reason: reason.into(),
    })
}

impl WorkerCore {
    pub fn new(node: NodeId, factory: Arc<dyn ExecutorFactory>) -> Self {
        Self {
            node,
            highest_seen: Arc::new(AtomicU64::new(0)),
            highest: 0,
            factory,
            jobs: BTreeMap::new(),
        }
    }

    /// A core for the same node with no jobs, the same factory and the same fencing
    /// high-water mark (what a supervisor restarts after a crash).
    pub fn fresh(&self) -> Self {
        let highest = self.highest_seen.load(Ordering::SeqCst);
        Self {
            node: self.node.clone(),
            highest_seen: self.highest_seen.clone(),
            highest,
            factory: self.factory.clone(),
            jobs: BTreeMap::new(),
        }
    }

    /// The node's name.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The highest fencing token seen so far.
    pub fn highest_token(&self) -> u64 {
        self.highest
    }

    /// Jobs loaded now.
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Handles one command: fencing first, then the body. Counts it in the metrics.
    pub fn handle(&mut self, cmd: Payload<Command>) -> Payload<Reply> {
        let kind = command_name(&cmd.msg.body);
        let reply = self.handle_inner(cmd);
        let outcome = match &reply.msg {
            Reply::Refused { .. } => "refused",
            Reply::Failed { .. } => "failed",
            Reply::Gradients { results } => {
                crate::metrics::MICRO_BATCHES.inc_by(results.len() as u64);
                "ok"
            }
            _ => "ok",
        };
        crate::metrics::COMMANDS
            .with_label_values(&[kind, outcome])
            .inc();
        crate::metrics::JOBS_LOADED.set(self.jobs.len() as i64);
        reply
    }

    fn handle_inner(&mut self, cmd: Payload<Command>) -> Payload<Reply> {
        let Payload { msg, tensors } = cmd;
        self.highest = self.highest.max(self.highest_seen.load(Ordering::SeqCst));
        match fence(self.highest, msg.fencing) {
            Ok(h) => {
                self.highest = h;
                self.highest_seen.fetch_max(h, Ordering::SeqCst);
            }
            Err(highest) => {
                warn!(node = %self.node, token = msg.fencing, highest, job = %msg.job, "refused a stale leader's command");
                return Payload::bare(Reply::Refused {
                    token: msg.fencing,
                    highest,
                });
            }
        }
        let job = msg.job;
        match msg.body {
            CommandBody::Ping => Payload::bare(Reply::Pong {
                highest: self.highest,
                node: self.node.clone(),
            }),
            CommandBody::Start { spec_json } => {
                let spec = match JobSpec::from_json_str(&spec_json) {
                    Ok(s) => s,
                    Err(e) => return failed(e.to_string()),
                };
                match self.factory.create(&spec) {
                    Ok(exec) => {
                        debug!(node = %self.node, %job, "job loaded");
                        let src = exec.sources();
                        self.jobs.insert(job, JobSlot { exec, step: 0 });
                        Payload::bare(Reply::Loaded {
                            examples: src.examples,
                            base_model: src.base_model,
                            data: src.data,
                        })
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            CommandBody::Stop => {
                self.jobs.remove(&job);
                Payload::bare(Reply::Ok { step: 0 })
            }
            body => {
                let Some(slot) = self.jobs.get_mut(&job) else {
                    return failed(format!("job {job} is not loaded on {}", self.node));
                };
                Self::job_command(slot, body, tensors)
            }
        }
    }

    fn job_command(
        slot: &mut JobSlot,
        body: CommandBody,
        tensors: Vec<Vec<f32>>,
    ) -> Payload<Reply> {
        match body {
            CommandBody::Gradients {
                step,
                micro_batches,
            } => {
                if step != slot.step {
                    return failed(format!(
                        "gradients asked for step {step}, the job is at step {}",
                        slot.step
                    ));
                }
                let mut results = Vec::with_capacity(micro_batches.len());
                let mut grads = Vec::with_capacity(micro_batches.len());
                for mb in &micro_batches {
                    match slot.exec.gradients(step, mb) {
                        Ok(g) => {
                            results.push(MicroResult {
                                index: mb.index,
                                loss_sum: g.loss_sum,
                                tokens: g.tokens,
                            });
                            grads.push(g.grads);
                        }
                        Err(e) => return failed(e.to_string()),
                    }
                }
                Payload {
                    msg: Reply::Gradients { results },
                    tensors: grads,
                }
            }
            CommandBody::Apply { step, tokens } => {
                if step != slot.step {
                    return failed(format!(
                        "update for step {step}, the job is at step {}",
                        slot.step
                    ));
                }
                let [reduced] = <[Vec<f32>; 1]>::try_from(tensors).unwrap_or_else(|_| [Vec::new()]);
                match slot.exec.apply(step, &reduced, tokens) {
                    Ok(()) => {
                        slot.step = step + 1;
                        Payload::bare(Reply::Ok { step: slot.step })
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            CommandBody::Checkpoint => match slot.exec.checkpoint() {
                Ok(state) => Payload::bare(Reply::Checkpoint {
                    step: slot.step,
                    state,
                }),
                Err(e) => failed(e.to_string()),
            },
            CommandBody::EvalLoss => match slot.exec.eval_loss() {
                Ok(Some((loss, examples))) => Payload::bare(Reply::EvalLoss {
                    loss: Some(loss),
                    examples,
                }),
                Ok(None) => Payload::bare(Reply::EvalLoss {
                    loss: None,
                    examples: 0,
                }),
                Err(e) => failed(e.to_string()),
            },
            CommandBody::Export => match slot.exec.export() {
                Ok(files) => Payload::bare(Reply::Files { files }),
                Err(e) => failed(e.to_string()),
            },
            CommandBody::Restore { step, state } => match slot.exec.restore(&state) {
                Ok(()) => {
                    slot.step = step;
                    Payload::bare(Reply::Ok { step })
                }
                Err(e) => failed(e.to_string()),
            },
            CommandBody::Start { .. } | CommandBody::Stop | CommandBody::Ping => {
                failed("internal: job command routed wrongly")
            }
        }
    }
}

/// A command's name for the metrics' `command` label.
fn command_name(body: &CommandBody) -> &'static str {
    match body {
        CommandBody::Start { .. } => "start",
        CommandBody::Gradients { .. } => "gradients",
        CommandBody::Apply { .. } => "apply",
        CommandBody::Checkpoint => "checkpoint",
        CommandBody::Restore { .. } => "restore",
        CommandBody::Stop => "stop",
        CommandBody::Ping => "ping",
        CommandBody::Export => "export",
        CommandBody::EvalLoss => "eval_loss",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::LinearFactory;
    use tributary_protocol::MicroBatch;

    fn cmd(fencing: u64, body: CommandBody) -> Payload<Command> {
        Payload::bare(Command {
            fencing,
            job: JobId::new("job-1").unwrap(),
            body,
        })
    }

    fn spec_json() -> String {
        JobSpec::from_toml_str(
            "base_model = \"builtin:linear\"\ndata = \"x\"\n[train]\nsteps = 3\nbatch_size = 4\nlr = 0.1\n",
        )
        .unwrap()
        .to_json()
        .unwrap()
    }

    #[test]
    fn fence_refuses_lower_tokens_only() {
        assert_eq!(fence(5, 5), Ok(5));
        assert_eq!(fence(5, 9), Ok(9));
        assert_eq!(fence(5, 4), Err(5));
    }

    #[test]
    fn stale_token_is_refused_after_a_newer_leader_spoke() {
        let mut core = WorkerCore::new(NodeId::new("w1").unwrap(), Arc::new(LinearFactory));
        assert!(matches!(
            core.handle(cmd(7, CommandBody::Ping)).msg,
            Reply::Pong { highest: 7, .. }
        ));
        let r = core.handle(cmd(
            3,
            CommandBody::Start {
                spec_json: spec_json(),
            },
        ));
        assert_eq!(
            r.msg,
            Reply::Refused {
                token: 3,
                highest: 7
            }
        );
        assert_eq!(core.job_count(), 0, "a refused command must have no effect");
    }

    #[test]
    fn commands_run_the_executor_in_step_order() {
        let mut core = WorkerCore::new(NodeId::new("w1").unwrap(), Arc::new(LinearFactory));
        assert_eq!(
            core.handle(cmd(
                1,
                CommandBody::Start {
                    spec_json: spec_json()
                }
            ))
            .msg,
            Reply::Loaded {
                examples: crate::toy::EXAMPLES,
                base_model: tributary_protocol::Digest::of(b"builtin:linear"),
                data: tributary_protocol::Digest::of(b"builtin:linear examples=1024 seed=0"),
            }
        );
        let mbs = vec![
            MicroBatch {
                index: 0,
                start: 0,
                len: 2,
            },
            MicroBatch {
                index: 1,
                start: 2,
                len: 2,
            },
        ];
        let r = core.handle(cmd(
            1,
            CommandBody::Gradients {
                step: 0,
                micro_batches: mbs.clone(),
            },
        ));
        assert!(matches!(&r.msg, Reply::Gradients { results } if results.len() == 2));
        assert_eq!(r.tensors.len(), 2);
        // Wrong step is refused with a clear reason.
        let bad = core.handle(cmd(
            1,
            CommandBody::Gradients {
                step: 1,
                micro_batches: mbs,
            },
        ));
        assert!(matches!(&bad.msg, Reply::Failed { reason } if reason.contains("step 1")));
        let mut apply = cmd(1, CommandBody::Apply { step: 0, tokens: 2 });
        apply.tensors = vec![r.tensors[0].clone()];
        assert_eq!(core.handle(apply).msg, Reply::Ok { step: 1 });
        let cp = core.handle(cmd(1, CommandBody::Checkpoint));
        assert!(matches!(cp.msg, Reply::Checkpoint { step: 1, .. }));
        let exported = core.handle(cmd(1, CommandBody::Export));
        assert!(
            matches!(&exported.msg, Reply::Files { files } if files.iter().any(|f| f.name == "adapter_model.safetensors")),
            "{:?}",
            exported.msg
        );
        let unknown = core.handle(Payload::bare(Command {
            fencing: 1,
            job: JobId::new("job-2").unwrap(),
            body: CommandBody::Checkpoint,
        }));
        assert!(matches!(&unknown.msg, Reply::Failed { reason } if reason.contains("not loaded")));
    }
}
