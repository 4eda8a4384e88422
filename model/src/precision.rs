//! Training precision: f32 throughout, or bf16 mixed precision (see `docs/precision.md`).
//!
//! In bf16 mode the frozen base's seven projections and the lm_head are stored in bf16
//! ([`Bf16Weight`]: `Wᵀ` packed for [`crate::kernels::bf16_gemm`]; the backward's `W` is
//! packed from it for each product, so each product streams one panel front to back), and their
//! products take bf16 inputs with f32 accumulation (AVX-512 BF16 where the CPU has it). The
//! LoRA factors (master weights), their gradients, AdamW's state, norms, softmax, RoPE,
//! SwiGLU, the loss and every reduction stay f32, and so do the activations saved for the
//! backward pass: a frozen projection saves nothing (its backward needs only `W`), so bf16
//! storage would only apply to what LoRA and attention keep.

use std::sync::{Arc, OnceLock};

use burn::backend::Flex;
use burn::backend::Shape;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::kernels::bf16_gemm::{self, Bf16Panel};
use crate::weights::read_f32;

/// The arithmetic of a training run's matrix products.
///
/// The default is f32: a configuration that does not name a precision (an adapter trained
/// before precision was recorded, a fixture check) means f32. Callers that pick the fast
/// path ask [`Precision::fastest`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (what the reference fixtures check).
    #[default]
    F32,
    /// Frozen base and lm_head in bf16, products bf16 × bf16 with f32 accumulation; the
    /// rest f32.
    Bf16,
}

