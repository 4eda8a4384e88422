//! The decode step on the host: the whole layer stack on `Vec<f32>` buffers, for calls the
//! host kernels serve (every projection packed or NF4, no autodiff, no dropout, at most
//! [`HOST_KERNEL_MAX_ROWS`] rows).
//!
//! The burn path spends ~40 small tensor operations per layer between the projections (norms,
//! RoPE, the KV cache's `cat`, the attention matmuls and softmax, residual adds), and each
//! host projection's output had to become a tensor and be read back. Here the embedding
//! rows are read once, every projection goes through the host kernels on slices
//! ([`LoraSel::host_forward_slice`], LoRA deltas included), attention runs over the KV
//! cache's host store ([`HostKv`], appended in place), and one tensor is made at the end.
//!
//! The arithmetic follows the burn path step by step (see [`super::host_math`]); the tests
//! in `tests/host_step.rs` compare the two.
// Decoder math over tensors whose shapes were checked when the checkpoint loaded
// (`weights::TensorStore::tensor`, `gguf::mapping`), indexed in hot loops. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use burn::tensor::{Int, Tensor};

use super::cache::{HostKv, KvCache, Plan, scratch_store};
use super::host_math::{Heads, add_into, attend, rms_norm, rope, silu_mul};
use super::linear::HOST_KERNEL_MAX_ROWS;
use super::mixed::LoraSel;
use super::{CausalLm, attention};
use crate::error::ModelError;
use crate::lora::TargetModule;
use crate::weights::read_f32;

/// Which path [`CausalLm`]'s decode calls take when the host step could serve them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostStep {
    /// The host step with AVX-512 where the CPU has it (the default).
    #[default]
    Auto,
    /// The host step with the portable loops only (kernels included), for tests.
    Portable,
    /// Never the host step: every call goes through burn.
    Off,
}

/// Host copies of the small weights the step reads besides the projections: norms, biases
/// and RoPE's frequencies (made on the first host step, dropped when the model changes).
#[derive(Debug, Clone)]
pub(crate) struct HostWeights {
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    inv_freq: Vec<f32>,
}

#[derive(Debug, Clone)]
struct HostLayer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// Per [`TargetModule::ALL`] index.
    bias: [Option<Vec<f32>>; 7],
}

impl HostWeights {
    pub(crate) fn read(model: &CausalLm) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(model.layers.len());
        for (l, layer) in model.layers.iter().enumerate() {
            let mut bias: [Option<Vec<f32>>; 7] = Default::default();
            for t in TargetModule::ALL {
                if let Some(b) = &layer.linear(t).bias {
                    bias[t.index()] = Some(read_f32(b, &format!("{}.bias", t.path(l)))?);
                }
            }
            layers.push(HostLayer {
                input_norm: read_f32(&layer.input_norm, "input_layernorm.weight")?,
                post_norm: read_f32(&layer.post_norm, "post_attention_layernorm.weight")?,
                bias,
            });
        }
        Ok(Self {
            layers,
            norm: read_f32(&model.norm, "model.norm.weight")?,
            inv_freq: attention::inv_freq(model.config()),
        })
    }
}

/// Whether a call of `rows` rows (batch × positions) can take the host step.
pub(crate) fn eligible(model: &CausalLm, rows: usize) -> bool {
    model.host_step != HostStep::Off
        && rows <= HOST_KERNEL_MAX_ROWS
        && !model.embed.is_autodiff()
        && model.layers.iter().all(|layer| {
            TargetModule::ALL
                .iter()
                .all(|&t| layer.linear(t).weight_t.is_host_capable())
        })
}

/// Where a host step's keys and values go and how its queries attend to them: the KV
/// cache's host store for a batch of equal-length rows ([`KvCache`], the generation loop's
/// path), or a paged pool where every sequence has its own length (`paged.rs`, serving).
pub(crate) trait HostAttention {
    /// Stores the keys and values `[n, kv·dim]` of this call's `n` positions in `layer`.
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]);
    /// Attention of the queries `[n, heads·dim]` (RoPE applied) in `layer` over the keys
    /// each may see (appended ones included): `[n, heads·dim]`.
    fn attend(&self, layer: usize, q: &[f32], simd: bool) -> Vec<f32>;
}

/// The KV cache's host store (or a scratch one) with one call's plan: rows of `s` positions
/// after `plan.past` cached ones.
struct Contiguous<'a> {
    kv: &'a mut HostKv,
    plan: &'a Plan,
    b: usize,
    s: usize,
    heads: Heads,
}

impl HostAttention for Contiguous<'_> {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        append(
            self.kv,
            layer,
            k,
            v,
            self.plan.past,
            self.b,
            self.s,
            self.heads,
        );
    }

    fn attend(&self, layer: usize, q: &[f32], simd: bool) -> Vec<f32> {
        attend(q, self.kv, layer, self.plan, self.s, self.heads, simd)
    }
}

