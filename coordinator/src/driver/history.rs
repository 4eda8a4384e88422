//! The run's loss history ([`crate::loss_history`]): each step's train loss, and the eval loss
//! on the held-out tail of the data (`train.eval_fraction`) before the first step, every
//! [`eval_every`] steps and after the last. An eval asks the workers for the held-out
//! micro-batches' losses at the current step (the same `Gradients` call a step makes; the
//! gradients are dropped, nothing is applied). History writes that fail are logged, never
//! fatal: the curve is a view of the run, not part of it.

use std::time::Instant;

use tracing::warn;
use tributary_protocol::MicroBatch;

use super::{JobOutcome, JobRun, Live};
use crate::loss_history::{self, FLUSH_EVERY, LossHistory, LossPoint, eval_every};
use crate::reduce::reduce_in_order;

/// What a run keeps of its history.
pub(super) struct Recorder {
    history: LossHistory,
    last_flush: Option<Instant>,
    eval_batch: Vec<MicroBatch>,
    every: u64,
    total: u64,
}

/// The held-out examples `[first, first + count)` as micro-batches of `size`.
fn eval_batch(first: u64, count: u64, size: u32) -> Vec<MicroBatch> {
    let size = u64::from(size.max(1));
    (0..count.div_ceil(size))
        .map(|i| MicroBatch {
            index: i as u32,
            start: first + i * size,
            len: size.min(count - i * size) as u32,
        })
        .collect()
}

impl JobRun {
    /// The history to extend: what earlier runs of the job wrote up to `start_step`.
    pub(super) async fn start_history(
        &self,
        start_step: u64,
        train_examples: u64,
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
            eval_batch: eval_batch(train_examples, eval_examples, self.spec.micro_batch_size()),
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
        if rec.eval_batch.is_empty() || !due || rec.history.eval.iter().any(|p| p.step == done)
        {
            return Ok(());
        }
        let parts = self.gather(live, done, &rec.eval_batch).await?;
        let reduced = reduce_in_order(parts, rec.eval_batch.len() as u32)
            .map_err(|e| JobOutcome::Failed(format!("eval at step {done}: {e}")))?;
        if reduced.loss.is_finite() {
            rec.history.eval.push(LossPoint {
                step: done,
                loss: reduced.loss,
            });
            self.log(format!("eval loss {:.4} at step {done}", reduced.loss))
                .await;
        }
        self.flush_history(rec, true).await;
        Ok(())
    }

    /// Writes the history when `force`d or [`FLUSH_EVERY`] has passed since the last write.
    pub(super) async fn flush_history(&self, rec: &mut Recorder, force: bool) {
        if !force && rec.last_flush.is_some_and(|t| t.elapsed() < FLUSH_EVERY) {
            return;
        }
        rec.last_flush = Some(Instant::now());
        if let Err(e) = loss_history::save(self.artifacts.store(), &self.job, &rec.history).await
        {
            warn!(error = %e, "could not write the loss history");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::eval_batch;

    #[test]
    fn the_held_out_tail_is_cut_into_micro_batches() {
        let b = eval_batch(30, 10, 4);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].index, b[0].start, b[0].len), (0, 30, 4));
        assert_eq!((b[2].index, b[2].start, b[2].len), (2, 38, 2));
        assert!(eval_batch(30, 0, 4).is_empty());
    }
}