impl Precision {
    /// The name used on the command line, in job specs and in `training_config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Parses [`Precision::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            _ => None,
        }
    }

    /// The fastest precision whose quality holds on this machine: bf16 where the bf16 GEMM
    /// runs on AMX tiles, f32 elsewhere. Measured in release builds (docs/benchmarks.md, "bf16
    /// mixed-precision training"): on a Xeon with AMX-BF16 (2026-12-07) bf16 trains at 2.5×
    /// f32's tokens/s; on the AVX-512 BF16 VMs without AMX (2026-12-06) at 0.84×, because the
    /// `VDPBF16PS` kernel reaches 185 GFLOP/s on 2 threads where burn's f32 GEMM reaches 280.
    pub fn fastest() -> Self {
        if crate::kernels::bf16_gemm::Bf16Kernel::best()
            == crate::kernels::bf16_gemm::Bf16Kernel::Amx
        {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A frozen projection in bf16: `Wᵀ` `[in, out]` packed for [`bf16_gemm::gemm`]. The input
/// gradient's `W` `[out, in]` is packed from it on the first backward product and kept (the
/// values are already bf16, so the product is the one a second stored packing gave): serving
/// and evaluation never build it, and a trainer's base is then as large as an f32 one
/// (4 bytes per parameter; PyTorch's autocast keeps the f32 weight and a bf16 copy, 6).
/// Rebuilding it cost a zero-filled allocation and a full repacking of the weight for every
/// backward product (docs/precision.md).
#[derive(Debug, Clone)]
pub struct Bf16Weight {
    fwd: Bf16Panel,
    bwd: OnceLock<Bf16Panel>,
}

impl PartialEq for Bf16Weight {
    /// The same weight (the backward packing is derived from it).
    fn eq(&self, other: &Self) -> bool {
        self.fwd == other.fwd
    }
}

impl Bf16Weight {
    /// From `Wᵀ` `[in, out]` row-major (rounded to bf16, nearest even).
    pub fn from_wt(wt: &[f32], in_dim: usize, out_dim: usize) -> Self {
        Self {
            fwd: Bf16Panel::from_rows(wt, in_dim, out_dim),
            bwd: OnceLock::new(),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        self.fwd.dims()
    }

    /// `Wᵀ` `[in, out]` widened to f32 (the rounded values).
    pub fn to_f32(&self) -> Vec<f32> {
        self.fwd.to_f32()
    }

    /// Bytes held (one packing, two once a backward product has run).
    pub fn resident_bytes(&self) -> usize {
        self.fwd.resident_bytes() + self.bwd.get().map_or(0, Bf16Panel::resident_bytes)
    }

    /// `x·Wᵀ` for host rows `x` `[m, in]`: `[m, out]`.
    pub fn forward_host(&self, x: &[f32], m: usize) -> Vec<f32> {
        bf16_gemm::gemm(x, m, &self.fwd)
    }

    /// `dY·W` for host rows `dy` `[m, out]`: `[m, in]`.
    pub fn backward_host(&self, dy: &[f32], m: usize) -> Vec<f32> {
        bf16_gemm::gemm(dy, m, self.backward_panel())
    }

    /// `(x·Wᵀ + s·(x·Aᵀ)·Bᵀ, x·Aᵀ)` for host rows `x` `[m, in]`, a LoRA projection's forward
    /// in one pass over `x` ([`bf16_gemm::gemm_low_rank`]; `a_t` = `Aᵀ` `[in, r]`, `b_t` =
    /// `Bᵀ` `[r, out]`, packed).
    pub fn forward_low_rank(
        &self,
        x: &[f32],
        m: usize,
        a_t: &Bf16Panel,
        b_t: &Bf16Panel,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let lr = bf16_gemm::LowRank {
            down: a_t,
            up: b_t,
            scale,
        };
        bf16_gemm::gemm_low_rank(x, m, &self.fwd, lr)
    }

    /// `(dY·W + s·(dY·B)·A, dY·B)` for host rows `dy` `[m, out]`: a LoRA projection's input
    /// gradient in one pass over `dY` (`b` = `B` `[out, r]`, `a` = `A` `[r, in]`, packed).
    pub fn backward_low_rank(
        &self,
        dy: &[f32],
        m: usize,
        b: &Bf16Panel,
        a: &Bf16Panel,
        scale: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let lr = bf16_gemm::LowRank {
            down: b,
            up: a,
            scale,
        };
        bf16_gemm::gemm_low_rank(dy, m, self.backward_panel(), lr)
    }

    /// `W` `[out, in]` packed, built on first use.
    fn backward_panel(&self) -> &Bf16Panel {
        self.bwd.get_or_init(|| self.fwd.transposed())
    }
}

/// `x·Wᵀ` for an `x` `[m, in]` without autodiff graph: `[m, out]` f32. On burn-flex the
/// values are read in place; elsewhere they are read back and the product uploaded.
pub fn bf16_matmul(x: Tensor<2>, w: &Bf16Weight) -> Tensor<2> {
    let [m, _] = x.dims();
    let n = w.dims()[1];
    match x.clone().try_into_primitive::<Flex>() {
        Ok(flex) => {
            let flex = crate::fused::dense_f32(flex);
            let y = w.forward_host(crate::fused::values(&flex), m);
            Tensor::from_primitive::<Flex>(crate::fused::tensor_of(y, Shape::new([m, n])))
        }
        Err(_) => {
            let device = x.device();
            let xs = read_f32(&x, "activations").unwrap_or_default();
            let y = if xs.len() == m * w.dims()[0] {
                w.forward_host(&xs, m)
            } else {
                vec![f32::NAN; m * n]
            };
            Tensor::from_data(TensorData::new(y, [m, n]), &device)
        }
    }
}

/// The autodiff step of [`frozen_bf16_matmul`]: one parent (`x`), the shared weight as state.
#[derive(Debug)]
struct Bf16MatmulBackward;

impl Backward<Flex, 1> for Bf16MatmulBackward {
    type State = Arc<Bf16Weight>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = crate::fused::dense_f32(grad);
            let dy = crate::fused::values(&grad);
            let [in_dim, out_dim] = weight.dims();
            let m = dy.len() / out_dim.max(1);
            let dx = weight.backward_host(dy, m);
            crate::fused::tensor_of(dx, Shape::new([m, in_dim]))
        });
    }
}

/// `x·Wᵀ` for an autodiff `x` on burn-flex with a bf16 frozen weight: the forward and the
/// input gradient both run [`bf16_gemm`]; nothing but the weight's handle is saved for the
/// backward. `None` where `x` is not an autodiff flex tensor (the caller then uses
/// [`bf16_matmul`], untracked).
pub fn frozen_bf16_matmul(w: &Arc<Bf16Weight>, x: &Tensor<2>) -> Option<Tensor<2>> {
    crate::fused::lift(Bf16MatmulBackward, [x], |[x]| {
        let x = crate::fused::dense_f32(x);
        let xs = crate::fused::values(&x);
        let [in_dim, out_dim] = w.dims();
        if in_dim == 0 || !xs.len().is_multiple_of(in_dim) {
            return None;
        }
        let m = xs.len() / in_dim;
        let y = w.forward_host(xs, m);
        let out = crate::fused::tensor_of(y, Shape::new([m, out_dim]));
        Some((out, Arc::clone(w)))
    })
}
