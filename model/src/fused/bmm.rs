//! Batched matrix products of two autodiff operands in bf16 with f32 accumulation, on the
//! bf16 GEMM ([`crate::kernels::bf16_gemm`]): the attention products (`Q·Kᵀ` and `P·V`) of a
//! bf16 mixed-precision training step, as PyTorch's autocast runs `bmm` in bf16.
//!
//! `C[i] = A[i]·B[i]` for `A` `[b0, b1, m, k]`, `B` `[b0, b1, k, n]`; backward
//! `dA[i] = dC[i]·B[i]ᵀ`, `dB[i] = A[i]ᵀ·dC[i]`, each one bf16 GEMM with f32 sums. The inputs
//! are rounded to bf16 as they are packed; nothing is saved but the two operands' handles.
//! Burn's f32 matmul, which this replaces in bf16 mode, also zero-fills and then copies each
//! output buffer (a third of its time on the attention shapes here, docs/benchmarks.md).

// Products over tensors whose shapes burn checked; batches indexed by offset. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::{DType, Flex, Shape};
use burn::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::{dense_f32, lift, tensor_of, values};
use crate::kernels::bf16_gemm::{self, Bf16Kernel, Bf16Panel, assume_written, uninit};
use crate::kernels::sgemm::MatRef;
use crate::weights::transpose;

/// Saved for the backward step: both operands (as they came, views included) and the
/// shapes.
#[derive(Debug, Clone)]
struct BmmState {
    a: Batched,
    b: Batched,
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

/// A rank-4 f32 tensor read in place through its strides: the attention's keys arrive as
/// a transposed view (`[b, kv, d, T]`) and its values as a view with the heads' axis
/// swapped, and both are packed for the bf16 GEMM straight from there instead of being
/// copied into contiguous tensors first.
#[derive(Debug, Clone)]
struct Batched {
    tensor: FlexTensor,
    offset: usize,
    strides: [usize; 4],
    dims: [usize; 4],
}

impl Batched {
    /// `t` as it is where it is f32 with non-negative strides; a dense copy otherwise.
    /// `t` of shape `dims` (the autodiff tensor's, which the flex tensor shares).
    fn new(t: FlexTensor, dims: [usize; 4]) -> Self {
        let as_view = |t: &FlexTensor| {
            let layout = t.layout();
            let strides: Vec<usize> = layout
                .strides()
                .iter()
                .map(|&s| usize::try_from(s).ok())
                .collect::<Option<_>>()?;
            let strides: [usize; 4] = strides.try_into().ok()?;
            // The view's last element (every batch's matrix lies inside the storage, so
            // `matrix` always has its view).
            let last = layout.start_offset()
                + dims
                    .iter()
                    .zip(strides)
                    .map(|(&d, s)| d.saturating_sub(1) * s)
                    .sum::<usize>();
            let f32_storage = t.dtype() == DType::F32 && last < values_of(t).len();
            (f32_storage && layout.num_elements() == dims.iter().product::<usize>())
                .then_some((layout.start_offset(), strides))
        };
        let (tensor, (offset, strides)) = match as_view(&t) {
            Some(view) => (t, view),
            None => {
                let strides = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
                (dense_f32(t), (0, strides))
            }
        };
        Self {
            tensor,
            offset,
            strides,
            dims,
        }
    }

    /// Batch `i` (row-major over the two batch axes) as a matrix view; `transposed` reads
    /// its transpose. `None` only for a batch past the end (the constructor checked that
    /// every batch's view lies inside the storage).
    fn matrix(&self, i: usize, transposed: bool) -> Option<MatRef<'_>> {
        let [_, d1, rows, cols] = self.dims;
        let [s0, s1, sr, sc] = self.strides;
        let start = self.offset + (i / d1.max(1)) * s0 + (i % d1.max(1)) * s1;
        let data = values_of(&self.tensor).get(start..)?;
        let view = MatRef::strided(data, [rows, cols], [sr, sc])?;
        Some(if transposed { view.t() } else { view })
    }
}

