//! A training run's state in one process: the [`Trainer`], the training and held-out
//! examples, and the global example order. Its step is the data-parallel step done in one
//! place: every micro-batch's gradient as flat host values ([`Session::micro_gradients`],
//! what a worker sends), summed in index order ([`reduce_in_order`], what the coordinator
//! does), applied once ([`Session::apply_summed`], what every worker does).

use std::path::PathBuf;

use super::plan::{ExampleOrder, MicroRange, Reduced, reduce_in_order};
use super::{Backend, Contribution, StepOutput};
use crate::error::ModelError;
use crate::train::{LoraGradients, StepStats, TrainExample, Trainer};
use crate::weights::HostTensor;

/// One process's training run.
#[derive(Debug, Clone)]
pub struct Session {
    trainer: Trainer,
    examples: Vec<TrainExample>,
    eval: Vec<TrainExample>,
    order: ExampleOrder,
    /// `[A, B]` shapes per adapter module, canonical order (the flat gradient layout).
    shapes: Vec<[Vec<usize>; 2]>,
    checkpoint_root: Option<PathBuf>,
}

fn input(msg: String) -> ModelError {
    ModelError::Input(msg)
}

impl Session {
    /// A run of `trainer` over `examples` (visited in the seeded global order of its
    /// config's seed), evaluated on `eval`.
    pub fn new(
        trainer: Trainer,
        examples: Vec<TrainExample>,
        eval: Vec<TrainExample>,
    ) -> Result<Self, ModelError> {
        let order = ExampleOrder::new(examples.len() as u64, trainer.config().seed)?;
        let shapes = trainer
            .adapter()
            .iter()
            .map(|(_, _, m)| [m.a.dims().to_vec(), m.b.dims().to_vec()])
            .collect();
        Ok(Self {
            trainer,
            examples,
            eval,
            order,
            shapes,
            checkpoint_root: None,
        })
    }

    /// Checkpoints go to `root/step-N` (without a root, [`Backend::checkpoint`] is a no-op).
    pub fn with_checkpoint_root(mut self, root: PathBuf) -> Self {
        self.checkpoint_root = Some(root);
        self
    }

    /// Where checkpoint `done` is saved, if checkpoints are saved.
    pub fn checkpoint_dir(&self, done: u64) -> Option<PathBuf> {
        self.checkpoint_root
            .as_ref()
            .map(|r| r.join(format!("step-{done}")))
    }

    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// Replaces the trainer (a restored checkpoint); the examples and order stay.
    pub fn set_trainer(&mut self, trainer: Trainer) {
        self.trainer = trainer;
    }

    /// The training examples (in file order; see [`Session::micro_examples`]).
    pub fn examples(&self) -> &[TrainExample] {
        &self.examples
    }

    /// The held-out examples.
    pub fn eval_examples(&self) -> &[TrainExample] {
        &self.eval
    }

    /// The indices (into [`Session::examples`]) of a micro-batch's examples.
    pub fn micro_indices(&mut self, r: &MicroRange) -> Vec<usize> {
        self.order.micro_batch(r)
    }

    /// A micro-batch's examples.
    pub fn micro_examples(&mut self, r: &MicroRange) -> Vec<TrainExample> {
        self.micro_indices(r)
            .into_iter()
            .filter_map(|i| self.examples.get(i).cloned())
            .collect()
    }

    /// Number of trainable parameters (the flat gradient's length).
    pub fn num_params(&self) -> usize {
        self.shapes
            .iter()
            .map(|[a, b]| a.iter().product::<usize>() + b.iter().product::<usize>())
            .sum()
    }

