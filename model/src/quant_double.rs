//! Double quantization of NF4's per-block absmax scales (QLoRA, Dettmers et al. 2023, §3):
//! the f32 scales (one per 64 weights, 0.5 bit per weight) are themselves quantized to 8
//! bits, in blocks of [`SCALE_BLOCK`] scales with one f32 step per block, after subtracting
//! their mean (the scales are all positive; centring them uses the 8-bit range on both signs,
//! as bitsandbytes' offset does). That costs `8/64 + 32/(64·256)` ≈ 0.127 bit per weight
//! instead of 0.5, so an NF4 matrix goes from 4.5 to about 4.127 bits per weight.
//!
//! [`crate::quant::Nf4Matrix::double_quantize`] stores a matrix's scales this way, and
//! [`double_quantize_model`] does it for every NF4 projection of a model (`--double-quant`).
//! The fused NF4 kernel reads f32 scales, so a product decodes them first (one f32 per 64
//! weights, [`crate::quant::Nf4Matrix::with_f32_scales`]).

use std::sync::Arc;

use crate::decoder::{CausalLm, LinearWeight, TokenEmbedding};
use crate::error::ModelError;
use crate::lora::TargetModule;

/// Scales per second-level block sharing one f32 step.
pub const SCALE_BLOCK: usize = 256;

/// Largest 8-bit code magnitude (codes are symmetric, -127..=127).
const CODE_MAX: f32 = 127.0;

/// NF4 absmax scales stored in 8 bits: `scale ≈ mean + code · step[block]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuantScales {
    /// One signed 8-bit code per scale.
    codes: Vec<i8>,
    /// One f32 step per [`SCALE_BLOCK`] scales (the block's largest `|scale − mean|` / 127).
    steps: Vec<f32>,
    /// The mean of all scales, subtracted before quantizing.
    mean: f32,
}

impl DoubleQuantScales {
    /// Quantizes `scales` (finite, as NF4 produces them).
    pub fn quantize(scales: &[f32]) -> Result<Self, ModelError> {
        if let Some(bad) = scales.iter().find(|v| !v.is_finite()) {
            return Err(ModelError::Input(format!(
                "double quantization: the scale {bad} is not finite"
            )));
        }
        let mean = if scales.is_empty() {
            0.0
        } else {
            (scales.iter().map(|&s| f64::from(s)).sum::<f64>() / scales.len() as f64) as f32
        };
        let mut codes = Vec::with_capacity(scales.len());
        let mut steps = Vec::with_capacity(scales.len().div_ceil(SCALE_BLOCK));
        for block in scales.chunks(SCALE_BLOCK) {
            let absmax = block.iter().fold(0.0f32, |m, &s| m.max((s - mean).abs()));
            let step = absmax / CODE_MAX;
            steps.push(step);
            let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
            codes.extend(
                block
                    .iter()
                    .map(|&s| ((s - mean) * inv).round().clamp(-CODE_MAX, CODE_MAX) as i8),
            );
        }
        Ok(Self { codes, steps, mean })
    }

    /// How many scales this holds.
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// Whether it holds no scale.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The per-block steps (one per [`SCALE_BLOCK`] scales).
    pub fn steps(&self) -> &[f32] {
        &self.steps
    }

    /// The f32 scales back: `mean + code · step`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .chunks(SCALE_BLOCK)
            .zip(&self.steps)
            .flat_map(|(block, &step)| block.iter().map(move |&c| self.mean + f32::from(c) * step))
            .collect()
    }

    /// Bytes held: one per code, four per step, four for the mean.
    pub fn resident_bytes(&self) -> usize {
        self.codes.len() + (self.steps.len() + 1) * std::mem::size_of::<f32>()
    }
}

/// Double-quantizes the scales of every NF4 projection of `model`, and of the token
/// embedding when it is NF4; an error if any of the seven projections of a layer is not NF4
/// (quantize the model with `--quantize nf4` first).
pub fn double_quantize_model(model: &mut CausalLm) -> Result<(), ModelError> {
    if let TokenEmbedding::Nf4(q) = &model.embed {
        model.embed = TokenEmbedding::Nf4(Arc::new(q.double_quantize()?));
    }
    for (l, layer) in model.layers.iter_mut().enumerate() {
        for t in TargetModule::ALL {
            let lin = layer.linear_mut(t);
            match &lin.weight_t {
                LinearWeight::Nf4(q) => {
                    lin.weight_t = LinearWeight::Nf4(Arc::new(q.double_quantize()?));
                }
                _ => {
                    return Err(ModelError::Input(format!(
                        "double quantization needs an NF4 base, but {} is not NF4",
                        t.path(l)
                    )));
                }
            }
        }
    }
    Ok(())
}
