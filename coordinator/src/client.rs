//! Client helpers for code in the same process as the coordinator actor: submit, status,
//! cancel and wait, as calls to the actor with a timeout.

use std::time::Duration;

use ractor::ActorRef;
use tributary_protocol::{JobId, JobSpec};

use crate::actor::CoordinatorMsg;
use crate::error::CoordError;
use crate::store::JobRecord;

const T: Duration = Duration::from_secs(30);

fn gone(e: impl std::fmt::Display) -> CoordError {
    CoordError::Actor(e.to_string())
}

pub async fn submit(c: &ActorRef<CoordinatorMsg>, spec: JobSpec) -> Result<JobId, CoordError> {
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
    match c.call(|tx| CoordinatorMsg::Status(job, tx), Some(T)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
        Ok(other) => Err(gone(format!("{other:?}"))),
        Err(e) => Err(gone(e)),
    }
}

pub async fn cancel(c: &ActorRef<CoordinatorMsg>, job: JobId) -> Result<(), CoordError> {
    match c.call(|tx| CoordinatorMsg::Cancel(job, tx), Some(T)).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(other) => Err(gone(format!("{other:?}"))),
        Err(e) => Err(gone(e)),
    }
}

/// Polls until the job reaches a terminal state or `timeout` passes.
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