    /// The gradient of micro-batch `r`'s summed loss at step `step`, flat. `step_batch` is
    /// the examples per step (a micro-batch's place in its step fixes its dropout masks).
    pub fn micro_gradients(
        &mut self,
        step: u64,
        step_batch: u64,
        r: &MicroRange,
    ) -> Result<Contribution, ModelError> {
        let first = step
            .checked_mul(step_batch)
            .and_then(|base| r.start.checked_sub(base))
            .ok_or_else(|| {
                input(format!(
                    "micro-batch {} starts at position {}, before step {step}",
                    r.index, r.start
                ))
            })?;
        let exs = self.micro_examples(r);
        let g = self.trainer.compute_gradients(&exs, first)?;
        let mut flat = Vec::with_capacity(self.num_params());
        for [a, b] in g.to_host()? {
            flat.extend_from_slice(&a.values);
            flat.extend_from_slice(&b.values);
        }
        Ok(Contribution {
            index: r.index,
            loss_sum: g.loss_sum,
            tokens: g.tokens as u64,
            grads: flat,
        })
    }

    /// Applies a step's fixed-order gradient sum over `tokens` supervised tokens.
    pub fn apply_summed(
        &mut self,
        summed: &[f32],
        loss_sum: f64,
        tokens: u64,
    ) -> Result<StepStats, ModelError> {
        if summed.len() != self.num_params() {
            return Err(input(format!(
                "gradient has {} values, the adapter has {}",
                summed.len(),
                self.num_params()
            )));
        }
        let tokens = usize::try_from(tokens).map_err(|_| input("token count overflows".into()))?;
        let mut at = 0usize;
        let mut host = Vec::with_capacity(self.shapes.len());
        for [sa, sb] in &self.shapes {
            let mut take = |shape: &Vec<usize>| -> Result<HostTensor, ModelError> {
                let n: usize = shape.iter().product();
                let values = summed
                    .get(at..at + n)
                    .ok_or_else(|| input("gradient too short".into()))?
                    .to_vec();
                at += n;
                Ok(HostTensor {
                    shape: shape.clone(),
                    values,
                })
            };
            host.push([take(sa)?, take(sb)?]);
        }
        let grads =
            LoraGradients::from_host(loss_sum, tokens, 0, &host, self.trainer.model().device())?;
        self.trainer.apply_gradients(grads)
    }

    /// Gradients, fixed-order sum and update for one step over `micro`.
    pub fn train_step(&mut self, step: u64, micro: &[MicroRange]) -> Result<StepStats, ModelError> {
        let _span =
            tracing::info_span!("train_step", step = step + 1, micro = micro.len()).entered();
        let step_batch: u64 = micro.iter().map(|m| u64::from(m.len)).sum();
        let mut parts = Vec::with_capacity(micro.len());
        let mut input_tokens = 0usize;
        for r in micro {
            let exs = self.micro_examples(r);
            input_tokens += exs.iter().map(|e| e.input_ids.len()).sum::<usize>();
            parts.push(self.micro_gradients(step, step_batch, r)?);
        }
        let Reduced {
            grads,
            loss_sum,
            tokens,
            ..
        } = reduce_in_order(parts, micro.len() as u32).map_err(|e| input(e.to_string()))?;
        let mut stats = self.apply_summed(&grads, loss_sum, tokens)?;
        stats.input_tokens = input_tokens;
        tracing::info!(
            step = stats.step,
            loss = stats.loss,
            lr = stats.lr,
            grad_norm = stats.grad_norm,
            "step"
        );
        Ok(stats)
    }
}

impl Backend for Session {
    type Error = ModelError;

    fn step(&mut self, step: u64, micro: &[MicroRange]) -> Result<StepOutput, ModelError> {
        let s = self.train_step(step, micro)?;
        Ok(StepOutput {
            loss: s.loss,
            tokens: s.tokens as u64,
            input_tokens: s.input_tokens as u64,
            lr: Some(s.lr),
            grad_norm: Some(s.grad_norm),
        })
    }

    fn eval(&mut self) -> Result<Option<f32>, ModelError> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        self.trainer.eval_loss(&self.eval).map(Some)
    }

    fn checkpoint(&mut self, done: u64) -> Result<(), ModelError> {
        match self.checkpoint_dir(done) {
            Some(dir) => self.trainer.save_checkpoint(&dir),
            None => Ok(()),
        }
    }

    fn trainer(&self) -> Option<&Trainer> {
        Some(&self.trainer)
    }
}
