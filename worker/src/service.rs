//! The worker's QUIC face: a [`Handler`] that forwards each command to the worker actor, so
//! cluster mode runs exactly the actor code embedded mode runs.

use ractor::ActorRef;
use tracing::warn;
use tributary_protocol::{Command, Handler, NodeId, Payload, Reply};

use crate::actor::{WorkerMsg, call_worker};

/// Serves coordinator commands arriving over QUIC.
#[derive(Debug, Clone)]
pub struct WorkerService {
    actor: ActorRef<WorkerMsg>,
}

impl WorkerService {
    pub fn new(actor: ActorRef<WorkerMsg>) -> Self {
        Self { actor }
    }
}

impl Handler for WorkerService {
    type Req = Command;
    type Resp = Reply;

    async fn handle(&self, peer: NodeId, req: Payload<Command>) -> Payload<Reply> {
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
