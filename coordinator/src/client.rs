//! Client helpers for code in the same process as the coordinator actor: submit, status,
//! cancel and wait, as calls to the actor with a timeout.

use std::sync::LazyLock;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::{Semaphore, SemaphorePermit};
use tributary_protocol::{JobId, JobSpec};

use crate::actor::{CoordinatorMsg, MAILBOX_BOUND};
use crate::error::CoordError;
use crate::store::JobRecord;

const T: Duration = Duration::from_secs(30);

/// The bound in front of the coordinator's mailbox (ractor mailboxes are unbounded): at
/// most [`MAILBOX_BOUND`] calls from this module wait on the actor at once; more are
/// refused with [`CoordError::Busy`] (HTTP 503 with Retry-After).
static IN_FLIGHT: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(MAILBOX_BOUND));

fn admit() -> Result<SemaphorePermit<'static>, CoordError> {
    IN_FLIGHT
        .try_acquire()
        .map_err(|_| CoordError::Busy(MAILBOX_BOUND))
}

fn gone(e: impl std::fmt::Display) -> CoordError {
    CoordError::Actor(e.to_string())
}

pub async fn submit(c: &ActorRef<CoordinatorMsg>, spec: JobSpec) -> Result<JobId, CoordError> {
    let _permit = admit()?;
    match c.call(|tx| CoordinatorMsg::Submit(spec, tx), Some(T)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(other) => Err(gone(format!("{other:?}"))),
        Err(e) => Err(gone(e)),
    }
}

pub async fn status(
    c: &ActorRef<CoordinatorMsg>,
    job: Option<JobId>,
) -> Result<Vec<JobRecord>, CoordError> {
    let _permit = admit()?;
    match c.call(|tx| CoordinatorMsg::Status(job, tx), Some(T)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
        Ok(other) => Err(gone(format!("{other:?}"))),
        Err(e) => Err(gone(e)),
    }
}

pub async fn cancel(c: &ActorRef<CoordinatorMsg>, job: JobId) -> Result<(), CoordError> {
    let _permit = admit()?;
    match c.call(|tx| CoordinatorMsg::Cancel(job, tx), Some(T)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(other) => Err(gone(format!("{other:?}"))),
        Err(e) => Err(gone(e)),
    }
}

/// Polls until the job reaches a terminal state or `timeout` passes.
#[allow(clippy::disallowed_methods)] // waits until a real deadline
pub async fn wait(
    c: &ActorRef<CoordinatorMsg>,
    job: &JobId,
    timeout: Duration,
) -> Result<JobRecord, CoordError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let recs = status(c, Some(job.clone())).await?;
        if let Some(r) = recs.into_iter().next() {
            if r.state.is_terminal() || tokio::time::Instant::now() > deadline {
                return Ok(r);
            }
        } else if tokio::time::Instant::now() > deadline {
            return Err(CoordError::NoSuchJob(job.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
