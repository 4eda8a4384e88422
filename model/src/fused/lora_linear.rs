//! A bf16 trainer's adapted projection as one autodiff op:
//! `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ`, `W` frozen in bf16 ([`Bf16Weight`], AMX or AVX-512 BF16),
//! the LoRA factors `A` `[r, in]` and `B` `[out, r]` in f32 (master weights).
//!
//! Through burn the LoRA path is two matmuls (each output zero-filled, then copied), a
//! scaling pass and an addition forward, as many passes again backward, and one more
//! addition where `x`'s two gradients (base and LoRA) meet: on the 2-core bench most of
//! them on one thread. Here a projection is one bf16 pass over its input
//! ([`Bf16Weight::forward_low_rank`]): each row block of `x` is packed once, multiplied by
//! `Aᵀ`, and `s·x·Aᵀ` rides on the frozen product as `r` more terms of its sums,
//! `y = [x | s·x·Aᵀ]·[Wᵀ; Bᵀ]`; the input gradient likewise, `dX = [dY | s·dY·B]·[W; A]`.
//! The LoRA products take bf16 operands with f32 sums as the frozen one does (PyTorch's
//! autocast runs a LoRA layer's matmuls in bf16 too); `x·Aᵀ` and `dY·B` come back in f32.
//! The factors' gradients (`dA`, `dB`, sums over all rows) stay in f32 on `gemm` with
//! strides, so nothing is transposed. Saved for the backward: `x`'s and the factors'
//! handles and `x·Aᵀ` (`[n, r]`).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, Shape};
use burn::tensor::Tensor;

use super::{dense_f32, lift, tensor_of, values};
use crate::kernels::bf16_gemm::Bf16Panel;
use crate::kernels::sgemm::{MatRef, sgemm};
use crate::precision::Bf16Weight;

#[derive(Debug, Clone)]
struct LoraLinearState {
    weight: Arc<Bf16Weight>,
    x: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    /// `x·Aᵀ`, `[n, r]`.
    xa: Vec<f32>,
    scale: f32,
    /// `n`, `in`, `out`, `r`.
    dims: [usize; 4],
}

#[derive(Debug)]
struct LoraLinearBackward;

impl Backward<Flex, 3> for LoraLinearBackward {
    type State = LoraLinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let [x_node, a_node, b_node] = ops.parents;
        let grad = dense_f32(grads.consume::<Flex>(&ops.node));
        let dy = values(&grad);
        let [n, fan_in, fan_out, r] = st.dims;
        let (xs, a, b) = (values(&st.x), values(&st.a), values(&st.b));
        let dy_m = MatRef::row_major(dy, n, fan_out);
        // dX = dY·W + s·(dY·B)·A in one bf16 pass over dY, which also gives dY·B; without an
        // input gradient (the first layer's), dY·B alone in f32.
        let (dx, dyb) = match x_node {
            Some(_) => {
                let (b_panel, a_panel) = (
                    Bf16Panel::from_rows(b, fan_out, r),
                    Bf16Panel::from_rows(a, r, fan_in),
                );
                let (dx, dyb) = st
                    .weight
                    .backward_low_rank(dy, n, &b_panel, &a_panel, st.scale);
                (Some(dx), dyb)
            }
            None => {
                let mut dyb = vec![0.0f32; n * r];
                sgemm(&mut dyb, dy_m, MatRef::row_major(b, fan_out, r), false, 1.0);
                (None, dyb)
            }
        };
        if let Some(node) = b_node {
            // dB = s·dYᵀ·(x·Aᵀ), [out, r].
            let mut db = vec![0.0f32; fan_out * r];
            let xa = MatRef::row_major(&st.xa, n, r);
            sgemm(&mut db, dy_m.t(), xa, false, st.scale);
            grads.register::<Flex>(node.id, tensor_of(db, Shape::new([fan_out, r])));
        }
        if let Some(node) = a_node {
            // dA = s·(dY·B)ᵀ·x, [r, in].
            let mut da = vec![0.0f32; r * fan_in];
            let x_m = MatRef::row_major(xs, n, fan_in);
            sgemm(
                &mut da,
                MatRef::row_major(&dyb, n, r).t(),
                x_m,
                false,
                st.scale,
            );
            grads.register::<Flex>(node.id, tensor_of(da, Shape::new([r, fan_in])));
        }
        if let (Some(node), Some(dx)) = (x_node, dx) {
            grads.register::<Flex>(node.id, tensor_of(dx, Shape::new([n, fan_in])));
        }
    }
}

/// `x·Wᵀ + scale·(x·Aᵀ)·Bᵀ` for an autodiff `x` `[n, in]` on burn-flex, `W` frozen in bf16,
/// `a` `[r, in]` and `b` `[out, r]` the LoRA factors (tracked); `None` where it does not apply
/// (an input not an autodiff flex tensor, shapes that do not chain). The caller adds a bias.
pub fn lora_linear_bf16(
    weight: &Arc<Bf16Weight>,
    x: &Tensor<2>,
    a: &Tensor<2>,
    b: &Tensor<2>,
    scale: f32,
) -> Option<Tensor<2>> {
    let [fan_in, fan_out] = weight.dims();
    let [r, a_in] = a.dims();
    let [b_out, b_r] = b.dims();
    let [n, x_in] = x.dims();
    if [a_in, x_in, b_out, b_r] != [fan_in, fan_in, fan_out, r] || n == 0 || r == 0 {
        return None;
    }
    lift(LoraLinearBackward, [x, a, b], |[x, a, b]| {
        let (x, a, b) = (dense_f32(x), dense_f32(a), dense_f32(b));
        // y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ in one bf16 pass over x, which also gives x·Aᵀ.
        let a_t = Bf16Panel::from_view(MatRef::row_major(values(&a), r, fan_in).t());
        let b_t = Bf16Panel::from_view(MatRef::row_major(values(&b), fan_out, r).t());
        let (y, xa) = weight.forward_low_rank(values(&x), n, &a_t, &b_t, scale);
        let out = tensor_of(y, Shape::new([n, fan_out]));
        let state = LoraLinearState {
            weight: Arc::clone(weight),
            x,
            a,
            b,
            xa,
            scale,
            dims: [n, fan_in, fan_out, r],
        };
        Some((out, state))
    })
}
