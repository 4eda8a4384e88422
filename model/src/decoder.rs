//! The Llama/Qwen2 decoder: embeddings, RMSNorm, RoPE, GQA attention with a KV cache, SwiGLU MLP, lm_head.
//!
//! The computation follows transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` in
//! float32 step by step (RMSNorm as `x·rsqrt(mean(x²)+eps)·w`, RoPE with `rotate_half`,
//! softmax attention with a `head_dim^-½` scale, key/value heads shared by groups of query
//! heads), so logits agree with the reference to float rounding.
//!
//! Batches are left-padded: row `i` of `input_ids` starts with `left_pad[i]` padding
//! positions that are masked out as keys, and its RoPE positions start at 0 on its first
//! real token, so a padded row computes exactly what the row would alone.
// Decoder math over tensors whose shapes were checked when the checkpoint loaded
// (`weights::TensorStore::tensor`, `gguf::mapping`), indexed in hot loops. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

mod attention;
mod cache;
mod embed;
mod gguf_blocks;
mod host_math;
mod host_step;
mod layer;
mod linear;
mod load;
mod mixed;
mod paged;
mod per_example;
mod recompute;
mod storage;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Int, Tensor, TensorData};

pub use cache::KvCache;
pub use embed::{HEAD_CHUNK_ROWS, TokenEmbedding};
pub use gguf_blocks::GgufBlocksReport;
use gguf_blocks::HostHead;
pub use host_step::HostStep;
use host_step::HostWeights;
use layer::{LayerInputs, fused_attention};
pub use linear::{HOST_KERNEL_MAX_ROWS, Linear, LinearWeight};
use mixed::LoraSel;
pub use mixed::MixedLora;
pub use paged::{PagedKvCache, SeqChunk};
pub use per_example::PerExampleLora;

use crate::config::{GenerationConfig, ModelConfig};
use crate::error::ModelError;
use crate::fused;
use crate::lora::{LoraAdapter, TargetModule};
use crate::precision::{Bf16Weight, bf16_matmul, frozen_bf16_matmul};
use crate::train::dropout::LoraDropout;
use crate::weights::{TensorStore, read_f32};

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// `input_layernorm.weight`.
    pub input_norm: Tensor<1>,
    /// Attention projections q, k, v, o.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    /// `post_attention_layernorm.weight`.
    pub post_norm: Tensor<1>,
    /// MLP gate projection.
    pub gate: Linear,
    /// MLP up projection.
    pub up: Linear,
    /// MLP down projection.
    pub down: Linear,
}

impl DecoderLayer {
    /// The base projection for a LoRA target.
    pub fn linear(&self, t: TargetModule) -> &Linear {
        match t {
            TargetModule::Q => &self.q,
            TargetModule::K => &self.k,
            TargetModule::V => &self.v,
            TargetModule::O => &self.o,
            TargetModule::Gate => &self.gate,
            TargetModule::Up => &self.up,
            TargetModule::Down => &self.down,
        }
    }

    /// Mutable access to a projection (used by merge).
    pub fn linear_mut(&mut self, t: TargetModule) -> &mut Linear {
        match t {
            TargetModule::Q => &mut self.q,
            TargetModule::K => &mut self.k,
            TargetModule::V => &mut self.v,
            TargetModule::O => &mut self.o,
            TargetModule::Gate => &mut self.gate,
            TargetModule::Up => &mut self.up,
            TargetModule::Down => &mut self.down,
        }
    }
}

