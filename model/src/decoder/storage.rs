//! How a loaded model stores its projections: NF4 (QLoRA's frozen base), bf16 or packed f32
//! for the host decode kernels, and the bytes they take.

use std::sync::{Arc, OnceLock};

use burn::tensor::{Tensor, TensorData};

use super::{CausalLm, HostHead, LinearWeight, TokenEmbedding};
use crate::error::ModelError;
use crate::kernels::PackedMatrix;
use crate::lora::TargetModule;
use crate::precision::Bf16Weight;
use crate::quant::Nf4Matrix;
use crate::weights::{read_f32, transpose};

impl CausalLm {
    /// Stores the seven projections of every layer and the token embedding in NF4 (QLoRA's
    /// frozen base; see [`crate::quant`]); a tied lm_head is the embedding, so it is NF4 too
    /// (`decoder/embed.rs` says why NF4 rather than bf16). Norms, biases and an untied
    /// lm_head stay f32. Idempotent.
    pub fn quantize_nf4(&mut self) -> Result<(), ModelError> {
        let _span = tracing::info_span!("quantize_nf4").entered();
        self.host_weights = OnceLock::new();
        if let TokenEmbedding::Dense(t) = &self.embed {
            let q = Nf4Matrix::from_tensor(t, "model.embed_tokens.weight")?;
            self.embed = TokenEmbedding::Nf4(Arc::new(q));
        }
        for (l, layer) in self.layers.iter_mut().enumerate() {
            for t in TargetModule::ALL {
                let lin = layer.linear_mut(t);
                if let LinearWeight::Dense(w) = &lin.weight_t {
                    let q = Nf4Matrix::from_tensor(w, &format!("{}.weight", t.path(l)))?;
                    lin.weight_t = LinearWeight::Nf4(Arc::new(q));
                }
            }
        }
        Ok(())
    }

    /// Stores the seven projections of every layer and the lm_head in bf16 (rounded to
    /// nearest even), for generation with half the weight bytes per token; activations,
    /// accumulation, norms and embeddings stay f32. NF4 projections are left as they are.
    /// The lm_head keeps an f32 tensor too (holding the rounded values) for many-row calls.
    pub fn to_bf16(&mut self) -> Result<(), ModelError> {
        self.pack_for_decode(true)
    }

    /// Like [`CausalLm::to_bf16`] but keeps f32 values: the projections move from burn
    /// tensors into the host kernels' packed layout (same numbers, decoded by the host
    /// kernels for few rows; many-row calls rebuild the f32 matrix, so use this for
    /// generation, not training).
    pub fn to_packed_f32(&mut self) -> Result<(), ModelError> {
        self.pack_for_decode(false)
    }

    fn pack_for_decode(&mut self, bf16: bool) -> Result<(), ModelError> {
        let _span = tracing::info_span!("pack_for_decode", bf16).entered();
        self.host_weights = OnceLock::new();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            for t in TargetModule::ALL {
                let lin = layer.linear_mut(t);
                lin.weight_t = lin
                    .weight_t
                    .to_packed(bf16, &format!("{}.weight", t.path(l)))?;
            }
        }
        // A head in GGUF blocks (`--quantize gguf|q4_1`) stays in them.
        if matches!(self.head_host, Some(HostHead::Blocks(_))) {
            return Ok(());
        }
        let (values, [h, v]) = self.head_t_values()?;
        let packed = if bf16 {
            let p = PackedMatrix::bf16(&values, h, v);
            // An untied head keeps an f32 tensor of the rounded values for autodiff calls; a
            // tied one is the embedding, which stays as it is (untracked calls all take the
            // packed kernel).
            if self.head_t.is_some() {
                self.head_t = Some(Tensor::from_data(
                    TensorData::new(p.to_f32(), [h, v]),
                    &self.device,
                ));
            }
            p
        } else {
            PackedMatrix::f32(&values, h, v)
        };
        self.head_host = Some(HostHead::Packed(Arc::new(packed)));
        Ok(())
    }

    /// Stores the seven projections of every layer and the lm_head in bf16 for
    /// mixed-precision training ([`crate::precision`]); NF4 projections stay NF4. The
    /// lm_head's f32 tensor stays for calls that are not on burn-flex.
    pub fn to_train_bf16(&mut self) -> Result<(), ModelError> {
        let _span = tracing::info_span!("to_train_bf16").entered();
        self.host_weights = OnceLock::new();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            for t in TargetModule::ALL {
                let lin = layer.linear_mut(t);
                lin.weight_t = lin
                    .weight_t
                    .to_train_bf16(&format!("{}.weight", t.path(l)))?;
            }
        }
        // An NF4 tied head stays NF4 (a bf16 copy would be 7× its bytes).
        let nf4_tied = self.head_t.is_none() && matches!(self.embed, TokenEmbedding::Nf4(_));
        if self.head_bf16.is_none() && !nf4_tied {
            let (values, [h, v]) = self.head_t_values()?;
            self.head_bf16 = Some(Arc::new(Bf16Weight::from_wt(&values, h, v)));
        }
        Ok(())
    }

    /// Whether [`Self::to_train_bf16`] made this a bf16 mixed-precision trainer's base: its
    /// projections are bf16, and so are its attention products (`fused::bf16_batched_matmul`).
    pub(crate) fn trains_in_bf16(&self) -> bool {
        self.head_bf16.is_some()
            || self.layers.iter().any(|l| {
                matches!(
                    l.linear(TargetModule::Q).weight_t,
                    super::linear::LinearWeight::Bf16(_)
                )
            })
    }

    /// The lm_head transposed, `[hidden, vocab]` row-major, as f32 values (for packing: a
    /// tied head's are the embedding's, transposed in this temporary).
    pub(super) fn head_t_values(&self) -> Result<(Vec<f32>, [usize; 2]), ModelError> {
        match &self.head_t {
            Some(t) => Ok((read_f32(t, "lm_head.weight")?, t.dims())),
            None => {
                let [v, h] = self.embed.dims();
                Ok((transpose(&self.embed.values()?, v, h), [h, v]))
            }
        }
    }

    /// Bytes held by the whole frozen base: the projections, the embedding, an untied
    /// lm_head, the decode and bf16 copies of the lm_head where made, norms and biases.
    pub fn base_resident_bytes(&self) -> usize {
        let f32s = |n: usize| n * std::mem::size_of::<f32>();
        let norms: usize = self
            .layers
            .iter()
            .map(|l| l.input_norm.dims()[0] + l.post_norm.dims()[0])
            .sum::<usize>()
            + self.norm.dims()[0];
        let biases: usize = self
            .layers
            .iter()
            .flat_map(|l| {
                TargetModule::ALL.map(|t| l.linear(t).bias.as_ref().map_or(0, |b| b.dims()[0]))
            })
            .sum();
        self.linear_weight_bytes()
            + self.embed.resident_bytes()
            + self
                .head_t
                .as_ref()
                .map_or(0, |t| f32s(t.shape().num_elements()))
            + self.head_host.as_ref().map_or(0, HostHead::resident_bytes)
            + self.head_bf16.as_ref().map_or(0, |w| w.resident_bytes())
            + f32s(norms + biases)
    }

    /// Bytes of the lm_head the host kernels read (packed or GGUF blocks), when it has one.
    pub fn head_host_bytes(&self) -> Option<usize> {
        self.head_host.as_ref().map(HostHead::resident_bytes)
    }

    /// Bytes held by the seven projections' weights of every layer (the part NF4 shrinks).
    pub fn linear_weight_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| TargetModule::ALL.map(|t| l.linear(t).weight_bytes()))
            .sum()
    }
}
