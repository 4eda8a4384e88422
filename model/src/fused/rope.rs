//! RoPE fused with the head split: a projection's output `[b·s, heads·d]` becomes the rotated
//! `[b, heads, s, d]` in one pass, as one autodiff op.
//!
//! The composite path reshapes and swaps the projection output into heads (a strided view),
//! then computes `x·cos + rotate_half(x)·sin` with `rotate_half` built from two narrows, a
//! negation and a concatenation: six passes forward and as many backward. Here the forward
//! writes `y = x·cos + rotate_half(x)·sin` straight into the head layout, and the backward
//! (RoPE is linear in `x`) reads the head-layout gradient and writes
//! `dx[i] = dy[i]·cos[i] + dy[i+½d]·sin[i+½d]` for the first half of each head,
//! `dx[i] = dy[i]·cos[i] − dy[i−½d]·sin[i−½d]` for the second. Saves only the shared tables.
// Fused kernels over tensors whose shapes burn checked; indexed in hot loops. The
// parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex, Shape};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{dense_f32, lift, tensor_of, values};
use crate::kernels::buffers::par_zeroed;

/// RoPE's `cos` and `sin` per position, `[b·s, d]` each, row-major.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    batch: usize,
    seq: usize,
    head_dim: usize,
}

impl RopeTables {
    /// Tables for `batch` rows of `seq` positions with head size `head_dim` (even); `None`
    /// when the lengths do not fit.
    pub fn new(
        cos: Vec<f32>,
        sin: Vec<f32>,
        batch: usize,
        seq: usize,
        head_dim: usize,
    ) -> Option<Self> {
        let n = batch * seq * head_dim;
        (cos.len() == n && sin.len() == n && head_dim.is_multiple_of(2) && n > 0).then(|| Self {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            batch,
            seq,
            head_dim,
        })
    }
}

#[derive(Debug, Clone)]
struct RopeState {
    tables: RopeTables,
    heads: usize,
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = RopeState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let RopeState { tables: tb, heads } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = dense_f32(grad);
            let dy = values(&grad);
            let (s, d) = (tb.seq, tb.head_dim);
            let half = d / 2;
            let mut dx = par_zeroed(dy.len());
            dx.par_chunks_mut(heads * d)
                .enumerate()
                .for_each(|(row, dx_row)| {
                    let (b, t) = (row / s, row % s);
                    let cos = &tb.cos[row * d..(row + 1) * d];
                    let sin = &tb.sin[row * d..(row + 1) * d];
                    for (h, dx) in dx_row.chunks_mut(d).enumerate() {
                        let at = ((b * heads + h) * s + t) * d;
                        let g = &dy[at..at + d];
                        for i in 0..half {
                            dx[i] = g[i] * cos[i] + g[i + half] * sin[i + half];
                            dx[i + half] = g[i + half] * cos[i + half] - g[i] * sin[i];
                        }
                    }
                });
            tensor_of(dx, Shape::new([tb.batch * s, heads * d]))
        });
    }
}

/// RoPE on a projection output `x` `[b·s, heads·d]`, returned in head layout
/// `[b, heads, s, d]`, as one autodiff op on burn-flex; `None` where it does not apply (no
/// autodiff, another backend or dtype, shapes that do not fit the tables).
pub fn rope_heads(x: &Tensor<2>, tables: &RopeTables) -> Option<Tensor<4>> {
    let [rows, width] = x.dims();
    let (bsz, s, d) = (tables.batch, tables.seq, tables.head_dim);
    if rows != bsz * s || width % d != 0 {
        return None;
    }
    let heads = width / d;
    lift(RopeBackward, [x], |[x]: [FlexTensor; 1]| {
        if x.dtype() != DType::F32 {
            return None;
        }
        let x = dense_f32(x);
        let xs = values(&x);
        let half = d / 2;
        let mut out = par_zeroed(xs.len());
        // Output rows are (b, h, t); each reads input row b·s+t, columns h·d..(h+1)·d.
        out.par_chunks_mut(s * d).enumerate().for_each(|(bh, o)| {
            let (b, h) = (bh / heads, bh % heads);
            for (t, y) in o.chunks_mut(d).enumerate() {
                let row = b * s + t;
                let at = row * width + h * d;
                let xr = &xs[at..at + d];
                let cos = &tables.cos[row * d..(row + 1) * d];
                let sin = &tables.sin[row * d..(row + 1) * d];
                for i in 0..half {
                    y[i] = xr[i] * cos[i] + (-xr[i + half]) * sin[i];
                    y[i + half] = xr[i + half] * cos[i + half] + xr[i] * sin[i + half];
                }
            }
        });
        let state = RopeState {
            tables: tables.clone(),
            heads,
        };
        Some((tensor_of(out, Shape::new([bsz, heads, s, d])), state))
    })
}

/// The composite ops [`rope_heads`] replaces (as the decoder's attention computes them):
/// `x` `[b·s, heads·d]` split into heads, then `x·cos + rotate_half(x)·sin` with the tables
/// `[b, 1, s, d]`.
pub fn rope_heads_composite(
    x: Tensor<2>,
    cos: &Tensor<4>,
    sin: &Tensor<4>,
    heads: usize,
) -> Tensor<4> {
    let [b, _, s, d] = cos.dims();
    let x = x.reshape([b, s, heads, d]).swap_dims(1, 2);
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x.mul(cos.clone()).add(rotated.mul(sin.clone()))
}
