//! A linear projection whose weight is stored dense (f32 on the device), in bf16, in NF4 or
//! in a GGUF file's own blocks (Q4_1, Q8_0).
//!
//! bf16, NF4 and GGUF block weights live in host memory. With few rows of input (decoding)
//! and no autodiff (GGUF blocks: any rows), [`Linear::forward`] multiplies them with the host kernels of
//! [`crate::kernels`] (weights widened or decoded in registers, both cores); otherwise it
//! builds the f32 matrix on the device and lets burn multiply. Under autodiff a frozen NF4 or
//! packed weight goes through [`crate::quant_train::frozen_matmul`], which keeps no f32 copy
//! of it for the backward pass.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::ModelError;
use crate::kernels::int8::{Int8Isa, block_matmul, block_matmul_isa};
use crate::kernels::{PackedMatrix, Split, nf4_matmul};
use crate::precision::{Bf16Weight, bf16_matmul, frozen_bf16_matmul};
use crate::quant::Nf4Matrix;
use crate::quant::blocks::BlockMatrix;
use crate::quant_train::frozen_matmul;
use crate::weights::{TensorStore, read_f32, transpose};

/// Most input rows for which bf16/NF4 projections use the host kernels (a decode step has
/// one row per sequence, a prefill one per prompt token); above it burn's GEMM on the
/// dequantized matrix is faster.
pub const HOST_KERNEL_MAX_ROWS: usize = 256;

/// A linear projection `y = x·Wᵀ + b`. `W` (`[out, in]` in the checkpoint) is kept
/// transposed, `[in, out]` and contiguous: burn multiplies that layout far faster than a
/// transposed view when `x` has few rows, as in decoding.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `Wᵀ`, `[in, out]`, dense or NF4.
    pub weight_t: LinearWeight,
    /// `[out]`, when the projection has a bias.
    pub bias: Option<Tensor<1>>,
}

/// How a projection's `Wᵀ` is stored. (A model holds a few dozen of these: boxing the dense
/// tensor to shrink the enum would buy nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// f32 on the model's device.
    Dense(Tensor<2>),
    /// 4-bit NormalFloat in host memory, decoded inside the host kernel for few rows and
    /// dequantized for every other use (QLoRA's frozen base).
    Nf4(Arc<Nf4Matrix>),
    /// bf16 or f32 in host memory, packed for the host kernel (`--dtype bf16|f32-packed`).
    Packed(Arc<PackedMatrix>),
    /// bf16 for mixed-precision training ([`crate::precision`]): `Wᵀ` and `W` packed for the
    /// bf16 GEMM, used for every product (forward, input gradient, evaluation).
    Bf16(Arc<Bf16Weight>),
    /// Q4_1 or Q8_0 blocks of `W` (`[out, in]`, as a GGUF file stores them; `--quantize
    /// gguf|q4_1`, [`crate::quant::blocks`]), multiplied with 8-bit activations as llama.cpp
    /// does for any number of untracked rows; dequantized for an autodiff step's backward.
    Blocks(Arc<BlockMatrix>),
}