/// The storage of an f32 tensor (all of it: views index into it).
fn values_of(t: &FlexTensor) -> &[f32] {
    t.storage::<f32>()
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
        let kernel = Bf16Kernel::best();
        let count = batch[0] * batch[1];
        let dc_i = |i: usize| &dc[i * m * n..(i + 1) * m * n];
        if let Some(node) = a_node {
            // dA[i] = dC[i] · B[i]ᵀ.
            let da = batched(count, m * k, |i, out| {
                let b_t = b.matrix(i, true)?;
                let lhs = MatRef::row_major(dc_i(i), m, n);
                bf16_gemm::gemm_view_into(lhs, &Bf16Panel::from_view(b_t), out, kernel);
                Some(())
            });
            grads.register::<Flex>(
                node.id,
                tensor_of(da, Shape::new([batch[0], batch[1], m, k])),
            );
        }
        if let Some(node) = b_node {
            // dB[i] = A[i]ᵀ·dC[i], or (dC[i]ᵀ·A[i])ᵀ: the left operand is packed from a
            // transposed view, the smaller of the two (`k·m` or `n·m` values; P·V's dV takes
            // the second).
            let db = batched(count, k * n, |i, out| {
                let a_i = a.matrix(i, false)?;
                if k <= n {
                    let panel = Bf16Panel::from_rows(dc_i(i), m, n);
                    bf16_gemm::gemm_view_into(a_i.t(), &panel, out, kernel);
                } else {
                    let mut db_t = uninit(n * k);
                    let dc_t = MatRef::row_major(dc_i(i), m, n).t();
                    let panel = Bf16Panel::from_view(a_i);
                    bf16_gemm::gemm_view_into(dc_t, &panel, &mut db_t, kernel);
                    // SAFETY: the product wrote every element.
                    let db_t = unsafe { assume_written(db_t) };
                    for (o, v) in out.iter_mut().zip(transpose(&db_t, n, k)) {
                        o.write(v);
                    }
                }
                Some(())
            });
            grads.register::<Flex>(
                node.id,
                tensor_of(db, Shape::new([batch[0], batch[1], k, n])),
            );
        }
    }
}

/// `count` products in parallel, written in place end to end (`out_each` values each) by
/// `product(i, out)`, which writes all of `out` or returns `None` (a view outside its
/// storage, which the constructor's checks rule out), and then that block is zero.
fn batched(
    count: usize,
    out_each: usize,
    product: impl Fn(usize, &mut [MaybeUninit<f32>]) -> Option<()> + Sync,
) -> Vec<f32> {
    let mut out = uninit(count * out_each);
    if out_each > 0 {
        out.par_chunks_mut(out_each)
            .enumerate()
            .for_each(|(i, dst)| {
                if product(i, dst).is_none() {
                    for v in dst.iter_mut() {
                        v.write(0.0);
                    }
                }
            });
    }
    // SAFETY: every block was written by its product or zero-filled above.
    unsafe { assume_written(out) }
}

/// `a·b` batched over the first two axes (`a` `[b0, b1, m, k]`, `b` `[b0, b1, k, n]`, either
/// a strided view) as one autodiff op on burn-flex in bf16 (f32 sums); `None` where it does
/// not apply (no autodiff, another backend, shapes that do not chain).
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
        let (a, b) = (
            Batched::new(a, [a0, a1, m, k]),
            Batched::new(b, [b0, b1, k, n]),
        );
        let kernel = Bf16Kernel::best();
        let c = batched(a0 * a1, m * n, |i, out| {
            let (lhs, rhs) = (a.matrix(i, false)?, b.matrix(i, false)?);
            bf16_gemm::gemm_view_into(lhs, &Bf16Panel::from_view(rhs), out, kernel);
            Some(())
        });
        let out = tensor_of(c, Shape::new([a0, a1, m, n]));
        Some((out, BmmState { a, b, dims }))
    })
}
