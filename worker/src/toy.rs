//! A small deterministic executor: linear regression on synthetic data, in pure Rust, with
//! every float sum in a fixed order. It is the reference for data-parallel determinism tests
//! and the executor behind `base_model = "builtin:linear"` until the model crate's trainer
//! is wired in.
//!
//! Example `i` (for any `i`, wrapping over `examples`) has features `x = f(seed, i)` of length
//! `dim` and target `y = w* . x` with a fixed `w*`; the loss is the mean squared error.

use tributary_protocol::{JobSpec, MicroBatch};

use tributary_protocol::{Digest, NamedFile};

use crate::executor::{ExecError, ExecutorFactory, MicroGrad, ShardExecutor, Sources};

/// The `base_model` value that selects this executor.
pub const BUILTIN_LINEAR: &str = "builtin:linear";

/// Features per example.
pub const DIM: usize = 16;
/// Examples in the synthetic dataset.
pub const EXAMPLES: u64 = 1024;

/// splitmix64: a tiny, well-mixed deterministic generator.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(seed: u64, a: u64, b: u64) -> f32 {
    let r = mix(seed ^ mix(a ^ mix(b)));
    // 24 random bits into [-1, 1).
    ((r >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// Features and target of example `i`.
pub fn example(seed: u64, i: u64) -> ([f32; DIM], f32) {
    let i = i % EXAMPLES;
    let mut x = [0f32; DIM];
    let mut y = 0f32;
    for (j, xj) in x.iter_mut().enumerate() {
        *xj = unit(seed, i, j as u64);
        let w_true = (j as f32 + 1.0) / DIM as f32 - 0.5;
        y += w_true * *xj;
    }
    (x, y)
}

/// Linear regression trained with SGD (with linear warm-up).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearExecutor {
    seed: u64,
    lr: f32,
    warmup: u64,
    step: u64,
    w: Vec<f32>,
}

impl LinearExecutor {
    pub fn new(spec: &JobSpec) -> Self {
        Self {
            seed: spec.train.seed,
            lr: spec.train.lr as f32,
            warmup: spec.train.warmup,
            step: 0,
            w: vec![0.0; DIM + 1],
        }
    }

    /// Current parameters (weights then bias).
    pub fn params(&self) -> &[f32] {
        &self.w
    }

    /// Decodes the parameters out of a checkpoint.
    pub fn params_of_checkpoint(state: &[u8]) -> Result<(u64, Vec<f32>), ExecError> {
        if state.len() < 8 || !(state.len() - 8).is_multiple_of(4) {
            return Err(ExecError::Checkpoint(format!(
                "checkpoint of {} bytes is malformed",
                state.len()
            )));
        }
        let Some((step, weights)) = state.split_first_chunk::<8>() else {
            return Err(ExecError::Checkpoint(format!(
                "checkpoint of {} bytes is malformed",
                state.len()
            )));
        };
        let w = weights
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect();
        Ok((u64::from_le_bytes(*step), w))
    }
}

impl ShardExecutor for LinearExecutor {
    fn gradients(&mut self, _step: u64, mb: &MicroBatch) -> Result<MicroGrad, ExecError> {
        if mb.len == 0 {
            return Err(ExecError::Compute("empty micro-batch".into()));
        }
        let mut g = vec![0f32; DIM + 1];
        let mut loss = 0f64;
        for k in 0..u64::from(mb.len) {
            let (x, y) = example(self.seed, mb.start + k);
            // Weights then bias: DIM + 1 values, the bias last.
            let (bias, weights) = self.w.split_last().unwrap_or((&0.0, &[]));
            let mut pred = *bias;
            for (w, xj) in weights.iter().zip(&x) {
                pred += w * xj;
            }
            let err = pred - y;
            loss += f64::from(err * err);
            if let Some((g_bias, g_weights)) = g.split_last_mut() {
                for (gj, xj) in g_weights.iter_mut().zip(&x) {
                    *gj += 2.0 * err * xj;
                }
                *g_bias += 2.0 * err;
            }
        }
        Ok(MicroGrad {
            loss_sum: loss,
            tokens: u64::from(mb.len),
            grads: g,
        })
    }

    fn apply(&mut self, step: u64, summed: &[f32], tokens: u64) -> Result<(), ExecError> {
        if summed.len() != self.w.len() {
            return Err(ExecError::Update(format!(
                "gradient has {} values, the model has {} parameters",
                summed.len(),
                self.w.len()
            )));
        }
        if tokens == 0 {
            return Err(ExecError::Update("the step has no examples".into()));
        }
        let n = tokens as f32;
        let scale = if self.warmup > 0 && step < self.warmup {
            (step + 1) as f32 / self.warmup as f32
        } else {
            1.0
        };
        for (w, g) in self.w.iter_mut().zip(summed) {
            *w -= self.lr * scale * (g / n);
        }
        self.step = step + 1;
        Ok(())
    }

    fn checkpoint(&self) -> Result<Vec<u8>, ExecError> {
        let mut out = Vec::with_capacity(8 + self.w.len() * 4);
        out.extend_from_slice(&self.step.to_le_bytes());
        for w in &self.w {
            out.extend_from_slice(&w.to_le_bytes());
        }
        Ok(out)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), ExecError> {
        let (step, w) = Self::params_of_checkpoint(state)?;
        if w.len() != self.w.len() {
            return Err(ExecError::Checkpoint(format!(
                "checkpoint has {} parameters, the model has {}",
                w.len(),
                self.w.len()
            )));
        }
        self.step = step;
        self.w = w;
        Ok(())
    }

    fn num_params(&self) -> usize {
        self.w.len()
    }

    fn sources(&self) -> Sources {
        Sources {
            examples: EXAMPLES,
            base_model: Digest::of(BUILTIN_LINEAR.as_bytes()),
            data: Digest::of(
                format!("{BUILTIN_LINEAR} examples={EXAMPLES} seed={}", self.seed).as_bytes(),
            ),
        }
    }

    /// The parameters as one safetensors tensor `weight` (weights then bias) and a config
    /// naming the model; the same two file names a PEFT adapter has.
    fn export(&self) -> Result<Vec<NamedFile>, ExecError> {
        let err = |e: &dyn std::fmt::Display| ExecError::Checkpoint(e.to_string());
        let tmp = tempfile::tempdir().map_err(|e| err(&e))?;
        let mut tensors = std::collections::BTreeMap::new();
        tensors.insert(
            "weight".to_string(),
            tributary_model::weights::HostTensor {
                shape: vec![self.w.len()],
                values: self.w.clone(),
            },
        );
        tributary_model::weights::save_f32(&tmp.path().join("adapter_model.safetensors"), &tensors)
            .map_err(|e| err(&e))?;
        let config = format!("{{\"peft_type\":\"{BUILTIN_LINEAR}\",\"dim\":{DIM}}}");
        std::fs::write(tmp.path().join("adapter_config.json"), config).map_err(|e| err(&e))?;
        crate::executor::read_dir_files(tmp.path()).map_err(|e| err(&e))
    }
}

/// Creates [`LinearExecutor`]s for specs whose `base_model` is [`BUILTIN_LINEAR`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearFactory;

impl ExecutorFactory for LinearFactory {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
        if spec.base_model != BUILTIN_LINEAR {
            return Err(ExecError::UnknownModel(spec.base_model.clone()));
        }
        Ok(Box::new(LinearExecutor::new(spec)))
    }
}

