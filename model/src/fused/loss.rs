//! The summed negative log-likelihood of target tokens, `Σᵢ (logsumexp(zᵢ) − zᵢ[tᵢ])`, from
//! logits `z` `[n, vocab]`, as one autodiff op.
//!
//! The composite (`log_softmax`, `gather`, `sum`, `neg`) makes and keeps several
//! `[n, vocab]` tensors (8192 wide here); this op keeps the logits and one log-sum-exp per
//! row, and its backward writes `dz = g·(softmax(z) − onehot(t))` in one pass.
// Fused kernels over tensors whose shapes burn checked; indexed in hot loops. The
// parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex, Shape, TensorMetadata};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use rayon::prelude::*;

use super::simd::{log_sum_exp, scaled_exp_shifted, use_simd};
use super::{ROWS_PER_TASK, dense_f32, lift, tensor_of, values};
use crate::kernels::buffers::par_zeroed;

#[derive(Debug, Clone)]
struct NllState {
    logits: FlexTensor,
    targets: Arc<Vec<usize>>,
    lse: Arc<Vec<f32>>,
    simd: bool,
}

#[derive(Debug)]
struct NllBackward;

impl Backward<Flex, 1> for NllBackward {
    type State = NllState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let g = values(&dense_f32(grad)).first().copied().unwrap_or(0.0);
            let shape = st.logits.shape();
            let z = values(&st.logits);
            let vocab = z.len() / st.targets.len().max(1);
            let mut dz = par_zeroed(z.len());
            dz.par_chunks_mut(ROWS_PER_TASK * vocab)
                .zip(z.par_chunks(ROWS_PER_TASK * vocab))
                .zip(st.targets.par_chunks(ROWS_PER_TASK))
                .zip(st.lse.par_chunks(ROWS_PER_TASK))
                .for_each(|(((d, z), t), lse)| {
                    for (((d, z), &t), &lse) in
                        d.chunks_mut(vocab).zip(z.chunks(vocab)).zip(t).zip(lse)
                    {
                        scaled_exp_shifted(z, lse, g, d, st.simd);
                        d[t] -= g;
                    }
                });
            tensor_of(dz, shape)
        });
    }
}

/// `Σᵢ −log softmax(logits[i])[targets[i]]` as a one-element tensor, for `logits` `[n, vocab]`,
/// as one autodiff op on burn-flex; `None` where it does not apply (no autodiff, another
/// backend or dtype, `targets` not `n` ids below `vocab`).
pub fn token_nll_sum(logits: &Tensor<2>, targets: &[i64]) -> Option<Tensor<1>> {
    let [n, vocab] = logits.dims();
    if targets.len() != n || n == 0 || vocab == 0 {
        return None;
    }
    let targets: Vec<usize> = targets
        .iter()
        .map(|&t| usize::try_from(t).ok().filter(|&t| t < vocab))
        .collect::<Option<_>>()?;
    let targets = Arc::new(targets);
    let simd = use_simd();
    lift(NllBackward, [logits], |[z]: [FlexTensor; 1]| {
        if z.dtype() != DType::F32 {
            return None;
        }
        let z = dense_f32(z);
        let zs = values(&z);
        let mut lse = vec![0.0f32; n];
        lse.par_chunks_mut(ROWS_PER_TASK)
            .zip(zs.par_chunks(ROWS_PER_TASK * vocab))
            .for_each(|(l, z)| {
                for (l, z) in l.iter_mut().zip(z.chunks(vocab)) {
                    *l = log_sum_exp(z, simd);
                }
            });
        let total: f64 = lse
            .iter()
            .zip(targets.iter())
            .enumerate()
            .map(|(i, (&l, &t))| f64::from(l - zs[i * vocab + t]))
            .sum();
        let out = tensor_of(vec![total as f32], Shape::new([1]));
        let state = NllState {
            logits: z,
            targets: Arc::clone(&targets),
            lse: Arc::new(lse),
            simd,
        };
        Some((out, state))
    })
}

/// The composite ops [`token_nll_sum`] replaces (any backend).
pub fn token_nll_sum_composite(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let n = targets.len();
    let device = logits.device();
    let tgt = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
    log_softmax(logits, 1).gather(1, tgt).sum().neg()
}
