//! The training loop's step: gradients of the summed token loss through burn's autodiff,
//! clipping, the schedule and AdamW.
// Gradients may come from other workers: walk them with zips, index nothing.
#![deny(clippy::indexing_slicing)]

use burn::tensor::{Device, Tensor};

use super::dropout::{LoraDropout, mix};
use super::loss::{chunked_nll, collate, loss_chunk_rows};
use super::optim::{AdamW, AdamWParams};
use super::{TrainConfig, TrainExample};
use crate::decoder::{CausalLm, TrainOpts};
use crate::error::ModelError;
use crate::lora::{LoraAdapter, LoraConfig};
use crate::precision::Precision;
use crate::weights::{HostTensor, read_f32};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Optimizer steps completed, this one included (1 after the first step).
    pub step: u64,
    /// Mean loss over the step's supervised tokens.
    pub loss: f32,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Supervised tokens in the step.
    pub tokens: usize,
    /// Real input tokens in the step (for tokens/s).
    pub input_tokens: usize,
}

/// Gradients of the *summed* token loss with respect to every adapter tensor, with the
/// loss sum and token count they came from. Sum several with
/// [`LoraGradients::accumulate`] (always in the same order, for reproducibility), then
/// hand the total to [`Trainer::apply_gradients`], which divides by the token count.
#[derive(Debug, Clone)]
pub struct LoraGradients {
    /// Sum of the token losses.
    pub loss_sum: f64,
    /// Supervised tokens.
    pub tokens: usize,
    /// Real input tokens.
    pub input_tokens: usize,
    /// `[dA, dB]` per adapter module in the adapter's canonical order.
    pub grads: Vec<[Tensor<2>; 2]>,
}

impl LoraGradients {
    /// Adds `other` into `self` (element-wise sums; loss sums and token counts add).
    pub fn accumulate(&mut self, other: &LoraGradients) -> Result<(), ModelError> {
        if other.grads.len() != self.grads.len() {
            return Err(ModelError::Input(format!(
                "cannot add gradients of {} modules to gradients of {}",
                other.grads.len(),
                self.grads.len()
            )));
        }
        for (mine, theirs) in self.grads.iter_mut().zip(&other.grads) {
            if mine.iter().zip(theirs).any(|(m, t)| m.dims() != t.dims()) {
                return Err(ModelError::Input("gradient shapes differ".into()));
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m = m.clone().add(t.clone());
            }
        }
        self.loss_sum += other.loss_sum;
        self.tokens += other.tokens;
        self.input_tokens += other.input_tokens;
        Ok(())
    }

    /// The gradients read back to the host (`[dA, dB]` per module, canonical order), e.g.
    /// to send them to a coordinator.
    pub fn to_host(&self) -> Result<Vec<[HostTensor; 2]>, ModelError> {
        self.grads
            .iter()
            .map(|[a, b]| {
                Ok([
                    HostTensor::from_tensor(a, "grad A")?,
                    HostTensor::from_tensor(b, "grad B")?,
                ])
            })
            .collect()
    }

    /// Gradients received from elsewhere (the inverse of [`LoraGradients::to_host`]).
    pub fn from_host(
        loss_sum: f64,
        tokens: usize,
        input_tokens: usize,
        grads: &[[HostTensor; 2]],
        device: &Device,
    ) -> Result<Self, ModelError> {
        let grads = grads
            .iter()
            .map(|[a, b]| Ok([a.to_tensor::<2>(device)?, b.to_tensor::<2>(device)?]))
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            loss_sum,
            tokens,
            input_tokens,
            grads,
        })
    }

    /// The gradients of the *mean* loss (divided by the token count), as an adapter-shaped
    /// copy of `like` (handy for comparing with PyTorch or saving under PEFT names).
    pub fn mean_as_adapter(&self, like: &LoraAdapter) -> LoraAdapter {
        let mut out = like.clone();
        let n = self.tokens.max(1) as f64;
        for ((_, _, m), [da, db]) in out.iter_mut().zip(&self.grads) {
            m.a = da.clone().div_scalar(n);
            m.b = db.clone().div_scalar(n);
        }
        out
    }
}

/// Trains one LoRA adapter on a frozen base model.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub(super) base: CausalLm,
    pub(super) base_ad: CausalLm,
    pub(super) adapter: LoraAdapter,
    pub(super) optim: AdamW,
    pub(super) cfg: TrainConfig,
}

