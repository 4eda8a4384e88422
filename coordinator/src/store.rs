//! Job records: what a new leader needs to resume every job (including a pointer to its
//! last checkpoint, which lives in object storage: [`crate::artifacts`]), and cancel
//! requests that any process may file. The [`JobStore`] trait has an in-memory
//! implementation for embedded mode here and an etcd one (record writes fenced by the leader
//! key) in [`crate::etcd`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tributary_protocol::link::BoxFuture;
use tributary_protocol::{Digest, JobId, JobSpec, NodeId};

use crate::artifacts::CheckpointRef;
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
    /// The last checkpoint (in object storage).
    #[serde(default)]
    pub checkpoint: Option<CheckpointRef>,
    /// Where the trained adapter's files are (path or URL).
    #[serde(default)]
    pub adapter: Option<String>,
    /// Digests of what the job was trained from, as workers reported them.
    #[serde(default)]
    pub base_model_digest: Option<Digest>,
    #[serde(default)]
    pub data_digest: Option<Digest>,
    /// Examples in the dataset, as workers reported them.
    #[serde(default)]
    pub examples: Option<u64>,
    /// The job's event lines, oldest first, at most [`MAX_LOG_LINES`].
    #[serde(default)]
    pub log: Vec<LogLine>,
    /// Runs of the job that ended in a failure or lost every worker (see
    /// [`crate::jobs_state::RetryPolicy`]).
    #[serde(default)]
    pub attempts: u32,
    /// A queued job waiting out its back-off is not placed before this time (ms since the
    /// Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Why a queued job is not placed yet ("waiting for a worker with a GPU …"), as the
    /// leader last saw it; none once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The device each worker that trained the job computed on (node → its membership
    /// record's `device`, with ` [gpu]` when it advertised a hardware GPU).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub devices: std::collections::BTreeMap<String, String>,
}

/// Most log lines kept per job. When full, the oldest per-step line is dropped, so events
/// (placement, checkpoints, lost and joined workers, the end) outlive step lines.
pub const MAX_LOG_LINES: usize = 200;

/// One event of a job's life (`job logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Set on a training step's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    pub msg: String,
}

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the coordinator's wall clock, read in this one place
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl JobRecord {
    /// A freshly queued job.
    pub fn queued(id: JobId, seq: u64, spec: JobSpec) -> Self {
        Self::queued_at(id, seq, spec, now_ms())
    }

    /// A freshly queued job, at `at_ms`.
    pub fn queued_at(id: JobId, seq: u64, spec: JobSpec, at_ms: u64) -> Self {
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
            checkpoint: None,
            adapter: None,
            base_model_digest: None,
            data_digest: None,
            examples: None,
            log: vec![LogLine {
                at_ms,
                step: None,
                msg: "queued".into(),
            }],
            attempts: 0,
            not_before_ms: None,
            waiting: None,
            devices: std::collections::BTreeMap::new(),
        }
    }

    /// Appends an event line (see [`MAX_LOG_LINES`] for what is dropped when full).
    pub fn log(&mut self, msg: impl Into<String>) {
        self.push_log(now_ms(), None, msg.into());
    }

    /// Appends an event line dated `at_ms`.
    pub fn log_at(&mut self, at_ms: u64, msg: impl Into<String>) {
        self.push_log(at_ms, None, msg.into());
    }

    /// Appends a step's line; step lines are the first dropped when the log is full.
    pub fn log_step(&mut self, step: u64, msg: impl Into<String>) {
        self.push_log(now_ms(), Some(step), msg.into());
    }

    /// Appends a step's line dated `at_ms`.
    pub fn log_step_at(&mut self, at_ms: u64, step: u64, msg: impl Into<String>) {
        self.push_log(at_ms, Some(step), msg.into());
    }

    fn push_log(&mut self, at_ms: u64, step: Option<u64>, msg: String) {
        self.log.push(LogLine { at_ms, step, msg });
        if self.log.len() > MAX_LOG_LINES {
            // Drop the oldest step line; only when there is none, the oldest line.
            let at = self.log.iter().position(|l| l.step.is_some()).unwrap_or(0);
            self.log.remove(at);
        }
    }
}

/// Durable job records, and cancel requests.
pub trait JobStore: Send + Sync + 'static {
    /// Writes a record (fenced to the leader in cluster mode).
    fn put(&self, rec: &JobRecord) -> BoxFuture<'_, Result<(), CoordError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>>;
    /// Files a request to cancel `job` (any process may; the leader acts on it).
    fn request_cancel<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<(), CoordError>>;
    /// Jobs with a pending cancel request.
    fn cancel_requests(&self) -> BoxFuture<'_, Result<Vec<JobId>, CoordError>>;
    /// Forgets a handled cancel request.
    fn clear_cancel<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<(), CoordError>>;
}

/// In-memory store (embedded mode, tests).
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    records: Mutex<BTreeMap<JobId, JobRecord>>,
    cancels: Mutex<BTreeSet<JobId>>,
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

    fn request_cancel<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<(), CoordError>> {
        let r = self.cancels.lock().map_err(poisoned).map(|mut c| {
            c.insert(job.clone());
        });
        Box::pin(async move { r })
    }

    fn cancel_requests(&self) -> BoxFuture<'_, Result<Vec<JobId>, CoordError>> {
        let r = self
            .cancels
            .lock()
            .map_err(poisoned)
            .map(|c| c.iter().cloned().collect());
        Box::pin(async move { r })
    }

    fn clear_cancel<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<(), CoordError>> {
        let r = self.cancels.lock().map_err(poisoned).map(|mut c| {
            c.remove(job);
        });
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_drops_step_lines_before_events() {
        let spec =
            JobSpec::from_toml_str("base_model = \"m\"\ndata = \"d\"\n[train]\nsteps = 1000\n")
                .unwrap();
        let mut rec = JobRecord::queued(JobId::new("job-1").unwrap(), 0, spec);
        rec.log("placed");
        for step in 1..=1000 {
            rec.log_step(step, format!("step {step}"));
            if step == 500 {
                rec.log("worker w3 joined");
            }
        }
        assert_eq!(rec.log.len(), MAX_LOG_LINES);
        let msgs: Vec<&str> = rec.log.iter().map(|l| l.msg.as_str()).collect();
        assert_eq!(&msgs[..3], ["queued", "placed", "worker w3 joined"]);
        assert_eq!(msgs.last(), Some(&"step 1000"));
        assert_eq!(msgs[3], format!("step {}", 1000 - (MAX_LOG_LINES - 4)));
    }
}