/// A causal language model (Llama or Qwen2) with its weights on one device.
#[derive(Debug, Clone)]
pub struct CausalLm {
    cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    device: Device,
    /// `model.embed_tokens.weight` `[vocab, hidden]` (f32, or NF4 after
    /// [`CausalLm::load_nf4`] / [`CausalLm::quantize_nf4`]).
    pub embed: TokenEmbedding,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer>,
    /// `model.norm.weight`.
    pub norm: Tensor<1>,
    /// The output projection transposed, `[hidden, vocab]`: `lm_head.weight`ᵀ; `None` when
    /// the checkpoint ties it to the embedding (the products then read `embed` itself: no
    /// second copy, see `decoder/embed.rs`).
    pub head_t: Option<Tensor<2>>,
    /// The lm_head for the host kernels: packed in bf16/f32 after [`CausalLm::to_bf16`] /
    /// [`CausalLm::to_packed_f32`], or the GGUF file's blocks after
    /// [`CausalLm::use_gguf_blocks`].
    head_host: Option<HostHead>,
    /// `head_t` in bf16 for mixed-precision training, after [`CausalLm::to_train_bf16`]
    /// (used for every many-row lm_head product then).
    head_bf16: Option<Arc<Bf16Weight>>,
    /// Whether decode calls may take the host step (`host_step.rs`).
    host_step: HostStep,
    /// The host step's copies of norms and biases, made on its first call and dropped by
    /// every `&mut self` method here. (Replacing `norm`, a layer's norms or a bias through
    /// the public fields directly is not seen: call [`CausalLm::set_host_step`] after.)
    host_weights: OnceLock<HostWeights>,
}

/// Training-only options threaded through the forward pass.
pub(crate) struct TrainOpts<'a> {
    /// LoRA dropout mask source (None: no dropout).
    pub dropout: Option<&'a mut LoraDropout>,
}

