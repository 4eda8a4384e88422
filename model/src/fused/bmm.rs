//! Batched matrix products of two autodiff operands in bf16 with f32 accumulation, on the
//! bf16 GEMM ([`crate::kernels::bf16_gemm`]): the attention products (`Q·Kᵀ` and `P·V`) of a
//! bf16 mixed-precision training step, as PyTorch's autocast runs `bmm` in bf16.
//!
//! `C[i] = A[i]·B[i]` for `A` `[b0, b1, m, k]`, `B` `[b0, b1, k, n]`; backward
//! `dA[i] = dC[i]·B[i]ᵀ`, `dB[i] = A[i]ᵀ·dC[i]`, each one bf16 GEMM with f32 sums. The inputs
//! are rounded to bf16 as they are packed; nothing is saved but the two operands' handles.
//! Burn's f32 matmul, which this replaces in bf16 mode, also zero-fills and then copies each
//! output buffer (a third of its time on the attention shapes here, docs/benchmarks.md).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, Shape};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{dense_f32, lift, tensor_of, values};
use crate::kernels::bf16_gemm::{self, Bf16Panel};
use crate::weights::transpose;

/// Saved for the backward step: both operands and the shapes.
#[derive(Debug, Clone)]
struct BmmState {
    a: FlexTensor,
    b: FlexTensor,
    dims: BmmDims,
}

/// `[b0, b1]` batches of `[m, k] · [k, n]`.
#[derive(Debug, Clone, Copy)]
struct BmmDims {
    batch: [usize; 2],
    m: usize,
    k: usize,
    n: usize,
}

#[derive(Debug)]
struct Bf16BmmBackward;

impl Backward<Flex, 2> for Bf16BmmBackward {
    type State = BmmState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let BmmState { a, b, dims } = ops.state;
        let [a_node, b_node] = ops.parents;
        let grad = dense_f32(grads.consume::<Flex>(&ops.node));
        let dc = values(&grad);
        let BmmDims { batch, m, k, n } = dims;
        if let Some(node) = a_node {
            // dA[i] = dC[i] · B[i]ᵀ: B[i] [k, n] is the row-major transpose of Bᵀ.
            let bv = values(&b);
            let da = batched(m * k, (dc, m * n), (bv, k * n), |dc_i, b_i| {
                bf16_gemm::gemm(dc_i, m, &Bf16Panel::from_transposed(b_i, n, k))
            });
            grads.register::<Flex>(
                node.id,
                tensor_of(da, Shape::new([batch[0], batch[1], m, k])),
            );
        }
        if let Some(node) = b_node {
            // dB[i] = A[i]ᵀ · dC[i], or (dC[i]ᵀ · A[i])ᵀ: whichever moves fewer values through
            // a transpose (`m·k`, or `m·n + n·k`; P·V's dV takes the second).
            let av = values(&a);
            let db = batched(k * n, (av, m * k), (dc, m * n), |a_i, dc_i| {
                if m * k <= m * n + n * k {
                    let panel = Bf16Panel::from_rows(dc_i, m, n);
                    bf16_gemm::gemm(&transpose(a_i, m, k), k, &panel)
                } else {
                    let db_t = bf16_gemm::gemm(
                        &transpose(dc_i, m, n),
                        n,
                        &Bf16Panel::from_rows(a_i, m, k),
                    );
                    transpose(&db_t, n, k)
                }
            });
            grads.register::<Flex>(
                node.id,
                tensor_of(db, Shape::new([batch[0], batch[1], k, n])),
            );
        }
    }
}

/// One product per batch, in parallel, laid end to end (`out_each` values each): batch `i`
/// takes the `i`-th chunk of each input (`(values, chunk length)`).
fn batched(
    out_each: usize,
    (x, x_each): (&[f32], usize),
    (y, y_each): (&[f32], usize),
    product: impl Fn(&[f32], &[f32]) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let count = x.len() / x_each.max(1);
    let mut out = vec![0.0f32; count * out_each];
    out.par_chunks_mut(out_each.max(1))
        .zip(x.par_chunks(x_each.max(1)))
        .zip(y.par_chunks(y_each.max(1)))
        .for_each(|((dst, x_i), y_i)| dst.copy_from_slice(&product(x_i, y_i)));
    out
}

/// `a·b` batched over the first two axes (`a` `[b0, b1, m, k]`, `b` `[b0, b1, k, n]`) as one
/// autodiff op on burn-flex in bf16 (f32 sums); `None` where it does not apply (no autodiff,
/// another backend, shapes that do not chain).
pub fn bf16_batched_matmul(a: &Tensor<4>, b: &Tensor<4>) -> Option<Tensor<4>> {
    let [a0, a1, m, k] = a.dims();
    let [b0, b1, kb, n] = b.dims();
    if [a0, a1, k] != [b0, b1, kb] || m == 0 || k == 0 || n == 0 {
        return None;
    }
    let dims = BmmDims {
        batch: [a0, a1],
        m,
        k,
        n,
    };
    lift(Bf16BmmBackward, [a, b], |[a, b]| {
        let (a, b) = (dense_f32(a), dense_f32(b));
        let (av, bv) = (values(&a), values(&b));
        let c = batched(m * n, (av, m * k), (bv, k * n), |a_i, b_i| {
            bf16_gemm::gemm(a_i, m, &Bf16Panel::from_rows(b_i, k, n))
        });
        let out = tensor_of(c, Shape::new([a0, a1, m, n]));
        Some((out, BmmState { a, b, dims }))
    })
}
