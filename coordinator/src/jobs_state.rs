//! The job state machine as plain synchronous code: submit, cancel, start, the driver's
//! events, requeue with bounded retries and back-off, and adoption of records found in the
//! store. Time comes in as an argument (milliseconds since the Unix epoch, from the
//! injected [`Clock`]), so every rule is unit-tested without a runtime. The coordinator
//! actor ([`crate::actor`]) is a thin shell that persists what this returns and talks to
//! the workers.
//!
//! States: queued → running → succeeded / failed / cancelled. A run that fails, or loses
//! every worker (an executor that dies, a worker process killed), counts as an attempt:
//! the job is queued again after a back-off that doubles each time, and after
//! [`RetryPolicy::max_attempts`] attempts it fails with the last reason in its record. A
//! job waiting out its back-off is not offered for placement, so it never starves others.

use std::collections::BTreeMap;

use tributary_protocol::{JobId, JobSpec, NodeId};

use crate::driver::{JobEvent, JobOutcome};
use crate::error::CoordError;
use crate::store::{JobRecord, JobState};

/// Where the state machine's time comes from (injected; tests use a fixed one).
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::store::now_ms()
    }
}

/// How often, and how soon, a failing job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs a job gets before it fails for good (1: no retry).
    pub max_attempts: u32,
    /// Back-off before the second run; doubled for each later one.
    pub backoff_ms: u64,
    /// Longest back-off.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_ms: 500,
            max_backoff_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed run (1-based).
    pub fn backoff(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(32);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms)
    }
}

/// Least time between two progress writes of one job to the store.
pub const PROGRESS_EVERY_MS: u64 = 200;

/// The one job-id scheme of both run modes: ids derive from the spec and the submission
/// sequence number, which is the submission time in microseconds (made strictly
/// increasing per submitter), so queue order is submission order across processes.
pub fn new_job(spec: JobSpec, seq: u64, now_ms: u64) -> Result<JobRecord, CoordError> {
    spec.validate()?;
    let id = JobId::derive(spec.to_json()?.as_bytes(), seq);
    Ok(JobRecord::queued_at(id, seq, spec, now_ms))
}

/// What the actor must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write this record to the store.
    Persist(Box<JobRecord>),
    /// Tell the job's running driver to stop at its next step boundary.
    StopRun(JobId),
}

/// Every job the coordinator knows, and the rules that move them.
#[derive(Debug, Clone, Default)]
pub struct Jobs {
    jobs: BTreeMap<JobId, JobRecord>,
    last_seq: u64,
    last_progress_write: BTreeMap<JobId, u64>,
    policy: RetryPolicy,
}

