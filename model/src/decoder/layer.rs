//! One decoder layer as burn ops (attention and MLP with their LoRA deltas), and the inputs
//! every layer of a forward call shares: the unit that training with activation
//! recomputation (`train/recompute.rs`) runs again in its backward pass.
// Decoder math over tensors whose shapes were checked when the checkpoint loaded.
#![allow(clippy::indexing_slicing)]

use burn::tensor::Tensor;

use super::mixed::LoraSel;
use super::{CausalLm, attention, cache, rms_norm};
use crate::fused::{self, CausalMask, FusedAttention, RopeTables};
use crate::lora::TargetModule;
use crate::train::dropout::LoraDropout;

/// What every layer of one forward call shares: RoPE tables, the attention mask (dense, and
/// as key ranges with host RoPE values for the fused training ops) and the batch shape.
pub(crate) struct LayerInputs {
    pub(super) cos: Tensor<4>,
    pub(super) sin: Tensor<4>,
    pub(super) mask: Tensor<4>,
    pub(super) fused: Option<FusedAttention>,
    pub(super) b: usize,
    pub(super) s: usize,
}

/// Training (autodiff) runs RoPE and the masked softmax as fused ops, which take the mask as
/// key ranges and the RoPE tables as host values; a bf16 trainer's attention products run in
/// bf16 (`bf16_products`).
pub(super) fn fused_attention(
    plan: &cache::Plan,
    b: usize,
    s: usize,
    cfg: &crate::config::ModelConfig,
    bf16_products: bool,
) -> FusedAttention {
    let (c, si) = attention::rope_values(&plan.positions, cfg);
    FusedAttention {
        mask: CausalMask::from_key_valid(&plan.key_valid, plan.past, s),
        rope: RopeTables::new(c, si, b, s, cfg.head_dim),
        bf16_products,
    }
}

impl CausalLm {
    /// The shared inputs of the layers for a batch without cache, on this model's device
    /// (with the fused-op forms when the device is an autodiff one).
    pub(crate) fn layer_inputs(&self, left_pad: &[usize], b: usize, s: usize) -> LayerInputs {
        let pads: Vec<usize> = if left_pad.is_empty() {
            vec![0; b]
        } else {
            left_pad.to_vec()
        };
        let plan = cache::Plan::fresh(&pads, s);
        let cfg = &self.cfg;
        let (cos, sin) = attention::rope_tables(&plan.positions, b, s, cfg, &self.device);
        let mask = attention::mask(&plan, b, s, &self.device);
        let fused = self
            .device
            .is_autodiff()
            .then(|| fused_attention(&plan, b, s, cfg, self.trains_in_bf16()));
        LayerInputs {
            cos,
            sin,
            mask,
            fused,
            b,
            s,
        }
    }

    /// Decoder layer `l` on the residual stream `hs` `[b*s, hidden]` (burn ops): attention
    /// and MLP with their LoRA deltas, each added to the stream.
    pub(crate) fn layer_forward(
        &self,
        l: usize,
        hs: Tensor<2>,
        lora: &LoraSel<'_>,
        dropout: &mut Option<&mut LoraDropout>,
        ctx: &LayerInputs,
        layer_cache: Option<&mut Option<(Tensor<4>, Tensor<4>)>>,
    ) -> Tensor<2> {
        let cfg = &self.cfg;
        let layer = &self.layers[l];
        let proj = |t: TargetModule, x: Tensor<2>, d: &mut Option<&mut LoraDropout>| {
            let linear = layer.linear(t);
            if d.is_none()
                && let Some(y) = lora
                    .host_forward(l, t, linear, &x)
                    .or_else(|| lora.fused_bf16_forward(l, t, linear, &x))
            {
                return y;
            }
            let y = linear.forward(x.clone());
            lora.add_delta(l, t, x, y, d.as_deref_mut())
        };
        let x = rms_norm(hs.clone(), &layer.input_norm, cfg.rms_norm_eps);
        let q = proj(TargetModule::Q, x.clone(), dropout);
        let k = proj(TargetModule::K, x.clone(), dropout);
        let v = proj(TargetModule::V, x, dropout);
        let attn = attention::attend(
            q,
            k,
            v,
            &ctx.cos,
            &ctx.sin,
            &ctx.mask,
            ctx.fused.as_ref(),
            layer_cache,
            ctx.b,
            ctx.s,
            cfg,
        );
        let o = proj(TargetModule::O, attn, dropout);
        let hs = hs.add(o);
        let x = rms_norm(hs.clone(), &layer.post_norm, cfg.rms_norm_eps);
        let g = proj(TargetModule::Gate, x.clone(), dropout);
        let u = proj(TargetModule::Up, x, dropout);
        let h = match fused::swiglu(&g, &u) {
            Some(h) => h,
            None => fused::swiglu_composite(g, u),
        };
        let m = proj(TargetModule::Down, h, dropout);
        hs.add(m)
    }
}
