//! The one training driver: the loop that decides, for every caller, which steps run, what
//! each step's micro-batches hold, when the held-out loss is evaluated, when a checkpoint
//! is taken, and what progress is reported.
//!
//! It is written sans-I/O so that a synchronous caller and an asynchronous one share it:
//! [`Driver::next_action`] says what to do next ([`Action`]), the caller does it and reports
//! back ([`Driver::step_done`], [`Driver::eval_done`]). [`run`] is the synchronous loop over
//! a [`Backend`] (the CLI's `model finetune` runs it over a [`Session`]); the coordinator's
//! data-parallel loop drives the same [`Driver`] over the network, its workers computing
//! each micro-batch with [`Session::micro_gradients`] and applying the fixed-order sum
//! ([`reduce_in_order`]) with [`Session::apply_summed`], exactly what [`Session`]'s own
//! step does in one process. So one spec and seed give one adapter, whatever runs it.
//!
//! Hooks for features that need to see training as it happens (per-example gradient
//! features for attribution, precision changes, device placement) go in an [`Observer`]:
//! it is called before and after every step, after every evaluation and checkpoint, with
//! the backend (for a [`Session`]: the [`Trainer`] and the examples of each micro-batch).

mod plan;
mod session;

pub use plan::{
    Contribution, ExampleOrder, MicroRange, ReduceError, Reduced, RunPlan, RunProgress, Steps,
    micro_ranges, progress, reduce_in_order,
};
pub use session::Session;

use super::Trainer;

/// What one optimizer step did, as the driver needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// Mean loss over the step's supervised tokens.
    pub loss: f32,
    /// Supervised tokens in the step.
    pub tokens: u64,
    /// Real input tokens in the step (for tokens/s), when known.
    pub input_tokens: u64,
    /// Learning rate used, when known (not reported by remote workers).
    pub lr: Option<f64>,
    /// Global gradient norm before clipping, when known.
    pub grad_norm: Option<f32>,
}

/// The next thing a run must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Evaluate the held-out loss with the current adapter; `at_step` steps are done.
    Eval { at_step: u64 },
    /// Run optimizer step `step` (0-based) over these micro-batches, summing their gradients
    /// in index order.
    Step { step: u64, micro: Vec<MicroRange> },
    /// Save a resumable checkpoint; `done` steps are complete.
    Checkpoint { done: u64 },
    /// The run is over: export the adapter.
    Finish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    EvalBefore,
    Steps,
    EvalAfter,
    Done,
}

/// The training loop's state and decisions. Pure: no clock, no I/O.
#[derive(Debug, Clone)]
pub struct Driver {
    plan: RunPlan,
    start_step: u64,
    next_step: u64,
    phase: Phase,
    checkpoint_pending: Option<u64>,
    tokens: u64,
    input_tokens: u64,
    seconds: f64,
    last_loss: Option<f32>,
    eval_before: Option<f32>,
    eval_after: Option<f32>,
}

/// What a finished (or stopped) run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Steps completed in total (including those before a resumption).
    pub steps: u64,
    /// The step the run (re)started at.
    pub start_step: u64,
    pub final_loss: Option<f32>,
    pub eval_before: Option<f32>,
    pub eval_after: Option<f32>,
    /// Supervised tokens trained in this run.
    pub tokens: u64,
    /// Input tokens seen in this run.
    pub input_tokens: u64,
    /// Seconds spent in steps.
    pub seconds: f64,
}

impl Driver {
    /// A driver for `plan`, resuming after `start_step` completed steps.
    pub fn new(plan: RunPlan, start_step: u64) -> Self {
        let phase = if plan.eval {
            Phase::EvalBefore
        } else {
            Phase::Steps
        };
        Self {
            plan,
            start_step,
            next_step: start_step,
            phase,
            checkpoint_pending: None,
            tokens: 0,
            input_tokens: 0,
            seconds: 0.0,
            last_loss: None,
            eval_before: None,
            eval_after: None,
        }
    }

    /// The plan this driver follows.
    pub fn plan(&self) -> &RunPlan {
        &self.plan
    }

    /// What to do next. Call [`Driver::step_done`] after a `Step`, [`Driver::eval_done`]
    /// after an `Eval`; a `Checkpoint` needs no report.
    pub fn next_action(&mut self) -> Action {
        if let Some(done) = self.checkpoint_pending.take() {
            return Action::Checkpoint { done };
        }
        match self.phase {
            Phase::EvalBefore => {
                self.phase = Phase::Steps;
                Action::Eval {
                    at_step: self.start_step,
                }
            }
            Phase::Steps if self.next_step < self.plan.total_steps => {
                let step = self.next_step;
                self.next_step = step.saturating_add(1);
                Action::Step {
                    step,
                    micro: self.plan.micro_batches(step),
                }
            }
            Phase::Steps if self.plan.eval => {
                self.phase = Phase::EvalAfter;
                self.next_action()
            }
            Phase::Steps | Phase::EvalAfter | Phase::Done => {
                if self.phase == Phase::EvalAfter {
                    self.phase = Phase::Done;
                    return Action::Eval {
                        at_step: self.next_step,
                    };
                }
                self.phase = Phase::Done;
                Action::Finish
            }
        }
    }