impl CausalLm {
    /// Loads a Hugging Face checkpoint directory: `config.json`, `generation_config.json`
    /// (optional) and `model.safetensors` or a sharded `model.safetensors.index.json`.
    /// f16/bf16 weights are upcast to f32. A `.gguf` file is loaded too (dequantized to
    /// f32, see [`crate::gguf`]).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let _span = tracing::info_span!("model_load", dir = %dir.display()).entered();
        let c = crate::source::open_checkpoint(dir)?;
        Self::from_store(c.config, c.generation, &c.store, device)
    }

    /// [`CausalLm::load`] with the seven projections of every layer stored in NF4 as they are
    /// read (QLoRA's frozen base), so the f32 copies of those weights never exist; same
    /// result as `load` followed by [`CausalLm::quantize_nf4`].
    pub fn load_nf4(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let _span = tracing::info_span!("model_load_nf4", dir = %dir.display()).entered();
        let c = crate::source::open_checkpoint(dir)?;
        Self::from_store_with(c.config, c.generation, &c.store, true, device)
    }

    /// Builds the model from already opened tensors.
    pub fn from_store(
        cfg: ModelConfig,
        gen_cfg: GenerationConfig,
        store: &TensorStore,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Self::from_store_with(cfg, gen_cfg, store, false, device)
    }

    /// Chooses whether decode calls that the host kernels can serve run the host step
    /// (the default, [`HostStep::Auto`]) or burn's operations; also drops the host step's
    /// copies of norms and biases.
    pub fn set_host_step(&mut self, mode: HostStep) {
        self.host_step = mode;
        self.host_weights = OnceLock::new();
    }

    /// The path decode calls take where the host step could serve them.
    pub fn host_step(&self) -> HostStep {
        self.host_step
    }

    /// The host step's copies of norms, biases and RoPE frequencies (read on first use).
    fn host_weights(&self) -> Result<&HostWeights, ModelError> {
        Ok(match self.host_weights.get() {
            Some(w) => w,
            None => {
                let w = HostWeights::read(self)?;
                self.host_weights.get_or_init(|| w)
            }
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Decoding defaults (eos ids, pad id).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.gen_cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty KV cache for `batch` rows.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(batch, self.cfg.num_hidden_layers)
    }

    /// The same model on the autodiff variant of its device (weights untracked: frozen).
    /// Used by training; cheap (the weights are shared, not copied).
    pub fn to_autodiff(&self) -> Self {
        let mut m = self.clone();
        m.device = self.device.clone().autodiff();
        m.map_tensors(|t| t.autodiff(), |t| t.autodiff());
        m
    }

    fn map_tensors(
        &mut self,
        f2: impl Fn(Tensor<2>) -> Tensor<2>,
        f1: impl Fn(Tensor<1>) -> Tensor<1>,
    ) {
        self.host_weights = OnceLock::new();
        self.embed.map_dense(&f2);
        self.norm = f1(self.norm.clone());
        self.head_t = self.head_t.take().map(&f2);
        for l in &mut self.layers {
            l.input_norm = f1(l.input_norm.clone());
            l.post_norm = f1(l.post_norm.clone());
            for t in TargetModule::ALL {
                let lin = l.linear_mut(t);
                if let LinearWeight::Dense(w) = &lin.weight_t {
                    lin.weight_t = LinearWeight::Dense(f2(w.clone()));
                }
                lin.bias = lin.bias.take().map(&f1);
            }
        }
    }

    /// Token ids as an Int tensor on this model's device (`rows` must all have the same length).
    pub fn ids_tensor(&self, rows: &[Vec<u32>]) -> Result<Tensor<2, Int>, ModelError> {
        let b = rows.len();
        let s = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != s) {
            return Err(ModelError::Input(
                "all rows of a batch must have the same length (pad them)".into(),
            ));
        }
        let flat: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [b, s]),
            &self.device,
        ))
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]`.
    ///
    /// Rows are LEFT-padded: the first `left_pad[i]` positions of row `i` are padding (their
    /// ids are ignored, they are masked out as keys, and the row's RoPE positions start at 0
    /// on its first real token); an empty `left_pad` means no padding. With a `cache`, the
    /// keys and values of this call are appended to it and attention covers the cached
    /// positions too (a later call continues the same rows). `lora` adds an adapter's
    /// unmerged deltas. Panics only on inconsistent shapes; use [`CausalLm::try_forward`]
    /// for a checked call.
    // Panicking on bad shapes is this convenience's contract (tests and examples); every
    // serving and training path calls `try_forward` and gets an error instead.
    #[allow(clippy::panic)]
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: Option<&LoraAdapter>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        match self.try_forward(input_ids, left_pad, lora, cache) {
            Ok(t) => t,
            Err(e) => panic!("CausalLm::forward: {e}"),
        }
    }

    /// [`CausalLm::forward`] with its inputs checked.
    pub fn try_forward(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: Option<&LoraAdapter>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>, ModelError> {
        let hidden = self.forward_hidden(
            input_ids,
            left_pad,
            lora,
            cache,
            TrainOpts { dropout: None },
        )?;
        Ok(self.lm_head_forward(hidden))
    }

    /// Like [`CausalLm::try_forward`], but returns only the last position's logits
    /// `[batch, vocab]` (what generation needs), skipping the lm_head for the other positions.
    pub fn forward_last(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: Option<&LoraAdapter>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<2>, ModelError> {
        let sel = LoraSel::single(lora);
        self.last_logits(input_ids, left_pad, &sel, cache)
    }

    /// [`CausalLm::forward_last`] for a batch whose rows use different adapters: the base
    /// projections run once for the whole batch, each adapter's delta on its rows only.
    pub fn forward_last_mixed(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: &MixedLora<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<2>, ModelError> {
        let [b, s] = input_ids.dims();
        if lora.rows() != b {
            return Err(ModelError::Input(format!(
                "{} row adapters for a batch of {b}",
                lora.rows()
            )));
        }
        let sel = LoraSel::mixed(lora, s, &self.device);
        self.last_logits(input_ids, left_pad, &sel, cache)
    }

    /// The last position's logits `[b, vocab]`; after the host step, straight from its
    /// host buffer (through the packed lm_head when there is one).
    fn last_logits(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: &LoraSel<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<2>, ModelError> {
        let [b, s] = input_ids.dims();
        let (h, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        match self.forward_hidden_any(input_ids, left_pad, lora, cache, None)? {
            Hidden::Host(hs) => {
                let last: Vec<f32> = (0..b)
                    .flat_map(|i| &hs[(i * s + s - 1) * h..][..h])
                    .copied()
                    .collect();
                if let Some(p) = &self.head_host {
                    let simd = self.host_step == HostStep::Auto;
                    let logits = p.matmul_with(&last, b, simd);
                    return Ok(Tensor::from_data(
                        TensorData::new(logits, [b, vocab]),
                        &self.device,
                    ));
                }
                let x = Tensor::from_data(TensorData::new(last, [b, 1, h]), &self.device);
                Ok(self.lm_head_forward(x).reshape([b, vocab]))
            }
            Hidden::Burn(hidden) => {
                let last = hidden.slice([0..b, s - 1..s, 0..h]);
                Ok(self.lm_head_forward(last).reshape([b, vocab]))
            }
        }
    }

    /// Applies the final norm's output projection: hidden `[b, s, h]` → logits `[b, s, vocab]`.
    pub(crate) fn lm_head_forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [b, s, h] = hidden.dims();
        let x = hidden.reshape([b * s, h]);
        // A tied head has no f32 matrix holding the packed (rounded) values, so every
        // untracked call goes through the packed kernel, a bounded number of rows at a time.
        if let Some(p) = &self.head_host
            && (b * s <= linear::HOST_KERNEL_MAX_ROWS
                || self.head_t.is_none()
                || matches!(p, HostHead::Blocks(_)))
            && !x.is_autodiff()
            && let Ok(xs) = read_f32(&x, "hidden")
        {
            let simd = crate::kernels::simd_available();
            let logits: Vec<f32> = xs
                .chunks(linear::HOST_KERNEL_MAX_ROWS * h)
                .flat_map(|rows| p.matmul_with(rows, rows.len() / h.max(1), simd))
                .collect();
            return Tensor::from_data(
                TensorData::new(logits, [b, s, self.cfg.vocab_size]),
                &self.device,
            );
        }
        if let Some(w) = &self.head_bf16 {
            let y = match frozen_bf16_matmul(w, &x) {
                Some(y) => y,
                None => bf16_matmul(x, w),
            };
            return y.reshape([b, s, self.cfg.vocab_size]);
        }
        let y = match &self.head_t {
            Some(w) => x.matmul(w.clone()),
            None => self.embed.head_forward(x),
        };
        y.reshape([b, s, self.cfg.vocab_size])
    }

    /// The decoder without the lm_head: normalised hidden states `[b, s, hidden]`.
    pub(crate) fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: Option<&LoraAdapter>,
        cache: Option<&mut KvCache>,
        opts: TrainOpts<'_>,
    ) -> Result<Tensor<3>, ModelError> {
        let sel = LoraSel::single(lora);
        self.forward_hidden_sel(input_ids, left_pad, &sel, cache, opts.dropout)
    }

    /// [`CausalLm::forward_hidden`] with each row adding the delta of its own copy of the
    /// adapter ([`PerExampleLora`]; no dropout, no cache): per-example gradients.
    pub(crate) fn forward_hidden_per_example(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: &PerExampleLora,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, _] = input_ids.dims();
        if lora.rows() != b {
            return Err(ModelError::Input(format!(
                "per-example adapter for {} rows, the batch has {b}",
                lora.rows()
            )));
        }
        let sel = LoraSel::PerExample(lora);
        self.forward_hidden_sel(input_ids, left_pad, &sel, None, None)
    }

    fn forward_hidden_sel(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: &LoraSel<'_>,
        cache: Option<&mut KvCache>,
        dropout: Option<&mut LoraDropout>,
    ) -> Result<Tensor<3>, ModelError> {
        let [b, s] = input_ids.dims();
        Ok(
            match self.forward_hidden_any(input_ids, left_pad, lora, cache, dropout)? {
                Hidden::Host(hs) => Tensor::from_data(
                    TensorData::new(hs, [b, s, self.cfg.hidden_size]),
                    &self.device,
                ),
                Hidden::Burn(t) => t,
            },
        )
    }

    /// The decoder without the lm_head, on the host step where it can serve the call
    /// (`host_step.rs`), otherwise on burn.
    fn forward_hidden_any(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        lora: &LoraSel<'_>,
        mut cache: Option<&mut KvCache>,
        mut dropout: Option<&mut LoraDropout>,
    ) -> Result<Hidden, ModelError> {
        let [b, s] = input_ids.dims();
        let cfg = &self.cfg;
        if s == 0 || b == 0 {
            return Err(ModelError::Input("empty input_ids".into()));
        }
        let pads: Vec<usize> = if left_pad.is_empty() {
            vec![0; b]
        } else {
            left_pad.to_vec()
        };
        if pads.len() != b {
            return Err(ModelError::Input(format!(
                "left_pad has {} entries for a batch of {b}",
                pads.len()
            )));
        }
        if let Some(p) = pads.iter().find(|&&p| p > s) {
            return Err(ModelError::Input(format!(
                "left_pad {p} exceeds the sequence length {s}"
            )));
        }
        lora.check_layers(cfg.num_hidden_layers)?;
        if let Some(c) = cache.as_deref()
            && (c.batch() != b || c.layer_count() != cfg.num_hidden_layers)
        {
            return Err(ModelError::Input(format!(
                "cache is for {} rows and {} layers, the call has {b} rows and the model {} layers",
                c.batch(),
                c.layer_count(),
                cfg.num_hidden_layers
            )));
        }
        // Positions and key validity for this call.
        let plan = match cache.as_deref_mut() {
            Some(c) => c.plan(&pads, s)?,
            None => cache::Plan::fresh(&pads, s),
        };
        if dropout.is_none() && host_step::eligible(self, b * s) {
            let weights = self.host_weights()?;
            let ids = input_ids.clone();
            if let Some(hs) = host_step::run(self, weights, ids, &plan, lora, cache.as_deref_mut())?
            {
                if let Some(c) = cache {
                    c.commit(plan);
                }
                return Ok(Hidden::Host(hs));
            }
        }

        let ids = input_ids.reshape([b * s]);
        let mut hs = self.embed.gather(ids, &self.device)?;
        let (cos, sin) = attention::rope_tables(&plan.positions, b, s, cfg, &self.device);
        let mask = attention::mask(&plan, b, s, &self.device);
        let fused_attn = hs
            .is_autodiff()
            .then(|| fused_attention(&plan, b, s, cfg, self.trains_in_bf16()));
        let mut burn_layers = match cache.as_deref_mut() {
            Some(c) => Some(c.burn_layers(&self.device)?),
            None => None,
        };

        let ctx = LayerInputs {
            cos,
            sin,
            mask,
            fused: fused_attn,
            b,
            s,
        };
        for l in 0..self.layers.len() {
            let layer_cache = burn_layers.as_deref_mut().and_then(|c| c.get_mut(l));
            hs = self.layer_forward(l, hs, lora, &mut dropout, &ctx, layer_cache);
        }
        if let Some(c) = cache {
            c.commit(plan);
        }
        let hs = rms_norm(hs, &self.norm, cfg.rms_norm_eps);
        Ok(Hidden::Burn(hs.reshape([b, s, cfg.hidden_size])))
    }
}

/// Hidden states from the host step (`[b·s, hidden]` row-major) or from burn (`[b, s, hidden]`).
/// (Made once per forward call and matched at once: boxing the tensor would buy nothing.)
#[allow(clippy::large_enum_variant)]
enum Hidden {
    Host(Vec<f32>),
    Burn(Tensor<3>),
}

/// RMSNorm over the last dimension of `x` `[n, h]`, as transformers computes it in float32
/// (one fused op under autodiff on burn-flex, [`fused::rms_norm`]).
pub fn rms_norm(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    match fused::rms_norm(&x, weight, eps) {
        Some(y) => y,
        None => fused::rms_norm_composite(x, weight, eps),
    }
}
