//! The seam between the worker actor and the maths: a [`ShardExecutor`] computes one
//! micro-batch's gradient, applies a reduced update, and saves/restores its state. The model
//! crate's LoRA trainer plugs in here; [`crate::toy`] has a small deterministic reference.

use tributary_protocol::{Digest, JobSpec, MicroBatch, NamedFile};

/// Why an executor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("executor setup failed: {0}")]
    Setup(String),
    #[error("gradient computation failed: {0}")]
    Compute(String),
    #[error("bad update: {0}")]
    Update(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("no executor knows base_model {0:?}")]
    UnknownModel(String),
}

/// One micro-batch's result.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroGrad {
    /// Sum of the loss over the micro-batch's tokens (or examples).
    pub loss_sum: f64,
    /// Supervised tokens (or examples) in the micro-batch: the loss's normalizer.
    pub tokens: u64,
    /// Flat gradient of the *summed* loss over the trainable parameters.
    pub grads: Vec<f32>,
}

/// What a job was loaded from: reported to the coordinator when the job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// Examples in the dataset (one epoch).
    pub examples: u64,
    /// BLAKE3 of the base model's files.
    pub base_model: Digest,
    /// BLAKE3 of the training data.
    pub data: Digest,
}

/// A job's training state on one worker.
///
/// Contract for data-parallel determinism: `gradients` for a given step and micro-batch must
/// depend only on the state after the previous `apply` and on the micro-batch (never on which
/// other micro-batches this worker got); `apply` with the same reduced gradient must produce
/// the same state on every worker.
pub trait ShardExecutor: Send + 'static {
    /// Gradient of the summed loss over `mb`'s examples at `step`.
    fn gradients(&mut self, step: u64, mb: &MicroBatch) -> Result<MicroGrad, ExecError>;
    /// Applies the step's update: `summed` is the fixed-order sum of every micro-batch's
    /// gradient, `tokens` the step's total token count (divide by it for the mean).
    fn apply(&mut self, step: u64, summed: &[f32], tokens: u64) -> Result<(), ExecError>;
    /// Opaque state: parameters, optimizer state, step, RNG.
    fn checkpoint(&self) -> Result<Vec<u8>, ExecError>;
    /// Replaces the state with a checkpoint.
    fn restore(&mut self, state: &[u8]) -> Result<(), ExecError>;
    /// Number of trainable parameters (the gradient length).
    fn num_params(&self) -> usize;
    /// The dataset size and the digests of the base model and data.
    fn sources(&self) -> Sources;
    /// The trained adapter as files (PEFT's `adapter_config.json` and
    /// `adapter_model.safetensors` for LoRA jobs).
    fn export(&self) -> Result<Vec<NamedFile>, ExecError>;
    /// Mean loss per token on the held-out examples and their count; `None` when the job
    /// holds none out (the default).
    fn eval_loss(&mut self) -> Result<Option<(f32, u64)>, ExecError> {
        Ok(None)
    }
}

/// Every plain file of `dir` (not recursive), sorted by name.
pub fn read_dir_files(dir: &std::path::Path) -> std::io::Result<Vec<NamedFile>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name))?;
            Ok(NamedFile { name, bytes })
        })
        .collect()
}

/// Builds an executor for a job spec (the `init` step).
pub trait ExecutorFactory: Send + Sync + 'static {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError>;
}
