//! The worker actor's supervisor (ractor supervision): it owns the [`WorkerActor`] as a
//! linked child, forwards every [`WorkerMsg`] to it, and when the child dies (a panic in an
//! executor, an error) starts a fresh one with the same node name, executor factory and
//! fencing high-water mark. The commands the dead child held fail (their reply ports drop),
//! so the coordinator sees the worker lost for those jobs and retries them under its
//! bounded retry policy; every later command reaches the new child.
//!
//! While no child is running, [`WorkerHealth::is_up`] is false, the
//! `tributary_worker_actors_down` gauge counts it, and `/readyz` reports it;
//! `tributary_worker_actor_restarts_total` counts restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::{error, info};

use crate::actor::{WorkerActor, WorkerMsg};
use crate::core::WorkerCore;
use crate::metrics;

/// What a supervised worker tells `/readyz`.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    down: AtomicBool,
    restarts: AtomicU64,
}

impl WorkerHealth {
    /// Whether the worker actor is running now.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }
}

/// The supervisor.
#[derive(Debug, Default)]
pub struct WorkerSupervisor;

/// The supervisor's state: the running child and how to make the next one.
pub struct SupervisorState {
    child: Option<ActorRef<WorkerMsg>>,
    template: WorkerCore,
    health: Arc<WorkerHealth>,
}

async fn start_child(
    myself: &ActorRef<WorkerMsg>,
    core: WorkerCore,
) -> Result<ActorRef<WorkerMsg>, ActorProcessingErr> {
    let (child, _) = Actor::spawn_linked(None, WorkerActor, core, myself.get_cell()).await?;
    Ok(child)
}

impl Actor for WorkerSupervisor {
    type Msg = WorkerMsg;
    type State = SupervisorState;
    type Arguments = (WorkerCore, Arc<WorkerHealth>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (core, health): (WorkerCore, Arc<WorkerHealth>),
    ) -> Result<Self::State, ActorProcessingErr> {
        let template = core.fresh();
        let child = start_child(&myself, core).await?;
        Ok(SupervisorState {
            child: Some(child),
            template,
            health,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(c) = state.child.take() {
            c.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Without a child the message (and its reply port) drops: the caller sees the worker
        // gone, as it would for a crashed process.
        if let Some(child) = &state.child {
            let _ = child.send_message(msg);
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let reason = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if state.child.as_ref().map(|c| c.get_id()) != Some(cell.get_id()) {
                    return Ok(());
                }
                err.to_string()
            }
            SupervisionEvent::ActorTerminated(cell, _, why) => {
                if state.child.as_ref().map(|c| c.get_id()) != Some(cell.get_id()) {
                    return Ok(());
                }
                why.unwrap_or_else(|| "stopped".into())
            }
            _ => return Ok(()),
        };
        state.child = None;
        state.health.down.store(true, Ordering::SeqCst);
        metrics::ACTORS_DOWN.inc();
        error!(node = %state.template.node(), %reason, "worker actor died; restarting it");
        let child = start_child(&myself, state.template.fresh()).await?;
        state.child = Some(child);
        state.health.restarts.fetch_add(1, Ordering::SeqCst);
        state.health.down.store(false, Ordering::SeqCst);
        metrics::ACTORS_DOWN.dec();
        metrics::ACTOR_RESTARTS.inc();
        info!(node = %state.template.node(), "worker actor restarted");
        Ok(())
    }
}

/// Spawns a supervised worker around `core`: the returned reference is the supervisor's,
/// and accepts the same messages as the worker actor. `health` is updated on every restart.
pub async fn spawn_supervised(
    core: WorkerCore,
    health: Arc<WorkerHealth>,
) -> Result<(ActorRef<WorkerMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr> {
    Actor::spawn(None, WorkerSupervisor, (core, health)).await
}
