//! Frozen host-stored projections (NF4, GGUF blocks, packed bf16/f32) under autodiff, without
//! an f32 copy of the weight kept alive between the forward and the backward pass.
//!
//! burn's own matmul saves both operands for its backward (`dX = dY·W` needs `W`), so
//! multiplying by a dequantized NF4 matrix under autodiff would keep every layer's f32 copy
//! until the backward runs: QLoRA's memory saving would be lost. [`frozen_matmul`] instead
//! registers its own autodiff step (burn-autodiff's [`Backward`]) whose saved state is only
//! the shared handle to the stored weight (an `Arc`, no copy): the forward multiplies an
//! untracked copy of the input with the weight (host kernel or dequantized GEMM, the f32
//! matrix freed when the product is done), and the backward dequantizes the weight again to
//! form `dX = dY·W`, as bitsandbytes does. No gradient flows to the weight (it is frozen).
//!
//! This works where the autodiff tensor lives on burn-flex (the CPU backend), with either
//! gradient-checkpointing strategy; on other backends [`frozen_matmul`] returns `None` and the
//! caller falls back to burn's matmul on the dequantized weight (correct, without the saving).

use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{Tensor, TensorData};

use crate::decoder::LinearWeight;
use crate::kernels::PackedMatrix;
use crate::quant::Nf4Matrix;
use crate::quant::blocks::BlockMatrix;

/// A frozen weight held in host memory: what the autodiff step keeps (a shared handle).
#[derive(Debug, Clone)]
enum FrozenWeight {
    Nf4(Arc<Nf4Matrix>),
    Packed(Arc<PackedMatrix>),
    Blocks(Arc<BlockMatrix>),
}

impl FrozenWeight {
    fn of(weight_t: &LinearWeight) -> Option<Self> {
        match weight_t {
            LinearWeight::Dense(_) | LinearWeight::Bf16(_) => None,
            LinearWeight::Nf4(q) => Some(FrozenWeight::Nf4(Arc::clone(q))),
            LinearWeight::Packed(p) => Some(FrozenWeight::Packed(Arc::clone(p))),
            LinearWeight::Blocks(b) => Some(FrozenWeight::Blocks(Arc::clone(b))),
        }
    }

    /// `Wᵀ` `[in, out]` as f32 values (dequantized or widened).
    fn values(&self) -> (Vec<f32>, [usize; 2]) {
        match self {
            FrozenWeight::Nf4(q) => (q.dequantize(), q.shape()),
            FrozenWeight::Packed(p) => (p.to_f32(), p.dims()),
            FrozenWeight::Blocks(b) => {
                let [out, inp] = b.shape();
                (b.dequantize_transposed(), [inp, out])
            }
        }
    }
}

/// The autodiff step of [`frozen_matmul`]: one parent (the input `x`), the weight as state.
#[derive(Debug)]
struct FrozenMatmulBackward;

impl Backward<Flex, 1> for FrozenMatmulBackward {
    type State = FrozenWeight;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            // dX = dY·W = dY·(Wᵀ)ᵀ, with `Wᵀ` dequantized again for this product only.
            let device = grad.device();
            let (values, dims) = weight.values();
            let w_t = Flex::float_from_data(TensorData::new(values, dims), &device);
            Flex::float_matmul(grad, Flex::float_transpose(w_t))
        });
    }
}

/// `x·Wᵀ` for a frozen host-stored weight when `x` is an autodiff tensor on burn-flex, with
/// an autodiff step that keeps no f32 copy of `W` (see the module docs). `forward` computes the
/// product of an untracked `x` (the caller's non-autodiff path). `None` when `weight_t` is a
/// dense device tensor (burn's matmul is right for it) or `x` is not an autodiff flex tensor.
pub fn frozen_matmul(
    weight_t: &LinearWeight,
    x: &Tensor<2>,
    forward: impl FnOnce(Tensor<2>) -> Tensor<2>,
) -> Option<Tensor<2>> {
    let weight = FrozenWeight::of(weight_t)?;
    crate::fused::lift(FrozenMatmulBackward, [x], |[x]| {
        let y = forward(Tensor::from_primitive::<Flex>(x))
            .try_into_primitive::<Flex>()
            .ok()?;
        Some((y, weight))
    })
}