impl LinearWeight {
    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            LinearWeight::Dense(t) => t.dims(),
            LinearWeight::Nf4(q) => q.shape(),
            LinearWeight::Packed(p) => p.dims(),
            LinearWeight::Bf16(w) => w.dims(),
            LinearWeight::Blocks(b) => {
                let [out, inp] = b.shape();
                [inp, out]
            }
        }
    }

    /// `Wᵀ` as an f32 tensor on `device` (a dequantized copy for NF4).
    pub fn dense(&self, device: &Device) -> Tensor<2> {
        match self {
            LinearWeight::Dense(t) => t.clone(),
            LinearWeight::Nf4(q) => q.dequantize_tensor(device),
            LinearWeight::Packed(p) => {
                Tensor::from_data(TensorData::new(p.to_f32(), p.dims()), device)
            }
            LinearWeight::Bf16(w) => {
                Tensor::from_data(TensorData::new(w.to_f32(), w.dims()), device)
            }
            LinearWeight::Blocks(b) => Tensor::from_data(
                TensorData::new(b.dequantize_transposed(), self.dims()),
                device,
            ),
        }
    }

    /// `x` `[m, in]` times `Wᵀ` through the host kernels, when the weight is bf16 or (fusable)
    /// NF4, `x` carries no autodiff graph and has at most [`HOST_KERNEL_MAX_ROWS`] rows.
    fn host_matmul(&self, x: &Tensor<2>) -> Option<Tensor<2>> {
        self.host_matmul_with(x, &[], |_, _| {})
    }

    /// [`LinearWeight::host_matmul`] with `add(x, y)` adding into the product `y` `[m, out]`
    /// (both host buffers, row-major) before it becomes a tensor; the memory `prefetch` that
    /// `add` reads is fetched into cache while packed weights are multiplied.
    fn host_matmul_with(
        &self,
        x: &Tensor<2>,
        prefetch: &[(*const u8, usize)],
        add: impl FnOnce(&[f32], &mut [f32]),
    ) -> Option<Tensor<2>> {
        let [m, _] = x.dims();
        // GGUF blocks always take their int8 kernel (llama.cpp's arithmetic for any rows).
        let blocks = matches!(self, LinearWeight::Blocks(_));
        if (m > HOST_KERNEL_MAX_ROWS && !blocks) || x.is_autodiff() {
            return None;
        }
        match self {
            LinearWeight::Dense(_) | LinearWeight::Bf16(_) => return None,
            LinearWeight::Nf4(q) if !crate::kernels::nf4_fusable(q) => return None,
            _ => {}
        }
        let xs = read_f32(x, "activations").ok()?;
        let mut y = match self {
            LinearWeight::Dense(_) | LinearWeight::Bf16(_) => return None,
            LinearWeight::Packed(p) => {
                p.matmul_prefetching(&xs, m, crate::kernels::simd_available(), prefetch)
            }
            LinearWeight::Nf4(q) => nf4_matmul(q, &xs, m)?,
            LinearWeight::Blocks(b) => block_matmul(b, &xs, m),
        };
        add(&xs, &mut y);
        Some(Tensor::from_data(
            TensorData::new(y, [m, self.dims()[1]]),
            &x.device(),
        ))
    }

    /// Whether [`LinearWeight::host_matmul_slice`] can multiply by this weight (packed, or
    /// NF4 the fused kernel reads).
    pub(crate) fn is_host_capable(&self) -> bool {
        match self {
            LinearWeight::Dense(_) | LinearWeight::Bf16(_) => false,
            LinearWeight::Packed(_) | LinearWeight::Blocks(_) => true,
            LinearWeight::Nf4(q) => crate::kernels::nf4_fusable(q),
        }
    }

    /// [`LinearWeight::host_matmul_with`] on host buffers, for the host decode step: `x`
    /// `[m, in]` row-major in, `[m, out]` row-major out, no tensor made; `simd` picks the
    /// kernels' AVX-512 path (when the CPU has it) or the portable one. `None` where the
    /// weight is not [`LinearWeight::is_host_capable`] or `m` exceeds
    /// [`HOST_KERNEL_MAX_ROWS`].
    pub(crate) fn host_matmul_slice(
        &self,
        x: &[f32],
        m: usize,
        simd: bool,
        prefetch: &[(*const u8, usize)],
        add: impl FnOnce(&[f32], &mut [f32]),
    ) -> Option<Vec<f32>> {
        if m > HOST_KERNEL_MAX_ROWS || x.len() != m * self.dims()[0] {
            return None;
        }
        let mut y = match self {
            LinearWeight::Dense(_) | LinearWeight::Bf16(_) => return None,
            LinearWeight::Packed(p) => p.matmul_prefetching(x, m, simd, prefetch),
            LinearWeight::Nf4(q) => crate::kernels::nf4_matmul_with(q, x, m, simd)?,
            LinearWeight::Blocks(b) => {
                block_matmul_isa(b, x, m, Int8Isa::select(simd), Split::Auto)
            }
        };
        add(x, &mut y);
        Some(y)
    }

    /// Whether the host kernels read this weight in bf16.
    pub(crate) fn is_host_bf16(&self) -> bool {
        matches!(self, LinearWeight::Packed(p) if p.is_bf16())
    }

    /// `Wᵀ` `[in, out]` as f32 values, row-major (read back, widened or dequantized).
    pub fn values_t(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        Ok(match self {
            LinearWeight::Dense(w) => read_f32(w, name)?,
            LinearWeight::Nf4(q) => q.dequantize(),
            LinearWeight::Packed(p) => p.to_f32(),
            LinearWeight::Bf16(w) => w.to_f32(),
            LinearWeight::Blocks(b) => b.dequantize_transposed(),
        })
    }

    /// This weight in bf16 for mixed-precision training (dense and packed weights are read
    /// back and rounded; NF4, bf16 and block ones are returned unchanged).
    pub fn to_train_bf16(&self, name: &str) -> Result<Self, ModelError> {
        if let LinearWeight::Nf4(_) | LinearWeight::Bf16(_) | LinearWeight::Blocks(_) = self {
            return Ok(self.clone());
        }
        let [k, n] = self.dims();
        Ok(LinearWeight::Bf16(Arc::new(Bf16Weight::from_wt(
            &self.values_t(name)?,
            k,
            n,
        ))))
    }

    /// This weight packed for the host kernels, in bf16 (rounded to nearest even) or f32;
    /// dense weights are read back, others are returned unchanged.
    pub fn to_packed(&self, bf16: bool, name: &str) -> Result<Self, ModelError> {
        match self {
            LinearWeight::Dense(w) => {
                let [k, n] = w.dims();
                let values = read_f32(w, name)?;
                let packed = if bf16 {
                    PackedMatrix::bf16(&values, k, n)
                } else {
                    PackedMatrix::f32(&values, k, n)
                };
                Ok(LinearWeight::Packed(Arc::new(packed)))
            }
            other => Ok(other.clone()),
        }
    }
}

