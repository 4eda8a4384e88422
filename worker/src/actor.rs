//! The worker actor (ractor): a thin shell that feeds commands to [`WorkerCore`], and the
//! in-process [`LocalWorkerLink`] that embedded mode uses instead of QUIC.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::info_span;
use tributary_protocol::link::{BoxFuture, LinkFactory, WorkerInfo, WorkerLink};
use tributary_protocol::{Command, NodeId, Payload, ProtocolError, Reply};

use crate::core::WorkerCore;

/// Messages the worker actor accepts.
#[derive(Debug)]
pub enum WorkerMsg {
    /// A coordinator command; the reply goes back on the port.
    Command(Payload<Command>, RpcReplyPort<Payload<Reply>>),
    /// The highest fencing token seen (for tests and metrics).
    HighestToken(RpcReplyPort<u64>),
}

/// The worker actor.
#[derive(Debug, Default)]
pub struct WorkerActor;

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerCore;
    type Arguments = WorkerCore;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        core: WorkerCore,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(core)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        core: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Command(cmd, reply) => {
                let span = info_span!("worker_command", node = %core.node(), job = %cmd.msg.job, token = cmd.msg.fencing);
                // Gradient computation is CPU-bound: on a multi-threaded runtime, tell tokio
                // so other tasks (QUIC keep-alives, etcd leases) move off this thread.
                let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                let out = if multi {
                    tokio::task::block_in_place(|| span.in_scope(|| core.handle(cmd)))
                } else {
                    span.in_scope(|| core.handle(cmd))
                };
                // The caller may have timed out and gone; that is not the worker's failure.
                let _ = reply.send(out);
            }
            WorkerMsg::HighestToken(reply) => {
                let _ = reply.send(core.highest_token());
            }
        }
        Ok(())
    }
}

/// Spawns a worker actor around `core`, under a supervisor that restarts it when it dies
/// ([`crate::supervisor`]); the reference is the supervisor's and takes the same messages.
pub async fn spawn_worker(
    core: WorkerCore,
) -> Result<(ActorRef<WorkerMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    crate::supervisor::spawn_supervised(core, Default::default()).await
}

/// Spawns a worker actor without a supervisor.
pub async fn spawn_unsupervised(
    core: WorkerCore,
) -> Result<(ActorRef<WorkerMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    Actor::spawn(None, WorkerActor, core).await
}

/// Sends commands to a worker actor in this process.
#[derive(Debug, Clone)]
pub struct LocalWorkerLink {
    actor: ActorRef<WorkerMsg>,
}

impl LocalWorkerLink {
    pub fn new(actor: ActorRef<WorkerMsg>) -> Self {
        Self { actor }
    }
}

/// Sends one command to a worker actor and waits for its reply.
pub async fn call_worker(
    actor: &ActorRef<WorkerMsg>,
    cmd: Payload<Command>,
) -> Result<Payload<Reply>, ProtocolError> {
    let limit = cmd.msg.body.time_limit();
    match actor
        .call(|tx| WorkerMsg::Command(cmd, tx), Some(limit))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
        Ok(other) => Err(ProtocolError::Connection(format!(
            "worker actor did not answer: {other:?}"
        ))),
        Err(e) => Err(ProtocolError::Connection(format!("worker actor gone: {e}"))),
    }
}

impl WorkerLink for LocalWorkerLink {
    fn call(&self, cmd: Payload<Command>) -> BoxFuture<'_, Result<Payload<Reply>, ProtocolError>> {
        Box::pin(call_worker(&self.actor, cmd))
    }
}

/// Links to the worker actors of this process, by node name (embedded mode).
#[derive(Debug, Clone, Default)]
pub struct LocalLinkFactory {
    actors: BTreeMap<NodeId, ActorRef<WorkerMsg>>,
}

impl LocalLinkFactory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a local worker.
    pub fn insert(&mut self, node: NodeId, actor: ActorRef<WorkerMsg>) {
        self.actors.insert(node, actor);
    }
}

impl LinkFactory for LocalLinkFactory {
    fn connect<'a>(
        &'a self,
        info: &'a WorkerInfo,
    ) -> BoxFuture<'a, Result<Arc<dyn WorkerLink>, ProtocolError>> {
        Box::pin(async move {
            let actor = self
                .actors
                .get(&info.node)
                .ok_or_else(|| ProtocolError::Connect {
                    addr: info.node.to_string(),
                    reason: "no such local worker".into(),
                })?;
            Ok(Arc::new(LocalWorkerLink::new(actor.clone())) as Arc<dyn WorkerLink>)
        })
    }
}