/// The key/value head layout of `model`.
pub(crate) fn heads_of(model: &CausalLm) -> Heads {
    let cfg = model.config();
    Heads {
        query: cfg.num_attention_heads,
        kv: cfg.num_key_value_heads,
        dim: cfg.head_dim,
    }
}

/// Runs the layer stack for `input_ids` `[b, s]` on the host and returns the final-normed
/// hidden states `[b·s, hidden]` row-major; keys and values go to `cache` (its host store)
/// or to a scratch store. The caller commits `plan` to the cache afterwards. `Ok(None)`
/// where a projection cannot run on the host after all (LoRA factors that do not fit):
/// nothing is committed then, and the burn path can take the call.
pub(crate) fn run(
    model: &CausalLm,
    weights: &HostWeights,
    input_ids: Tensor<2, Int>,
    plan: &Plan,
    lora: &LoraSel<'_>,
    cache: Option<&mut KvCache>,
) -> Result<Option<Vec<f32>>, ModelError> {
    let [b, s] = input_ids.dims();
    let heads = heads_of(model);
    let mut scratch: HostKv;
    let kv = match cache {
        Some(c) => c.host_store(heads.kv, heads.dim, s)?,
        None => {
            scratch = scratch_store(b, model.layers.len(), heads.kv, heads.dim, s);
            &mut scratch
        }
    };
    let mut attention = Contiguous {
        kv,
        plan,
        b,
        s,
        heads,
    };
    run_layers(
        model,
        weights,
        input_ids.reshape([b * s]),
        &plan.positions,
        lora,
        &mut attention,
    )
}

/// The layer stack on the host for the tokens `ids` `[n]` at RoPE `positions` (one each),
/// keys and values kept by `attention`: final-normed hidden states `[n, hidden]`, or
/// `Ok(None)` where a projection cannot run on the host (see [`run`]).
pub(crate) fn run_layers(
    model: &CausalLm,
    weights: &HostWeights,
    ids: Tensor<1, Int>,
    positions: &[usize],
    lora: &LoraSel<'_>,
    attention: &mut dyn HostAttention,
) -> Result<Option<Vec<f32>>, ModelError> {
    let cfg = model.config();
    let n = ids.dims()[0];
    let simd = model.host_step == HostStep::Auto;
    let eps = cfg.rms_norm_eps as f32;

    let embedded = model.embed.gather(ids, model.device())?;
    let mut hs = read_f32(&embedded, "embedded tokens")?;
    let (cos, sin) = attention::rope_angles(positions, &weights.inv_freq);
    let dim = cfg.head_dim;

    for (l, (layer, host)) in model.layers.iter().zip(&weights.layers).enumerate() {
        let proj = |t: TargetModule, x: &[f32]| {
            let bias = host.bias[t.index()].as_deref();
            lora.host_forward_slice(l, t, layer.linear(t), x, n, bias, simd)
        };
        let x = rms_norm(&hs, &host.input_norm, eps);
        let (Some(mut q), Some(mut k), Some(v)) = (
            proj(TargetModule::Q, &x),
            proj(TargetModule::K, &x),
            proj(TargetModule::V, &x),
        ) else {
            return Ok(None);
        };
        rope(&mut q, dim, &cos, &sin);
        rope(&mut k, dim, &cos, &sin);
        attention.append(l, &k, &v);
        let attn = attention.attend(l, &q, simd);
        let Some(o) = proj(TargetModule::O, &attn) else {
            return Ok(None);
        };
        add_into(&mut hs, &o);
        let x = rms_norm(&hs, &host.post_norm, eps);
        let (Some(g), Some(u)) = (proj(TargetModule::Gate, &x), proj(TargetModule::Up, &x)) else {
            return Ok(None);
        };
        let Some(down) = proj(TargetModule::Down, &silu_mul(&g, &u, simd)) else {
            return Ok(None);
        };
        add_into(&mut hs, &down);
    }
    Ok(Some(rms_norm(&hs, &weights.norm, eps)))
}

/// Writes the keys and values `[b·s, kv·dim]` of this call at positions `past..past+s`.
#[allow(clippy::too_many_arguments)]
fn append(
    kv: &mut HostKv,
    layer: usize,
    k: &[f32],
    v: &[f32],
    past: usize,
    b: usize,
    s: usize,
    heads: Heads,
) {
    let width = heads.kv * heads.dim;
    for i in 0..b {
        for t in 0..s {
            let n = i * s + t;
            for h in 0..heads.kv {
                let at = n * width + h * heads.dim;
                kv.write(
                    layer,
                    i,
                    h,
                    past + t,
                    &k[at..at + heads.dim],
                    &v[at..at + heads.dim],
                );
            }
        }
    }
}
