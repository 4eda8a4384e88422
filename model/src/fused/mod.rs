//! Fused training ops with their own autodiff steps, for the elementwise work of a training
//! step on burn-flex (the CPU backend).
//!
//! Under autodiff burn builds softmax, SiLU, RMSNorm and log-softmax out of five to eight
//! primitive ops, each a full pass over the tensor that allocates its output and most of
//! which keep a tensor alive for the backward pass; their `exp` is glibc's scalar `expf`,
//! which also takes a slow path for every masked attention score (`exp(f32::MIN − max)`).
//! Each op here is one pass forward and one pass backward over the data (rows split over
//! rayon's pool), with a vectorized `exp` ([`simd`]), saving only what its backward needs:
//! - [`causal_softmax`]: `softmax(scale·S + causal/padding mask)` over attention scores,
//!   masked keys skipped (not exponentiated); saves the probabilities;
//! - [`swiglu`]: `silu(gate)·up`; saves its two inputs;
//! - [`rope_heads`]: RoPE fused with the split of a projection output into heads; saves
//!   only the shared `cos`/`sin` tables;
//! - [`rms_norm`]: RMSNorm with a frozen weight; saves the input and one scale per row;
//! - [`token_nll_sum`]: the summed negative log-likelihood of target tokens from logits;
//!   saves the logits and one log-sum-exp per row;
//! - [`bf16_batched_matmul`]: a batched product of two tracked operands in bf16 (f32 sums),
//!   the attention products of a bf16 training step; saves its operands' handles;
//! - [`lora_linear_bf16`]: a bf16 frozen projection plus its LoRA delta; saves the input's
//!   and the factors' handles and `x·Aᵀ`.
//!
//! Every op returns `None` where it does not apply (no autodiff, another backend, a weight
//! that needs a gradient, a mask it cannot describe); the caller then uses burn's composite
//! ops (the `*_composite` functions here), which compute the same thing on any backend.

mod attention;
mod bmm;
mod lora_linear;
mod loss;
mod norm;
mod rope;
pub mod simd;

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::backend::autodiff::ops::{Backward, NodeGuard, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Autodiff, Bytes, DType, Flex, FloatDType, Shape, TensorMetadata};
use burn::tensor::Tensor;

pub use attention::{CausalMask, FusedAttention, causal_softmax, causal_softmax_composite};
pub use bmm::bf16_batched_matmul;
pub use lora_linear::lora_linear_bf16;
pub use loss::{token_nll_sum, token_nll_sum_composite};
pub use norm::{rms_norm, rms_norm_composite, swiglu, swiglu_composite};
pub use rope::{RopeTables, rope_heads, rope_heads_composite};
pub use simd::with_portable_kernels;

/// Rows handed to one rayon task.
const ROWS_PER_TASK: usize = 16;

/// Runs `compute` on the flex values inside autodiff tensors `inputs` and wraps its output in
/// a new autodiff tensor whose backward step is `op` with the state `compute` returned.
/// `None` (nothing registered) when an input is not an autodiff flex tensor or `compute`
/// declines. (Also [`crate::quant_train::frozen_matmul`]'s autodiff step.)
pub(crate) fn lift<Op, const N: usize, const DI: usize, const DO: usize>(
    op: Op,
    inputs: [&Tensor<DI>; N],
    compute: impl FnOnce([FlexTensor; N]) -> Option<(FlexTensor, Op::State)>,
) -> Option<Tensor<DO>>
where
    Op: Backward<Flex, N>,
{
    if !inputs.iter().all(|t| t.is_autodiff()) {
        return None;
    }
    // The dispatch layer names the checkpointing strategy in the type: find which one.
    if inputs[0]
        .clone()
        .try_into_primitive::<Autodiff<Flex, NoCheckpointing>>()
        .is_ok()
    {
        lift_no_checkpointing(op, inputs, compute)
    } else {
        lift_balanced_checkpointing(op, inputs, compute)
    }
}

/// Defines `$name`: [`lift`] for autodiff tensors with checkpointing strategy `$strategy`
/// (burn's conversion is implemented per strategy, not for a generic one).
macro_rules! lift_as {
    ($name:ident, $strategy:ty) => {
        fn $name<Op, const N: usize, const DI: usize, const DO: usize>(
            op: Op,
            inputs: [&Tensor<DI>; N],
            compute: impl FnOnce([FlexTensor; N]) -> Option<(FlexTensor, Op::State)>,
        ) -> Option<Tensor<DO>>
        where
            Op: Backward<Flex, N>,
        {
            let mut values = Vec::with_capacity(N);
            let mut guards = Vec::with_capacity(N);
            for t in inputs {
                let (value, guard) = t
                    .clone()
                    .try_into_primitive::<Autodiff<Flex, $strategy>>()
                    .ok()?
                    .into_parts();
                values.push(value);
                guards.push(guard);
            }
            let values: [FlexTensor; N] = values.try_into().ok()?;
            let guards: [NodeGuard; N] = guards.try_into().ok()?;
            let (out, state) = compute(values)?;
            if out.shape().num_dims() != DO {
                return None;
            }
            let out = match op.prepare::<$strategy>(guards).compute_bound().stateful() {
                OpsKind::Tracked(prep) => prep.finish(state, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            Some(Tensor::from_primitive::<Autodiff<Flex, $strategy>>(out))
        }
    };
}

lift_as!(lift_no_checkpointing, NoCheckpointing);
lift_as!(lift_balanced_checkpointing, BalancedCheckpointing);

/// `t` as a dense row-major f32 tensor whose storage is exactly its elements (copied only
/// when it is a strided view, an offset slice or another float type).
pub(crate) fn dense_f32(t: FlexTensor) -> FlexTensor {
    let t = if t.dtype() == DType::F32 {
        t
    } else {
        Flex::float_cast(t, FloatDType::F32)
    };
    let n = t.shape().num_elements();
    let exact = t.layout().contiguous_offsets() == Some((0, n)) && t.storage::<f32>().len() == n;
    if exact { t } else { t.to_contiguous() }
}

/// The values of a tensor made by [`dense_f32`] or [`tensor_of`].
pub(crate) fn values(t: &FlexTensor) -> &[f32] {
    t.storage::<f32>()
}

/// A new f32 tensor of `shape` holding `data`.
pub(crate) fn tensor_of(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `t` (an incoming gradient) as a dense f32 tensor that may be written in place: its own
/// buffer where it holds the only reference to it (the usual case), else a copy.
fn owned_f32(t: FlexTensor) -> FlexTensor {
    let mut t = dense_f32(t);
    if t.try_storage_mut::<f32>().is_none() {
        let shape = t.shape();
        t = tensor_of(values(&t).to_vec(), shape);
    }
    t
}

/// Writable values of a tensor made by [`owned_f32`] (copied again if it became shared).
fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    t.storage_mut::<f32>()
}