impl Trainer {
    /// A fresh adapter on `model` (A kaiming-uniform from `cfg.seed`, B zero, as PEFT).
    pub fn new(model: &CausalLm, lora: LoraConfig, cfg: TrainConfig) -> Result<Self, ModelError> {
        let adapter = LoraAdapter::init(lora, model.config(), cfg.seed, model.device())?;
        Self::from_adapter(model, adapter, cfg)
    }

    /// Continues training an existing adapter (fresh optimizer state, step 0).
    pub fn from_adapter(
        model: &CausalLm,
        adapter: LoraAdapter,
        cfg: TrainConfig,
    ) -> Result<Self, ModelError> {
        if cfg.grad_accum_steps == 0 || cfg.batch_size == 0 {
            return Err(ModelError::config(
                "train config",
                "grad_accum_steps/batch_size",
                "must be positive",
            ));
        }
        if adapter.num_layers() != model.config().num_hidden_layers {
            return Err(ModelError::Input(format!(
                "adapter has {} layers, the model {}",
                adapter.num_layers(),
                model.config().num_hidden_layers
            )));
        }
        let adapter = adapter.to_device(model.device());
        let optim = AdamW::new(&adapter, model.device());
        let mut base = model.clone();
        if cfg.precision == Precision::Bf16 {
            base.to_train_bf16()?;
        }
        let base_ad = base.to_autodiff();
        Ok(Self {
            base,
            base_ad,
            adapter,
            optim,
            cfg,
        })
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.optim.step
    }

    /// The base model (frozen).
    pub fn model(&self) -> &CausalLm {
        &self.base
    }

    /// A copy of the current adapter, for inference or saving.
    pub fn adapter(&self) -> LoraAdapter {
        self.adapter.clone()
    }

    fn pad_id(&self) -> u32 {
        self.base.generation_config().pad_token_id.unwrap_or(0)
    }

    /// Gradients of the summed loss of `examples` (one micro-batch). `first_example` is the
    /// index of `examples[0]` among all examples of the current optimizer step: LoRA dropout
    /// masks depend only on (seed, step, example index), so splitting a step's examples into
    /// micro-batches or across workers in any way draws the same masks.
    pub fn compute_gradients(
        &self,
        examples: &[TrainExample],
        first_example: u64,
    ) -> Result<LoraGradients, ModelError> {
        let _span = tracing::debug_span!(
            "compute_gradients",
            step = self.optim.step,
            first_example,
            n = examples.len()
        )
        .entered();
        let vocab = self.base.config().vocab_size;
        let c = collate(examples, self.pad_id(), vocab)?;
        let device = self.base.device();
        if c.tokens() == 0 {
            let grads = self
                .adapter
                .iter()
                .map(|(_, _, m)| {
                    [
                        Tensor::zeros(m.a.dims(), device),
                        Tensor::zeros(m.b.dims(), device),
                    ]
                })
                .collect();
            return Ok(LoraGradients {
                loss_sum: 0.0,
                tokens: 0,
                input_tokens: c.input_tokens,
                grads,
            });
        }
        let p = self.adapter.config.lora_dropout;
        let step_key = mix(self.cfg.seed, self.optim.step);
        let row_keys = (0..examples.len() as u64)
            .map(|i| mix(step_key, first_example + i))
            .collect();
        let seq = c.input_ids.first().map_or(0, Vec::len);
        let mut dropout = (p > 0.0).then(|| LoraDropout::new(p, row_keys, c.left_pad.clone(), seq));
        let ids = self.base_ad.ids_tensor(&c.input_ids)?;
        let chunk = loss_chunk_rows(vocab);
        let (loss_sum, out) = if self.cfg.recompute {
            let mut untracked = self.adapter.clone();
            for (_, _, m) in untracked.iter_mut() {
                m.a = m.a.clone().autodiff();
                m.b = m.b.clone().autodiff();
            }
            let head = |hidden| chunked_nll(&self.base_ad, hidden, &c, chunk, true);
            self.base_ad.recompute_gradients(
                ids,
                &c.left_pad,
                &untracked,
                dropout,
                Box::new(head),
            )?
        } else {
            let mut tracked = self.adapter.clone();
            for (_, _, m) in tracked.iter_mut() {
                m.a = m.a.clone().autodiff().require_grad();
                m.b = m.b.clone().autodiff().require_grad();
            }
            let hidden = self.base_ad.forward_hidden(
                ids,
                &c.left_pad,
                Some(&tracked),
                None,
                TrainOpts {
                    dropout: dropout.as_mut(),
                },
            )?;
            let (loss_sum, scalar) = chunked_nll(&self.base_ad, hidden, &c, chunk, true)?;
            let grads = scalar.backward();
            let mut out = Vec::new();
            for (_, _, m) in tracked.iter() {
                let grad = |t: &Tensor<2>| {
                    t.grad(&grads)
                        .unwrap_or_else(|| Tensor::zeros(t.dims(), device))
                };
                out.push([grad(&m.a), grad(&m.b)]);
            }
            (loss_sum, out)
        };
        Ok(LoraGradients {
            loss_sum,
            tokens: c.tokens(),
            input_tokens: c.input_tokens,
            grads: out,
        })
    }