/// Wraps another factory's executors with a fixed delay per micro-batch. Used by fault tests
/// to make "mid-job" a wide enough window to act in; it changes timing, never results.
#[derive(Clone)]
pub struct DelayedFactory {
    pub inner: std::sync::Arc<dyn ExecutorFactory>,
    pub delay: std::time::Duration,
}

struct Delayed {
    inner: Box<dyn ShardExecutor>,
    delay: std::time::Duration,
}

impl ShardExecutor for Delayed {
    fn gradients(&mut self, step: u64, mb: &MicroBatch) -> Result<MicroGrad, ExecError> {
        std::thread::sleep(self.delay);
        self.inner.gradients(step, mb)
    }
    fn apply(&mut self, step: u64, summed: &[f32], tokens: u64) -> Result<(), ExecError> {
        self.inner.apply(step, summed, tokens)
    }
    fn checkpoint(&self) -> Result<Vec<u8>, ExecError> {
        self.inner.checkpoint()
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), ExecError> {
        self.inner.restore(state)
    }
    fn num_params(&self) -> usize {
        self.inner.num_params()
    }
    fn sources(&self) -> Sources {
        self.inner.sources()
    }
    fn export(&self) -> Result<Vec<NamedFile>, ExecError> {
        self.inner.export()
    }
}

impl ExecutorFactory for DelayedFactory {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
        Ok(Box::new(Delayed {
            inner: self.inner.create(spec)?,
            delay: self.delay,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec::from_toml_str(
            "base_model = \"builtin:linear\"\ndata = \"synthetic\"\n[train]\nsteps = 50\nbatch_size = 8\nlr = 0.1\n",
        )
        .unwrap()
    }

    #[test]
    fn sgd_reduces_the_loss() {
        let mut ex = LinearExecutor::new(&spec());
        let mb = MicroBatch {
            index: 0,
            start: 0,
            len: 64,
        };
        let first = ex.gradients(0, &mb).unwrap().loss_sum;
        for step in 0..100 {
            let g = ex.gradients(step, &mb).unwrap();
            ex.apply(step, &g.grads, g.tokens).unwrap();
        }
        let last = ex.gradients(100, &mb).unwrap().loss_sum;
        assert!(last < first * 0.1, "loss {first} -> {last}");
    }

    #[test]
    fn checkpoint_round_trips_and_checks_sizes() {
        let mut ex = LinearExecutor::new(&spec());
        ex.apply(0, &[0.5; DIM + 1], 1).unwrap();
        let state = ex.checkpoint().unwrap();
        let mut other = LinearExecutor::new(&spec());
        other.restore(&state).unwrap();
        assert_eq!(other, ex);
        assert!(other.restore(&state[..10]).is_err());
        assert!(ex.apply(1, &[0.0; 3], 1).is_err());
        assert!(ex.apply(1, &[0.0; DIM + 1], 0).is_err());
    }

    #[test]
    fn factory_refuses_other_models() {
        let mut s = spec();
        s.base_model = "models/llama".into();
        let err = LinearFactory.create(&s).err().unwrap().to_string();
        assert!(err.contains("models/llama"), "{err}");
    }
}