    /// Records a finished step that took `seconds`; returns the progress to report.
    pub fn step_done(&mut self, out: &StepOutput, seconds: f64) -> RunProgress {
        self.tokens = self.tokens.saturating_add(out.tokens);
        self.input_tokens = self.input_tokens.saturating_add(out.input_tokens);
        self.seconds += seconds.max(0.0);
        self.last_loss = Some(out.loss);
        let done = self.next_step;
        if self.plan.checkpoint_due(done) {
            self.checkpoint_pending = Some(done);
        }
        self.progress()
    }

    /// Records an evaluation's loss.
    pub fn eval_done(&mut self, loss: Option<f32>) {
        // `next_action` moved to `Steps` when it asked for the first evaluation.
        if self.phase == Phase::Steps {
            self.eval_before = loss;
        } else {
            self.eval_after = loss;
        }
    }

    /// Progress now (tokens/s over the time spent in steps).
    pub fn progress(&self) -> RunProgress {
        progress(
            self.next_step,
            self.plan.total_steps,
            self.start_step,
            self.last_loss,
            self.tokens,
            self.seconds,
        )
    }

    /// What the run did so far.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            steps: self.next_step,
            start_step: self.start_step,
            final_loss: self.last_loss,
            eval_before: self.eval_before,
            eval_after: self.eval_after,
            tokens: self.tokens,
            input_tokens: self.input_tokens,
            seconds: self.seconds,
        }
    }
}

/// Where a synchronous run's work is done: one process's [`Session`], or a wrapper around it
/// (the CLI adds its checkpoint directory).
pub trait Backend {
    /// The error a step, evaluation or checkpoint can fail with.
    type Error;
    /// One optimizer step over `micro` (gradients, fixed-order sum, update).
    fn step(&mut self, step: u64, micro: &[MicroRange]) -> Result<StepOutput, Self::Error>;
    /// The held-out loss now, if there is a held-out set.
    fn eval(&mut self) -> Result<Option<f32>, Self::Error>;
    /// Saves a resumable checkpoint after `done` steps.
    fn checkpoint(&mut self, done: u64) -> Result<(), Self::Error>;
    /// The trainer, for observers that need it (per-example gradients, adapter snapshots).
    fn trainer(&self) -> Option<&Trainer> {
        None
    }
}

/// A step as observers see it.
#[derive(Debug, Clone)]
pub struct StepEvent<'a> {
    /// The step's index (0-based).
    pub step: u64,
    pub micro: &'a [MicroRange],
    pub output: &'a StepOutput,
    pub progress: RunProgress,
}

/// Hooks into a run. Every method has a no-op default; errors stop the run.
pub trait Observer<B: Backend + ?Sized> {
    /// Before step `step` runs: the backend still holds the previous step's state.
    fn before_step(
        &mut self,
        _backend: &mut B,
        _step: u64,
        _micro: &[MicroRange],
    ) -> Result<(), B::Error> {
        Ok(())
    }
    /// After a step's update.
    fn after_step(&mut self, _backend: &mut B, _ev: &StepEvent<'_>) -> Result<(), B::Error> {
        Ok(())
    }
    /// After an evaluation (`at_step` steps done).
    fn after_eval(
        &mut self,
        _backend: &mut B,
        _at_step: u64,
        _loss: Option<f32>,
    ) -> Result<(), B::Error> {
        Ok(())
    }
    /// After a checkpoint was saved.
    fn after_checkpoint(&mut self, _backend: &mut B, _done: u64) -> Result<(), B::Error> {
        Ok(())
    }
}

/// The observer that observes nothing.
impl<B: Backend + ?Sized> Observer<B> for () {}

/// Runs `driver` to its end on `backend`, calling `observer` around each action. `clock`
/// gives seconds from an arbitrary origin (injected so tests control it).
pub fn run<B, O>(
    driver: &mut Driver,
    backend: &mut B,
    observer: &mut O,
    clock: &dyn Fn() -> f64,
) -> Result<RunSummary, B::Error>
where
    B: Backend + ?Sized,
    O: Observer<B> + ?Sized,
{
    loop {
        match driver.next_action() {
            Action::Eval { at_step } => {
                let loss = backend.eval()?;
                driver.eval_done(loss);
                observer.after_eval(backend, at_step, loss)?;
            }
            Action::Step { step, micro } => {
                observer.before_step(backend, step, &micro)?;
                let t0 = clock();
                let output = backend.step(step, &micro)?;
                let progress = driver.step_done(&output, clock() - t0);
                let ev = StepEvent {
                    step,
                    micro: &micro,
                    output: &output,
                    progress,
                };
                observer.after_step(backend, &ev)?;
            }
            Action::Checkpoint { done } => {
                backend.checkpoint(done)?;
                observer.after_checkpoint(backend, done)?;
            }
            Action::Finish => return Ok(driver.summary()),
        }
    }
}

#[cfg(test)]
mod tests;