impl Jobs {
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    pub fn get(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Every record, by id.
    pub fn all(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// Queues a job submitted at `now_ms`; returns its record (to persist).
    pub fn submit(&mut self, spec: JobSpec, now_ms: u64) -> Result<JobRecord, CoordError> {
        let seq = now_ms
            .saturating_mul(1000)
            .max(self.last_seq.saturating_add(1));
        let rec = new_job(spec, seq, now_ms)?;
        self.last_seq = seq;
        self.jobs.insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    /// Takes in records found in the store (cluster submissions, a previous leader's jobs).
    /// A job a previous leader was running is queued again (it resumes from its last
    /// checkpoint); returns the records to persist.
    pub fn adopt(&mut self, records: Vec<JobRecord>, now_ms: u64) -> Vec<JobRecord> {
        let mut changed = Vec::new();
        for mut rec in records {
            self.last_seq = self.last_seq.max(rec.seq);
            if self.jobs.contains_key(&rec.id) {
                continue;
            }
            if rec.state == JobState::Running {
                rec.state = JobState::Queued;
                rec.workers.clear();
                rec.log_at(now_ms, "queued again: its coordinator changed");
                changed.push(rec.clone());
            }
            self.jobs.insert(rec.id.clone(), rec);
        }
        changed
    }

    /// Queued jobs that may be placed at `now_ms`, in submission order.
    pub fn placeable(&self, now_ms: u64) -> Vec<&JobRecord> {
        let mut q: Vec<&JobRecord> = self
            .jobs
            .values()
            .filter(|r| r.state == JobState::Queued && r.not_before_ms.is_none_or(|t| t <= now_ms))
            .collect();
        q.sort_by_key(|r| r.seq);
        q
    }

    /// Marks a queued job running on `workers`; returns its record (to persist).
    pub fn start(&mut self, id: &JobId, workers: Vec<NodeId>, now_ms: u64) -> Option<JobRecord> {
        let rec = self.jobs.get_mut(id)?;
        if rec.state != JobState::Queued {
            return None;
        }
        rec.state = JobState::Running;
        rec.not_before_ms = None;
        rec.waiting = None;
        rec.workers = workers;
        // Epoch-based specs: known once the workers report the dataset size.
        rec.progress.total_steps = match (rec.spec.train.steps, rec.examples) {
            (Some(s), _) => s,
            (None, Some(n)) => rec.spec.total_steps(n),
            (None, None) => 0,
        };
        let names: Vec<&str> = rec.workers.iter().map(NodeId::as_str).collect();
        rec.log_at(now_ms, format!("placed on workers {}", names.join(", ")));
        Some(rec.clone())
    }

    /// Records why a queued job is not placed (`None`: no reason to give); returns the
    /// record when the reason changed (to persist), so an unchanged reason writes nothing.
    pub fn set_waiting(&mut self, id: &JobId, reason: Option<String>) -> Option<JobRecord> {
        let rec = self.jobs.get_mut(id)?;
        if rec.state != JobState::Queued || rec.waiting == reason {
            return None;
        }
        rec.waiting = reason;
        Some(rec.clone())
    }

    /// Records the devices of workers that train a job (node name → device); returns the
    /// record when one was new (to persist).
    pub fn note_devices(
        &mut self,
        id: &JobId,
        devices: impl IntoIterator<Item = (String, String)>,
    ) -> Option<JobRecord> {
        let rec = self.jobs.get_mut(id)?;
        let mut changed = false;
        for (node, device) in devices {
            if rec.devices.get(&node) != Some(&device) {
                rec.devices.insert(node, device);
                changed = true;
            }
        }
        changed.then(|| rec.clone())
    }

    /// Cancels a queued job at once, or asks a running one to stop.
    pub fn cancel(&mut self, id: &JobId, now_ms: u64) -> Result<Effect, CoordError> {
        let rec = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| CoordError::NoSuchJob(id.to_string()))?;
        match rec.state {
            JobState::Queued => {
                rec.state = JobState::Cancelled;
                rec.not_before_ms = None;
                rec.log_at(now_ms, "cancelled while queued");
                Ok(Effect::Persist(Box::new(rec.clone())))
            }
            JobState::Running => {
                rec.cancel_requested = true;
                rec.log_at(
                    now_ms,
                    "cancel requested; stopping at the next step boundary",
                );
                Ok(Effect::StopRun(id.clone()))
            }
            s => Err(CoordError::BadState {
                job: id.to_string(),
                state: s.to_string(),
                action: "cancelled",
            }),
        }
    }

    /// Applies a driver event; returns the records to persist. A fenced-out outcome is an
    /// error: this coordinator must step down.
    pub fn on_event(&mut self, ev: JobEvent, now_ms: u64) -> Result<Vec<JobRecord>, CoordError> {
        let persist = |rec: &JobRecord| vec![rec.clone()];
        match ev {
            JobEvent::Loaded {
                job,
                total_steps,
                examples,
                base_model,
                data,
            } => {
                let Some(rec) = self.jobs.get_mut(&job) else {
                    return Ok(Vec::new());
                };
                rec.progress.total_steps = total_steps;
                rec.examples = Some(examples);
                rec.base_model_digest = Some(base_model);
                rec.data_digest = Some(data);
                rec.log_at(now_ms, format!(
                    "loaded: {examples} examples, {total_steps} steps; base model {base_model}, data {data}"
                ));
                Ok(persist(rec))
            }
            JobEvent::Checkpointed { job, checkpoint } => {
                // The object is written; now move the record's pointer to it.
                let Some(rec) = self.jobs.get_mut(&job) else {
                    return Ok(Vec::new());
                };
                rec.checkpoint = Some(checkpoint);
                Ok(persist(rec))
            }
            JobEvent::Log { job, msg } => {
                if let Some(rec) = self.jobs.get_mut(&job) {
                    rec.log_at(now_ms, msg);
                }
                Ok(Vec::new())
            }
            JobEvent::Progress {
                job,
                progress,
                workers,
            } => {
                let Some(rec) = self.jobs.get_mut(&job) else {
                    return Ok(Vec::new());
                };
                let loss = progress
                    .loss
                    .map_or_else(|| "-".to_string(), |l| format!("{l:.4}"));
                rec.log_step_at(
                    now_ms,
                    progress.step,
                    format!(
                        "step {}/{} loss {loss}",
                        progress.step, progress.total_steps
                    ),
                );
                rec.progress = progress;
                rec.workers = workers;
                // Progress is written at most every PROGRESS_EVERY_MS per job; state
                // changes are always written.
                let due = self
                    .last_progress_write
                    .get(&job)
                    .is_none_or(|t| now_ms.saturating_sub(*t) >= PROGRESS_EVERY_MS);
                if !due {
                    return Ok(Vec::new());
                }
                self.last_progress_write.insert(job, now_ms);
                Ok(persist(rec))
            }
            JobEvent::WorkerLost { .. } => Ok(Vec::new()),
            JobEvent::Done { job, outcome } => self.done(&job, outcome, now_ms),
        }
    }

    fn done(
        &mut self,
        job: &JobId,
        outcome: JobOutcome,
        now_ms: u64,
    ) -> Result<Vec<JobRecord>, CoordError> {
        self.last_progress_write.remove(job);
        let policy = self.policy;
        let Some(rec) = self.jobs.get_mut(job) else {
            return Ok(Vec::new());
        };
        match outcome {
            JobOutcome::Succeeded {
                adapter_digest,
                adapter,
                steps,
                final_loss,
            } => {
                rec.state = JobState::Succeeded;
                rec.adapter_digest = Some(adapter_digest);
                rec.adapter = Some(adapter);
                rec.final_loss = final_loss;
                rec.progress.step = steps;
                rec.progress.eta_secs = Some(0.0);
                rec.error = None;
            }
            JobOutcome::Cancelled => rec.state = JobState::Cancelled,
            JobOutcome::Failed(why) | JobOutcome::Requeue(why) if rec.cancel_requested => {
                rec.state = JobState::Cancelled;
                rec.log_at(now_ms, format!("stopped while cancelling: {why}"));
            }
            JobOutcome::Failed(why) | JobOutcome::Requeue(why) => {
                rec.attempts = rec.attempts.saturating_add(1);
                rec.workers.clear();
                if rec.attempts >= policy.max_attempts {
                    rec.state = JobState::Failed;
                    rec.not_before_ms = None;
                    rec.error = Some(if policy.max_attempts > 1 {
                        format!("{why} (gave up after {} attempts)", rec.attempts)
                    } else {
                        why
                    });
                } else {
                    let wait = policy.backoff(rec.attempts);
                    rec.state = JobState::Queued;
                    rec.not_before_ms = Some(now_ms.saturating_add(wait));
                    rec.log_at(
                        now_ms,
                        format!(
                            "attempt {} of {} ended: {why}; queued again in {:.1} s",
                            rec.attempts,
                            policy.max_attempts,
                            wait as f64 / 1000.0
                        ),
                    );
                }
            }
            JobOutcome::Fenced { token, highest } => {
                return Err(CoordError::Fenced { token, highest });
            }
        }
        if rec.state.is_terminal() {
            let detail = rec.error.clone().unwrap_or_default();
            rec.log_at(
                now_ms,
                format!("{} {detail}", rec.state).trim_end().to_string(),
            );
        }
        Ok(vec![rec.clone()])
    }
}

#[cfg(test)]
#[path = "jobs_state_tests.rs"]
mod tests;
