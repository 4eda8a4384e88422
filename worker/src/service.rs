//! The worker's QUIC face: a [`Handler`] that forwards each command to the worker actor, so
//! cluster mode runs exactly the actor code embedded mode runs.
//!
//! The actor's mailbox is unbounded (ractor's), so the service bounds what it forwards: at
//! most [`MAX_QUEUED_COMMANDS`] commands wait in or for the actor at once; one more is
//! refused at once with a `Failed` reply naming the limit, instead of queueing without end
//! (a coordinator sends one command per job and worker at a time, so only a misbehaving
//! peer reaches it).

use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::Semaphore;
use tracing::warn;
use tributary_protocol::{Command, Handler, NodeId, Payload, Reply};

use crate::actor::{WorkerMsg, call_worker};

/// Commands forwarded to the actor and not yet answered, at most.
pub const MAX_QUEUED_COMMANDS: usize = 64;

/// Serves coordinator commands arriving over QUIC.
#[derive(Debug, Clone)]
pub struct WorkerService {
    actor: ActorRef<WorkerMsg>,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl WorkerService {
    pub fn new(actor: ActorRef<WorkerMsg>) -> Self {
        Self::with_limit(actor, MAX_QUEUED_COMMANDS)
    }

    /// A service that forwards at most `limit` commands at once (at least 1).
    pub fn with_limit(actor: ActorRef<WorkerMsg>, limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            actor,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl Handler for WorkerService {
    type Req = Command;
    type Resp = Reply;

    async fn handle(&self, peer: NodeId, req: Payload<Command>) -> Payload<Reply> {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = self.limit, "worker busy: command refused");
            return Payload::bare(Reply::Failed {
                reason: format!(
                    "worker busy: {} commands are already waiting for it (limit {})",
                    self.limit, self.limit
                ),
            });
        };
        match call_worker(&self.actor, req).await {
            Ok(r) => r,
            Err(e) => {
                warn!(%peer, error = %e, "worker actor failed a command");
                Payload::bare(Reply::Failed {
                    reason: e.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{ExecError, ExecutorFactory, ShardExecutor};
    use crate::{WorkerCore, spawn_unsupervised};
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, channel};
    use tributary_protocol::{CommandBody, JobId, JobSpec};

    /// A factory whose `create` waits until the test lets it go, then fails: a `Start`
    /// that holds the actor busy.
    struct Gate(Mutex<Receiver<()>>);

    impl ExecutorFactory for Gate {
        fn create(&self, _spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
            let _ = self.0.lock().map(|r| r.recv());
            Err(ExecError::Setup("released".into()))
        }
    }

    fn start(job: &str) -> Payload<Command> {
        let spec = JobSpec::from_toml_str(
            "base_model = \"builtin:linear\"\ndata = \"builtin\"\n[train]\nsteps = 1\n",
        )
        .unwrap();
        Payload::bare(Command {
            fencing: 1,
            job: JobId::new(job.to_string()).unwrap(),
            body: CommandBody::Start {
                spec_json: spec.to_json().unwrap(),
            },
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_beyond_the_limit_are_refused_not_queued() {
        let (release, gate) = channel();
        let node = NodeId::new("w".to_string()).unwrap();
        let core = WorkerCore::new(node.clone(), Arc::new(Gate(Mutex::new(gate))));
        let (actor, _) = spawn_unsupervised(core).await.unwrap();
        let svc = WorkerService::with_limit(actor.clone(), 2);
        // Two commands fill the limit: one runs (held at the gate), one waits.
        let a = tokio::spawn({
            let (svc, node) = (svc.clone(), node.clone());
            async move { svc.handle(node, start("job-a")).await }
        });
        let b = tokio::spawn({
            let (svc, node) = (svc.clone(), node.clone());
            async move { svc.handle(node, start("job-b")).await }
        });
        while svc.slots.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        // A third is refused at once, naming the limit.
        let refused = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            svc.handle(node.clone(), start("job-c")),
        )
        .await
        .expect("the third command was queued behind the busy actor instead of refused");
        match refused.msg {
            Reply::Failed { reason } => assert!(reason.contains("limit 2"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Released, the two held commands are answered and the slots come back.
        release.send(()).unwrap();
        release.send(()).unwrap();
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(svc.slots.available_permits(), 2);
        actor.stop(None);
    }
}
