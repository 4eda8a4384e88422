//! The run's loss history ([`crate::loss_history`]): each step's train loss, and the eval loss
//! on the held-out tail of the data (`train.eval_fraction`) before the first step, every
//! [`eval_every`] steps and after the last. An eval asks one live worker (they all hold the
//! same state) for `EvalLoss`: the mean loss on the held-out examples, which the workers
//! never train on (no gradients, no dropout, nothing applied). History writes that fail are
//! logged, never fatal: the curve is a view of the run, not part of it.

use std::time::Instant;

use tracing::warn;
use tributary_protocol::{CommandBody, Payload, Reply};

use super::{CallError, JobOutcome, JobRun, Live, call};
use crate::loss_history::{self, FLUSH_EVERY, LossHistory, LossPoint, eval_every};

/// What a run keeps of its history.
pub(super) struct Recorder {
    history: LossHistory,
    last_flush: Option<Instant>,
    eval_examples: u64,
    every: u64,
    total: u64,
}

impl JobRun {
    /// The history to extend: what earlier runs of the job wrote up to `start_step`.
    pub(super) async fn start_history(
        &self,
        start_step: u64,
        eval_examples: u64,
        total: u64,
    ) -> Recorder {
        let store = self.artifacts.store();
        let mut history = match loss_history::load(store, &self.job).await {
            Ok(Some(h)) => h,
            Ok(None) => LossHistory::default(),
            Err(e) => {
                warn!(error = %e, "loss history unreadable; starting a new one");
                LossHistory::default()
            }
        };
        history.job = self.job.to_string();
        history.eval_examples = eval_examples;
        history.truncate_after(start_step);
        Recorder {
            history,
            last_flush: None,
            eval_examples,
            every: eval_every(total),
            total,
        }
    }

    /// Records the train loss after `done` steps.
    pub(super) async fn record_train(&self, rec: &mut Recorder, done: u64, loss: f32) {
        if loss.is_finite() {
            rec.history.train.push(LossPoint { step: done, loss });
        }
        self.flush_history(rec, false).await;
    }

    /// Evaluates the held-out split after `done` steps when one is due (`done == 0`, every
    /// `every` steps, the last step).
    pub(super) async fn maybe_eval(
        &self,
        live: &mut Live,
        rec: &mut Recorder,
        done: u64,
    ) -> Result<(), JobOutcome> {
        let due = done == 0 || done.is_multiple_of(rec.every) || done == rec.total;
        if rec.eval_examples == 0 || !due || rec.history.eval.iter().any(|p| p.step == done) {
            return Ok(());
        }
        let loss = loop {
            let Some((node, link)) = live.first().cloned() else {
                return Err(JobOutcome::Requeue("every worker was lost".into()));
            };
            match call(link.as_ref(), self.cmd(CommandBody::EvalLoss)).await {
                Ok(Payload {
                    msg: Reply::EvalLoss { loss, .. },
                    ..
                }) => break loss,
                Ok(other) => {
                    return Err(JobOutcome::Failed(format!(
                        "{node}: unexpected reply to eval: {:?}",
                        other.msg
                    )));
                }
                Err(CallError::Lost(why)) => self.lose(live, &node, why).await,
                Err(CallError::Failed(why)) => {
                    return Err(JobOutcome::Failed(format!("{node}: eval: {why}")));
                }
                Err(CallError::Fenced { token, highest }) => {
                    return Err(JobOutcome::Fenced { token, highest });
                }
            }
        };
        if let Some(loss) = loss.filter(|l| l.is_finite()) {
            rec.history.eval.push(LossPoint { step: done, loss });
            self.log(format!("eval loss {loss:.4} at step {done}"))
                .await;
        }
        self.flush_history(rec, true).await;
        Ok(())
    }

    /// Writes the history when `force`d or [`FLUSH_EVERY`] has passed since the last write.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    pub(super) async fn flush_history(&self, rec: &mut Recorder, force: bool) {
        if !force && rec.last_flush.is_some_and(|t| t.elapsed() < FLUSH_EVERY) {
            return;
        }
        rec.last_flush = Some(Instant::now());
        if let Err(e) = loss_history::save(self.artifacts.store(), &self.job, &rec.history).await {
            warn!(error = %e, "could not write the loss history");
        }
    }
}
