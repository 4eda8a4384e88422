//! Job records and checkpoints: what a new leader needs to resume every job. The
//! [`JobStore`] trait has an in-memory implementation for embedded mode here and an etcd one
//! (writes fenced by the leader key) in [`crate::etcd`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tributary_protocol::link::BoxFuture;
use tributary_protocol::{Digest, JobId, JobSpec, NodeId};

use crate::error::CoordError;
use crate::progress::Progress;

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Succeeded, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        };
        f.write_str(s)
    }
}

/// Everything known about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    /// Submission order (queue order).
    pub seq: u64,
    pub spec: JobSpec,
    pub state: JobState,
    pub progress: Progress,
    /// Workers in rank order while running.
    pub workers: Vec<NodeId>,
    pub error: Option<String>,
    /// Digest of the final trained state.
    pub adapter_digest: Option<Digest>,
    pub final_loss: Option<f32>,
    /// Set when a cancel was asked while running.
    #[serde(default)]
    pub cancel_requested: bool,
}

impl JobRecord {
    /// A freshly queued job.
    pub fn queued(id: JobId, seq: u64, spec: JobSpec) -> Self {
        Self {
            id,
            seq,
            spec,
            state: JobState::Queued,
            progress: Progress::default(),
            workers: Vec::new(),
            error: None,
            adapter_digest: None,
            final_loss: None,
            cancel_requested: false,
        }
    }
}

/// A saved executor state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u64,
    pub state: Vec<u8>,
}

/// Durable job records and checkpoints.
pub trait JobStore: Send + Sync + 'static {
    fn put(&self, rec: &JobRecord) -> BoxFuture<'_, Result<(), CoordError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>>;
    fn put_checkpoint<'a>(
        &'a self,
        job: &'a JobId,
        cp: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<(), CoordError>>;
    fn checkpoint<'a>(
        &'a self,
        job: &'a JobId,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CoordError>>;
}

/// In-memory store (embedded mode, tests).
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    records: Mutex<BTreeMap<JobId, JobRecord>>,
    checkpoints: Mutex<BTreeMap<JobId, Checkpoint>>,
}

fn poisoned<T>(_: T) -> CoordError {
    CoordError::Store("store lock poisoned".into())
}

impl JobStore for MemoryJobStore {
    fn put(&self, rec: &JobRecord) -> BoxFuture<'_, Result<(), CoordError>> {
        let r = self.records.lock().map_err(poisoned).map(|mut m| {
            m.insert(rec.id.clone(), rec.clone());
        });
        Box::pin(async move { r })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>> {
        let r = self
            .records
            .lock()
            .map_err(poisoned)
            .map(|m| m.values().cloned().collect());
        Box::pin(async move { r })
    }

    fn put_checkpoint<'a>(
        &'a self,
        job: &'a JobId,
        cp: &'a Checkpoint,
    ) -> BoxFuture<'a, Result<(), CoordError>> {
        let r = self.checkpoints.lock().map_err(poisoned).map(|mut m| {
            m.insert(job.clone(), cp.clone());
        });
        Box::pin(async move { r })
    }

    fn checkpoint<'a>(
        &'a self,
        job: &'a JobId,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>, CoordError>> {
        let r = self
            .checkpoints
            .lock()
            .map_err(poisoned)
            .map(|m| m.get(job).cloned());
        Box::pin(async move { r })
    }
}
