//! A job's loss history: the train loss of every step and the eval loss on the job's held-out
//! split (`train.eval_fraction`), kept in object storage under `metrics/<job>/loss.json`
//! (not etcd: a long run's series outgrows a job record). The driver rewrites the object as
//! the run goes (at most every [`FLUSH_EVERY`], after every eval and at the end); a run that
//! resumes from a checkpoint drops the points past the checkpoint's step and carries on.
//! `GET /v1/jobs/{id}/metrics` (the gateway) serves it.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_ledger::store::Store;
use tributary_protocol::JobId;

use crate::error::CoordError;

/// Shortest time between two writes of a running job's history.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Eval points a run aims for (plus one before the first step).
pub const EVAL_POINTS: u64 = 10;

/// One point of a series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// Optimizer steps applied when the loss was measured (train: the step's number + 1).
    pub step: u64,
    /// Mean loss per token.
    pub loss: f32,
}

/// The train and eval loss series of one job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LossHistory {
    pub job: String,
    pub train: Vec<LossPoint>,
    pub eval: Vec<LossPoint>,
    /// Examples held out for the eval loss (0: no eval split).
    #[serde(default)]
    pub eval_examples: u64,
}

impl LossHistory {
    /// Keeps only the points measured at or before `step` (a run resuming from there).
    pub fn truncate_after(&mut self, step: u64) {
        self.train.retain(|p| p.step <= step);
        self.eval.retain(|p| p.step <= step);
    }
}

/// The object key of `job`'s history.
pub fn key(job: &JobId) -> String {
    format!("metrics/{job}/loss.json")
}

/// Steps between two evals of a run of `total` steps.
pub fn eval_every(total: u64) -> u64 {
    total.div_ceil(EVAL_POINTS).max(1)
}

/// Reads `job`'s history from `store`; `None` when the job has written none.
pub async fn load(store: &Store, job: &JobId) -> Result<Option<LossHistory>, CoordError> {
    let Some(bytes) = store
        .get(&object_store::path::Path::from(key(job)))
        .await
        .map_err(|e| CoordError::Store(e.to_string()))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CoordError::Store(format!("{}: {e}", key(job))))
}

/// Writes `job`'s history to `store` (replacing the previous one).
pub async fn save(store: &Store, job: &JobId, h: &LossHistory) -> Result<(), CoordError> {
    let bytes = serde_json::to_vec(h).map_err(|e| CoordError::Store(e.to_string()))?;
    store
        .put(
            &object_store::path::Path::from(key(job)),
            Bytes::from(bytes),
        )
        .await
        .map_err(|e| CoordError::Store(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_history_round_trips_through_the_store_and_resumes_cleanly() {
        let store = Store::open("memory://loss-history").unwrap();
        let job = JobId::new("job-1").unwrap();
        assert_eq!(load(&store, &job).await.unwrap(), None);
        let mut h = LossHistory {
            job: job.to_string(),
            eval_examples: 4,
            ..LossHistory::default()
        };
        for s in 1..=6 {
            h.train.push(LossPoint {
                step: s,
                loss: 1.0 / s as f32,
            });
        }
        h.eval.push(LossPoint { step: 0, loss: 2.0 });
        h.eval.push(LossPoint { step: 5, loss: 0.5 });
        save(&store, &job, &h).await.unwrap();
        let mut back = load(&store, &job).await.unwrap().unwrap();
        assert_eq!(back, h);
        back.truncate_after(4);
        assert_eq!(back.train.len(), 4);
        assert_eq!(back.eval.len(), 1);
        assert_eq!(eval_every(25), 3);
        assert_eq!(eval_every(3), 1);
    }
}