    /// One optimizer step from summed gradients: divide by the token count, clip to
    /// `max_grad_norm` (global norm, as `torch.nn.utils.clip_grad_norm_`), AdamW at the
    /// scheduled learning rate.
    pub fn apply_gradients(&mut self, grads: LoraGradients) -> Result<StepStats, ModelError> {
        if grads.tokens == 0 {
            return Err(ModelError::Input(
                "the step has no supervised tokens (all labels are -100)".into(),
            ));
        }
        let n = grads.tokens as f64;
        let mut g: Vec<[Tensor<2>; 2]> = grads
            .grads
            .into_iter()
            .map(|[a, b]| [a.div_scalar(n), b.div_scalar(n)])
            .collect();
        let mut sq = 0.0f64;
        for pair in &g {
            for t in pair {
                let norm = read_f32(&t.clone().square().sum(), "grad")?
                    .first()
                    .copied()
                    .unwrap_or(0.0)
                    .sqrt();
                sq += f64::from(norm) * f64::from(norm);
            }
        }
        let grad_norm = sq.sqrt() as f32;
        if let Some(max) = self.cfg.max_grad_norm {
            let coef = max / (f64::from(grad_norm) + 1e-6);
            if coef < 1.0 {
                g = g
                    .into_iter()
                    .map(|[a, b]| [a.mul_scalar(coef), b.mul_scalar(coef)])
                    .collect();
            }
        }
        let lr = self.cfg.lr_at(self.optim.step);
        let params = AdamWParams {
            lr,
            betas: self.cfg.betas,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
        };
        self.optim.update(&mut self.adapter, &g, params)?;
        Ok(StepStats {
            step: self.optim.step,
            loss: (grads.loss_sum / n) as f32,
            lr,
            grad_norm,
            tokens: grads.tokens,
            input_tokens: grads.input_tokens,
        })
    }

    /// One optimizer step over `micro_batches` (normally `grad_accum_steps` of them).
    pub fn train_step(
        &mut self,
        micro_batches: &[Vec<TrainExample>],
    ) -> Result<StepStats, ModelError> {
        let _span = tracing::info_span!(
            "train_step",
            step = self.optim.step + 1,
            micro_batches = micro_batches.len()
        )
        .entered();
        let mut total: Option<LoraGradients> = None;
        let mut first = 0u64;
        for mb in micro_batches {
            let g = self.compute_gradients(mb, first)?;
            first += mb.len() as u64;
            match total.as_mut() {
                None => total = Some(g),
                Some(t) => t.accumulate(&g)?,
            }
        }
        let total = total
            .ok_or_else(|| ModelError::Input("train_step needs at least one micro-batch".into()))?;
        let stats = self.apply_gradients(total)?;
        tracing::info!(
            step = stats.step,
            loss = stats.loss,
            lr = stats.lr,
            grad_norm = stats.grad_norm,
            "step"
        );
        Ok(stats)
    }

    /// Mean loss over the supervised tokens of `examples` with the current adapter (no
    /// dropout, no gradients), in micro-batches of `batch_size`.
    pub fn eval_loss(&self, examples: &[TrainExample]) -> Result<f32, ModelError> {
        let _span = tracing::info_span!("eval_loss", n = examples.len()).entered();
        let mut sum = 0.0f64;
        let mut tokens = 0usize;
        for chunk in examples.chunks(self.cfg.batch_size.max(1)) {
            let c = collate(chunk, self.pad_id(), self.base.config().vocab_size)?;
            if c.tokens() == 0 {
                continue;
            }
            let ids = self.base.ids_tensor(&c.input_ids)?;
            let hidden = self.base.forward_hidden(
                ids,
                &c.left_pad,
                Some(&self.adapter),
                None,
                TrainOpts { dropout: None },
            )?;
            let chunk = loss_chunk_rows(self.base.config().vocab_size);
            sum += chunked_nll(&self.base, hidden, &c, chunk, false)?.0;
            tokens += c.tokens();
        }
        if tokens == 0 {
            return Err(ModelError::Input("no supervised tokens to evaluate".into()));
        }
        Ok((sum / tokens as f64) as f32)
    }
}
