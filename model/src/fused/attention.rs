//! Causal masked softmax over attention scores with its own autodiff step.
//!
//! The composite path adds an additive mask (`f32::MIN` on masked keys) and lets softmax
//! exponentiate every score, so every masked score goes through `exp` (glibc's slow
//! underflow path) only to give 0. Here each query row's visible keys are a range
//! `[first real key, query position]`: only those are exponentiated, the rest are written
//! as 0, exactly what the composite gives them. A query row that sees no key at all (a padding
//! position) gets the composite's answer too: every score plus `f32::MIN` rounds to
//! `f32::MIN`, so its probabilities are uniform, `1/total`.
//!
//! Backward: `dS = scale·P·(dP − Σⱼ dP·P)` per row, from the saved probabilities alone
//! (which the following `P·V` product keeps alive anyway).
// Fused kernels over tensors whose shapes burn checked; indexed in hot loops. The
// parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use rayon::prelude::*;

use super::simd::{softmax_backward_range, softmax_range, use_simd};
use super::{ROWS_PER_TASK, dense_f32, lift, owned_f32, tensor_of, values, values_mut};
use crate::kernels::buffers::par_zeroed;

/// Which keys each query may see, for a batch whose real keys form one run per row: query
/// `t` of row `b` sees keys `first[b] ..= past + t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalMask {
    /// Per row, the first real key.
    first: Vec<usize>,
    /// Keys before this call's first query.
    past: usize,
    /// Queries per row.
    seq: usize,
    /// Keys per row (`past + seq`).
    total: usize,
}

impl CausalMask {
    /// The mask for rows whose key validity is `key_valid` (each `past + seq` long) with `seq`
    /// new queries; `None` when some row's real keys are not one run reaching its end
    /// (the composite path handles any pattern).
    pub fn from_key_valid(key_valid: &[Vec<bool>], past: usize, seq: usize) -> Option<Self> {
        let total = past + seq;
        let mut first = Vec::with_capacity(key_valid.len());
        for valid in key_valid {
            if valid.len() != total {
                return None;
            }
            let f = valid.iter().position(|&v| v).unwrap_or(total);
            if !valid[f..].iter().all(|&v| v) {
                return None;
            }
            first.push(f);
        }
        Some(Self {
            first,
            past,
            seq,
            total,
        })
    }

    /// The visible key range of query `t` in row `b`; the whole row for a query that sees
    /// no key (see the module docs).
    fn range(&self, b: usize, t: usize) -> (usize, usize, bool) {
        let lo = self.first[b];
        let hi = (self.past + t + 1).min(self.total);
        if lo < hi {
            (lo, hi, false)
        } else {
            (0, self.total, true)
        }
    }

    /// The additive mask the composite path uses, `[b, 1, seq, total]`: 0 where visible,
    /// `f32::MIN` elsewhere.
    pub fn additive(&self, device: &burn::tensor::Device) -> Tensor<4> {
        let mut m = Vec::with_capacity(self.first.len() * self.seq * self.total);
        for b in 0..self.first.len() {
            for t in 0..self.seq {
                let hi = self.past + t;
                m.extend((0..self.total).map(|j| {
                    if j >= self.first[b] && j <= hi {
                        0.0f32
                    } else {
                        f32::MIN
                    }
                }));
            }
        }
        Tensor::from_data(
            burn::tensor::TensorData::new(m, [self.first.len(), 1, self.seq, self.total]),
            device,
        )
    }
}

/// What the fused attention ops of one forward call need: the key ranges of the causal
/// mask and RoPE's tables (each `None` where that op cannot serve the call).
#[derive(Debug, Clone)]
pub struct FusedAttention {
    /// The mask as key ranges, for [`causal_softmax`].
    pub mask: Option<CausalMask>,
    /// RoPE's tables, for [`super::rope_heads`].
    pub rope: Option<super::RopeTables>,
    /// `Q·Kᵀ` and `P·V` in bf16 with f32 sums ([`super::bf16_batched_matmul`]): a bf16
    /// mixed-precision training step.
    pub bf16_products: bool,
}

/// State of the backward step: the probabilities, the mask and the scale.
#[derive(Debug, Clone)]
struct SoftmaxState {
    probs: FlexTensor,
    mask: CausalMask,
    heads: usize,
    scale: f32,
    simd: bool,
}

#[derive(Debug)]
struct CausalSoftmaxBackward;

impl Backward<Flex, 1> for CausalSoftmaxBackward {
    type State = SoftmaxState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let mut grad = owned_f32(grad);
            let p = values(&st.probs);
            let total = st.mask.total;
            let rows_per_batch = st.heads * st.mask.seq;
            values_mut(&mut grad)
                .par_chunks_mut(ROWS_PER_TASK * total)
                .zip(p.par_chunks(ROWS_PER_TASK * total))
                .enumerate()
                .for_each(|(c, (g, p))| {
                    for (k, (g, p)) in g.chunks_mut(total).zip(p.chunks(total)).enumerate() {
                        let row = c * ROWS_PER_TASK + k;
                        let (b, t) = (row / rows_per_batch, row % st.mask.seq);
                        let (lo, hi, _) = st.mask.range(b, t);
                        softmax_backward_range(p, g, lo, hi, st.scale, st.simd);
                    }
                });
            grad
        });
    }
}

/// `softmax(scale·scores + mask)` over the last dimension of `scores` `[b, heads, seq,
/// total]`, masked as `mask` says, as one autodiff op on burn-flex; `None` where it does not
/// apply (no autodiff, another backend or dtype, shapes that do not match the mask).
pub fn causal_softmax(scores: &Tensor<4>, scale: f64, mask: &CausalMask) -> Option<Tensor<4>> {
    let [b, heads, seq, total] = scores.dims();
    if b != mask.first.len() || seq != mask.seq || total != mask.total || total == 0 {
        return None;
    }
    let simd = use_simd();
    let scale = scale as f32;
    lift(CausalSoftmaxBackward, [scores], |[x]: [FlexTensor; 1]| {
        if x.dtype() != DType::F32 {
            return None;
        }
        let x = dense_f32(x);
        let shape = x.shape();
        let input = values(&x);
        let mut out = par_zeroed(input.len());
        let rows_per_batch = heads * seq;
        out.par_chunks_mut(ROWS_PER_TASK * total)
            .zip(input.par_chunks(ROWS_PER_TASK * total))
            .enumerate()
            .for_each(|(c, (o, i))| {
                for (k, (o, i)) in o.chunks_mut(total).zip(i.chunks(total)).enumerate() {
                    let row = c * ROWS_PER_TASK + k;
                    let (lo, hi, none_visible) = mask.range(row / rows_per_batch, row % seq);
                    if none_visible {
                        o.fill(1.0 / total as f32);
                    } else {
                        softmax_range(i, o, lo, hi, scale, simd);
                    }
                }
            });
        let probs = tensor_of(out, shape);
        let state = SoftmaxState {
            probs: probs.clone(),
            mask: mask.clone(),
            heads,
            scale,
            simd,
        };
        Some((probs, state))
    })
}

/// The composite ops [`causal_softmax`] replaces: `softmax(scores·scale + additive, 3)` with
/// the additive mask `[b, 1, seq, total]` (0 visible, `f32::MIN` masked).
pub fn causal_softmax_composite(scores: Tensor<4>, scale: f64, additive: &Tensor<4>) -> Tensor<4> {
    softmax(scores.mul_scalar(scale).add(additive.clone()), 3)
}
