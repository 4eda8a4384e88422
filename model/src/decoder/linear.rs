//! A linear projection whose weight is stored dense (f32 on the device) or in NF4.

use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use crate::error::ModelError;
use crate::quant::Nf4Matrix;
use crate::weights::{TensorStore, transpose};

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
    /// 4-bit NormalFloat in host memory, dequantized for every use (QLoRA's frozen base).
    Nf4(Arc<Nf4Matrix>),
}

impl LinearWeight {
    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            LinearWeight::Dense(t) => t.dims(),
            LinearWeight::Nf4(q) => q.shape(),
        }
    }

    /// `Wᵀ` as an f32 tensor on `device` (a dequantized copy for NF4).
    pub fn dense(&self, device: &Device) -> Tensor<2> {
        match self {
            LinearWeight::Dense(t) => t.clone(),
            LinearWeight::Nf4(q) => q.dequantize_tensor(device),
        }
    }
}

impl Linear {
    /// `x` `[n, in]` → `[n, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let w = self.weight_t.dense(&x.device());
        let y = x.matmul(w);
        match &self.bias {
            Some(b) => y.add(b.clone().unsqueeze_dim(0)),
            None => y,
        }
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
