//! Training a LoRA adapter with the base frozen: causal-LM loss, AdamW, accumulation, clipping, schedules, checkpoints.
//!
//! [`Trainer`] owns a frozen base model, an adapter and PyTorch-exact AdamW state. One
//! [`Trainer::train_step`] is one optimizer step over `grad_accum_steps` micro-batches:
//! the loss is the mean over every supervised token of the step (labels shifted by one,
//! `-100` ignored), so accumulating micro-batches computes what one big batch would.
//! For data-parallel training the same step splits into [`Trainer::compute_gradients`]
//! (run on each worker), [`LoraGradients::accumulate`] (summed in a fixed order) and
//! [`Trainer::apply_gradients`] (the one identical update). [`driver`] is the one training
//! loop every caller runs (batching, accumulation, evaluation, checkpoints, progress).

mod checkpoint;
pub mod driver;
pub(crate) mod dropout;
mod loss;
mod optim;
mod per_example;
mod schedule;
mod trainer;

use serde::{Deserialize, Serialize};

use crate::precision::Precision;

pub use checkpoint::TRAIN_CONFIG_FILE;
pub use loss::{Collated, chunked_nll, collate, loss_chunk_rows};
pub use optim::{AdamW, AdamWParams};
pub use schedule::Schedule;
pub use trainer::{LoraGradients, StepStats, Trainer};

/// Labels with this value are not trained on.
pub const IGNORE_INDEX: i64 = -100;

/// One tokenized training example. `labels[t]` is the target for predicting token `t`
/// from the tokens before it (transformers' convention: the loss shifts by one), or `-100`
/// to ignore it (prompt tokens of instruction data). `labels.len() == input_ids.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Targets, `-100` where ignored.
    pub labels: Vec<i64>,
}

impl TrainExample {
    /// An example trained on every token.
    pub fn causal(input_ids: Vec<u32>) -> Self {
        let labels = input_ids.iter().map(|&t| i64::from(t)).collect();
        Self { input_ids, labels }
    }

    /// Number of tokens that contribute to the loss (labels after the shift that are not -100).
    pub fn supervised_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }
}

/// Optimizer, schedule and batching settings; saved beside the adapter as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW (beta1, beta2).
    pub betas: (f64, f64),
    /// AdamW epsilon (added outside the square root, as PyTorch does).
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warm-up steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// Decay after warm-up.
    pub schedule: Schedule,
    /// Total optimizer steps (for the decay schedules).
    pub total_steps: u64,
    /// Micro-batches per optimizer step.
    pub grad_accum_steps: usize,
    /// Global gradient-norm clipping threshold.
    pub max_grad_norm: Option<f64>,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Seed for adapter initialisation, LoRA dropout and data order.
    pub seed: u64,
    /// Arithmetic of the frozen base's products ([`Precision`]); absent in configs saved
    /// before it existed, which were f32.
    pub precision: Precision,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping
    /// them from the forward pass (`decoder/recompute.rs`): the same gradients to float
    /// rounding, far less memory, one more forward pass through the layers per step. Absent
    /// in configs saved before it existed: off.
    pub recompute: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            total_steps: 100,
            grad_accum_steps: 1,
            max_grad_norm: Some(1.0),
            batch_size: 4,
            seed: 0,
            precision: Precision::F32,
            recompute: false,
        }
    }
}

impl TrainConfig {
    /// The learning rate used for the optimizer step that follows `completed` steps.
    pub fn lr_at(&self, completed: u64) -> f64 {
        self.lr
            * self
                .schedule
                .factor(completed, self.warmup_steps, self.total_steps)
    }
}
