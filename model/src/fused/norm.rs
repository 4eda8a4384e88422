//! RMSNorm with a frozen weight, and the MLP's `silu(gate)·up`, each as one autodiff op.
//!
//! - RMSNorm: `y = w·(x·r)` with `r = 1/√(mean(x²)+eps)` per row. Backward for the input
//!   only (the weight is frozen in LoRA training; a weight that needs a gradient takes the
//!   composite path): with `gy = dy·w`, `dx = r·gy − x·r³·mean(gy·x)`. Saves `x` and `r`.
//! - SwiGLU: `h = g·σ(g)·u`. Backward: `dg = dh·u·σ(g)·(1 + g·(1−σ(g)))`, `du = dh·g·σ(g)`,
//!   both in one pass that recomputes `σ(g)` (vectorized `exp`). Saves `g` and `u`, which
//!   the projections before it produced (no new memory).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex, TensorMetadata};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use rayon::prelude::*;

use super::simd::{rms_norm_row, swiglu as swiglu_kernel, swiglu_backward, use_simd};
use super::{ROWS_PER_TASK, dense_f32, lift, owned_f32, tensor_of, values, values_mut};
use crate::kernels::buffers::par_zeroed;

/// Elements handed to one rayon task by the elementwise SwiGLU kernels.
const CHUNK: usize = 1 << 14;

#[derive(Debug, Clone)]
struct RmsState {
    x: FlexTensor,
    /// `1/√(mean(x²)+eps)` per row.
    inv: Arc<Vec<f32>>,
    weight: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 1> for RmsNormBackward {
    type State = RmsState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let mut grad = owned_f32(grad);
            let h = st.weight.len();
            let x = values(&st.x);
            values_mut(&mut grad)
                .par_chunks_mut(ROWS_PER_TASK * h)
                .zip(x.par_chunks(ROWS_PER_TASK * h))
                .zip(st.inv.par_chunks(ROWS_PER_TASK))
                .for_each(|((g, x), inv)| {
                    for ((g, x), &r) in g.chunks_mut(h).zip(x.chunks(h)).zip(inv) {
                        let mut dot = 0.0f32;
                        for ((g, &x), &w) in g.iter_mut().zip(x).zip(st.weight.iter()) {
                            *g *= w;
                            dot += *g * x;
                        }
                        let k = r * r * r * dot / h as f32;
                        for (g, &x) in g.iter_mut().zip(x) {
                            *g = r * *g - x * k;
                        }
                    }
                });
            grad
        });
    }
}

/// RMSNorm over the last dimension of `x` `[n, h]` as one autodiff op on burn-flex; `None`
/// where it does not apply (no autodiff, another backend, a weight that needs a gradient).
pub fn rms_norm(x: &Tensor<2>, weight: &Tensor<1>, eps: f64) -> Option<Tensor<2>> {
    let [_, h] = x.dims();
    if weight.is_require_grad() || weight.dims() != [h] || h == 0 {
        return None;
    }
    let w = crate::weights::read_f32(weight, "norm weight").ok()?;
    let weight = Arc::new(w);
    lift(RmsNormBackward, [x], |[x]: [FlexTensor; 1]| {
        if x.dtype() != DType::F32 {
            return None;
        }
        let x = dense_f32(x);
        let shape = x.shape();
        let xs = values(&x);
        let rows = xs.len() / h;
        let mut inv = vec![0.0f32; rows];
        let mut out = par_zeroed(xs.len());
        out.par_chunks_mut(ROWS_PER_TASK * h)
            .zip(xs.par_chunks(ROWS_PER_TASK * h))
            .zip(inv.par_chunks_mut(ROWS_PER_TASK))
            .for_each(|((o, x), inv)| {
                for ((o, x), r) in o.chunks_mut(h).zip(x.chunks(h)).zip(inv) {
                    *r = rms_norm_row(x, &weight, eps as f32, o);
                }
            });
        let state = RmsState {
            x,
            inv: Arc::new(inv),
            weight: Arc::clone(&weight),
        };
        Some((tensor_of(out, shape), state))
    })
}

/// The composite ops [`rms_norm`] replaces (transformers' float32 RMSNorm).
pub fn rms_norm_composite(x: Tensor<2>, weight: &Tensor<1>, eps: f64) -> Tensor<2> {
    let inv = x
        .clone()
        .square()
        .mean_dim(1)
        .add_scalar(eps)
        .sqrt()
        .recip();
    weight.clone().unsqueeze_dim(0).mul(x.mul(inv))
}

#[derive(Debug, Clone)]
struct SwigluState {
    gate: FlexTensor,
    up: FlexTensor,
    simd: bool,
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = SwigluState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let [gate_node, up_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if gate_node.is_none() && up_node.is_none() {
            return;
        }
        let shape = grad.shape();
        let mut dg = owned_f32(grad);
        let (g, u) = (values(&st.gate), values(&st.up));
        let mut du = par_zeroed(g.len());
        values_mut(&mut dg)
            .par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|((dg, du), (g, u))| swiglu_backward(g, u, dg, du, st.simd));
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, dg);
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, tensor_of(du, shape));
        }
    }
}

/// `silu(gate)·up` for `gate`, `up` `[n, m]` as one autodiff op on burn-flex; `None` where
/// it does not apply (no autodiff, another backend or dtype, shapes that differ).
pub fn swiglu(gate: &Tensor<2>, up: &Tensor<2>) -> Option<Tensor<2>> {
    if gate.dims() != up.dims() {
        return None;
    }
    let simd = use_simd();
    lift(SwigluBackward, [gate, up], |[g, u]: [FlexTensor; 2]| {
        if g.dtype() != DType::F32 || u.dtype() != DType::F32 {
            return None;
        }
        let (g, u) = (dense_f32(g), dense_f32(u));
        let shape = g.shape();
        let (gs, us) = (values(&g), values(&u));
        let mut out = par_zeroed(gs.len());
        out.par_chunks_mut(CHUNK)
            .zip(gs.par_chunks(CHUNK).zip(us.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| swiglu_kernel(g, u, o, simd));
        let state = SwigluState {
            gate: g,
            up: u,
            simd,
        };
        Some((tensor_of(out, shape), state))
    })
}

/// The composite ops [`swiglu`] replaces.
pub fn swiglu_composite(gate: Tensor<2>, up: Tensor<2>) -> Tensor<2> {
    silu(gate).mul(up)
}