impl Linear {
    /// `x` `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // An autodiff input over a host-stored weight takes the frozen step; everything else
        // (and that step's own forward) the untracked product.
        let frozen = match &self.weight_t {
            LinearWeight::Bf16(w) => frozen_bf16_matmul(w, &x),
            other => frozen_matmul(other, &x, |x| self.forward_untracked(x)),
        };
        let y = match frozen {
            Some(y) => y,
            None => self.forward_untracked(x),
        };
        self.with_bias(y)
    }

    /// `y` `[m, out]` with this projection's bias added to every row (unchanged without one).
    pub(crate) fn with_bias(&self, y: Tensor<2>) -> Tensor<2> {
        match &self.bias {
            Some(b) => y.add(b.clone().unsqueeze_dim(0)),
            None => y,
        }
    }

    /// `x·Wᵀ` for an `x` without autodiff graph (the forward of [`frozen_matmul`]): host
    /// kernel or a dequantized copy of `Wᵀ` that is dropped with the product.
    fn forward_untracked(&self, x: Tensor<2>) -> Tensor<2> {
        if let LinearWeight::Bf16(w) = &self.weight_t {
            return bf16_matmul(x, w);
        }
        match self.weight_t.host_matmul(&x) {
            Some(y) => y,
            None => {
                let w = self.weight_t.dense(&x.device());
                x.matmul(w)
            }
        }
    }

    /// [`Linear::forward`] through the host kernels with `add(x, y)` adding into the product
    /// `y` `[m, out]` (host buffers) before it becomes a tensor and gets the bias; `None` where
    /// `forward` would let burn multiply. The decode step adds its LoRA deltas this way
    /// (`prefetch`: the factors' memory, fetched while the base weights are multiplied).
    pub(crate) fn forward_host_with(
        &self,
        x: &Tensor<2>,
        prefetch: &[(*const u8, usize)],
        add: impl FnOnce(&[f32], &mut [f32]),
    ) -> Option<Tensor<2>> {
        let y = self.weight_t.host_matmul_with(x, prefetch, add)?;
        Some(self.with_bias(y))
    }

    /// `W` as the checkpoint stores it, `[out, in]` (a transposed view; dequantized for NF4).
    pub fn weight(&self, device: &Device) -> Tensor<2> {
        self.weight_t.dense(device).transpose()
    }

    /// Bytes of `Wᵀ`'s stored representation (f32: 4 per value; NF4: codes and scales).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight_t {
            LinearWeight::Dense(t) => t.shape().num_elements() * std::mem::size_of::<f32>(),
            LinearWeight::Nf4(q) => q.resident_bytes(),
            LinearWeight::Packed(p) => p.resident_bytes(),
            LinearWeight::Bf16(w) => w.resident_bytes(),
            LinearWeight::Blocks(b) => b.resident_bytes(),
        }
    }

    /// Reads `{prefix}.weight` (`[out, in]` in the file) and its bias; with `nf4` the weight
    /// goes straight from the file's bytes to NF4, never becoming an f32 tensor.
    pub(super) fn load(
        store: &TensorStore,
        prefix: &str,
        out_in: [usize; 2],
        bias: bool,
        nf4: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let name = format!("{prefix}.weight");
        let weight_t = if nf4 {
            let (shape, values) = store.get_f32(&name)?;
            if shape.as_slice() != out_in.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: out_in.to_vec(),
                    found: shape,
                });
            }
            let [out, inp] = out_in;
            let t = transpose(&values, out, inp);
            LinearWeight::Nf4(Arc::new(Nf4Matrix::quantize(&t, [inp, out])?))
        } else {
            LinearWeight::Dense(store.tensor_transposed(&name, out_in, device)?)
        };
        let bias = if bias {
            Some(store.tensor(&format!("{prefix}.bias"), [out_in[0]], device)?)
        } else {
            None
        };
        Ok(Self { weight_t, bias })
    }
}
