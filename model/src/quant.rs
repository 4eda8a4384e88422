//! 4-bit NormalFloat (NF4) storage for frozen base weights, as in QLoRA (Dettmers et al., 2023).
//!
//! A matrix is cut into blocks of [`NF4_BLOCK`] consecutive values (in its stored row-major
//! order); each block keeps one f32 scale, its absolute maximum, and every value becomes the
//! 4-bit index of the nearest entry of [`NF4_CODE`] after division by that scale. Two indices
//! are packed per byte (low nibble first). Dequantization is `NF4_CODE[index] · absmax`.
//! The scales cost 4 bytes per 64 values (0.5 bit per value), so a matrix takes 4.5 bits per
//! value, 0.14× its f32 size; [`Nf4Matrix::double_quantize`] stores them in 8 bits instead
//! ([`crate::quant_double`], about 4.127 bits per value).
//!
//! [`blocks`] holds llama.cpp's block formats (Q4_1, Q8_0), kept as a GGUF file stores them
//! and multiplied with 8-bit activations by [`crate::kernels::int8`].
//!
//! The packed bytes stay in host memory; [`Nf4Matrix::dequantize_tensor`] rebuilds the f32
//! matrix on a device for each use (the decoder does this on every forward pass), so the
//! full-precision copy only lives for the duration of one matmul.
// NF4 quantization kernels over whole blocks (lengths checked at entry), indexed in hot
// loops. The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

pub mod blocks;

use std::borrow::Cow;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::ModelError;
use crate::quant_double::DoubleQuantScales;

/// Values per block sharing one absmax scale.
pub const NF4_BLOCK: usize = 64;

/// The 16 NF4 levels of the QLoRA paper (Appendix E; bitsandbytes' `NF4` table): quantiles
/// of N(0, 1) normalised to [-1, 1], with an exact zero. Written with the digits the paper
/// prints, so they can be checked against it; they round to the same f32 values.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_5,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The index of the code book entry nearest to `x` (`x` in [-1, 1]; ties go to the lower
/// entry). The code book is sorted, so the midpoints between neighbours decide.
pub fn nf4_index(x: f32) -> u8 {
    let mut idx = 0u8;
    for i in 0..15 {
        let mid = 0.5 * (NF4_CODE[i] + NF4_CODE[i + 1]);
        if x > mid {
            idx = (i + 1) as u8;
        }
    }
    idx
}

/// A row-major matrix in NF4: packed 4-bit codes and one absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Matrix {
    shape: [usize; 2],
    /// Two codes per byte, element `2i` in the low nibble of byte `i` (shared with the
    /// f32-scale view of a double-quantized matrix, [`Nf4Matrix::with_f32_scales`]).
    packed: Arc<Vec<u8>>,
    /// One absmax per block of [`NF4_BLOCK`] values (the last block may be shorter); empty
    /// when the scales are double-quantized.
    scales: Vec<f32>,
    /// The scales in 8 bits ([`Nf4Matrix::double_quantize`]), instead of `scales`.
    double: Option<DoubleQuantScales>,
}

impl Nf4Matrix {
    /// Quantizes `values` (row-major, `shape[0]·shape[1]` of them).
    pub fn quantize(values: &[f32], shape: [usize; 2]) -> Result<Self, ModelError> {
        let n = shape[0] * shape[1];
        if values.len() != n {
            return Err(ModelError::Input(format!(
                "NF4: {} values for a {}×{} matrix",
                values.len(),
                shape[0],
                shape[1]
            )));
        }
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(ModelError::Input(format!(
                "NF4: cannot quantize the non-finite value {bad}"
            )));
        }
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut scales = Vec::with_capacity(n.div_ceil(NF4_BLOCK));
        for (b, block) in values.chunks(NF4_BLOCK).enumerate() {
            let absmax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            scales.push(absmax);
            let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
            for (j, &v) in block.iter().enumerate() {
                let code = nf4_index(v * inv);
                let i = b * NF4_BLOCK + j;
                packed[i / 2] |= if i.is_multiple_of(2) { code } else { code << 4 };
            }
        }
        Ok(Self {
            shape,
            packed: Arc::new(packed),
            scales,
            double: None,
        })
    }

    /// The same matrix with its absmax scales double-quantized to 8 bits (QLoRA's optional
    /// scheme, [`crate::quant_double`]); the codes are shared, not copied.
    pub fn double_quantize(&self) -> Result<Self, ModelError> {
        if self.double.is_some() {
            return Ok(self.clone());
        }
        Ok(Self {
            shape: self.shape,
            packed: Arc::clone(&self.packed),
            scales: Vec::new(),
            double: Some(DoubleQuantScales::quantize(&self.scales)?),
        })
    }

    /// Whether the scales are stored in 8 bits.
    pub fn is_double_quantized(&self) -> bool {
        self.double.is_some()
    }

    /// This matrix with f32 scales: itself, or for a double-quantized one a view with the
    /// scales decoded (one f32 per block; the codes are shared). The fused kernel needs it.
    pub fn with_f32_scales(&self) -> Cow<'_, Self> {
        match &self.double {
            None => Cow::Borrowed(self),
            Some(d) => Cow::Owned(Self {
                shape: self.shape,
                packed: Arc::clone(&self.packed),
                scales: d.dequantize(),
                double: None,
            }),
        }
    }

    /// Quantizes a 2-D tensor (read back to the host).
    pub fn from_tensor(t: &Tensor<2>, name: &str) -> Result<Self, ModelError> {
        let values = crate::weights::read_f32(t, name)?;
        Self::quantize(&values, t.dims())
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The 4-bit code of element `i` (row-major).
    pub fn code(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i.is_multiple_of(2) {
            byte & 0x0f
        } else {
            byte >> 4
        }
    }

    /// The packed codes.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The per-block absmax scales in f32 (empty for a double-quantized matrix: see
    /// [`Nf4Matrix::with_f32_scales`]).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes held by the stored representation (codes and scales, not the struct itself).
    pub fn resident_bytes(&self) -> usize {
        let scales = match &self.double {
            Some(d) => d.resident_bytes(),
            None => self.scales.len() * std::mem::size_of::<f32>(),
        };
        self.packed.len() + scales
    }

    /// The f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_rows(0..self.shape[0])
    }

    /// The f32 values of rows `rows` (row-major, `rows.len()·cols` of them): what an
    /// embedding lookup or a chunk of a tied output head needs, without the whole matrix.
    /// Rows past the end are left out.
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>) -> Vec<f32> {
        let scales: Cow<'_, [f32]> = match &self.double {
            Some(d) => Cow::Owned(d.dequantize()),
            None => Cow::Borrowed(&self.scales),
        };
        self.dequantize_rows_with(&scales, rows)
    }

    /// [`Nf4Matrix::dequantize_rows`] with the block scales already decoded (`scales`, one
    /// per block), so repeated calls on a double-quantized matrix decode them once.
    pub fn dequantize_rows_with(&self, scales: &[f32], rows: std::ops::Range<usize>) -> Vec<f32> {
        let cols = self.shape[1];
        let end_row = rows.end.min(self.shape[0]);
        let start_row = rows.start.min(end_row);
        let (start, end) = (start_row * cols, end_row * cols);
        if start == end {
            return Vec::new();
        }
        // Whole blocks covering [start, end), then the wanted slice of them.
        let (first, last) = (start / NF4_BLOCK, end.div_ceil(NF4_BLOCK));
        let mut out = vec![0.0f32; (last - first) * NF4_BLOCK];
        let total = self.shape[0] * cols;
        for (b, chunk) in (first..last).zip(out.chunks_mut(NF4_BLOCK)) {
            let scale = scales.get(b).copied().unwrap_or(0.0);
            let len = NF4_BLOCK.min(total - b * NF4_BLOCK);
            let table = NF4_CODE.map(|c| c * scale);
            let bytes = &self.packed[b * NF4_BLOCK / 2..];
            let chunk = &mut chunk[..len];
            let half = len / 2;
            let mut pairs = chunk.chunks_exact_mut(2);
            for (pair, &byte) in (&mut pairs).zip(bytes) {
                pair[0] = table[usize::from(byte & 0x0f)];
                pair[1] = table[usize::from(byte >> 4)];
            }
            if let ([last], Some(&byte)) = (pairs.into_remainder(), bytes.get(half)) {
                *last = table[usize::from(byte & 0x0f)];
            }
        }
        let skip = start - first * NF4_BLOCK;
        out.drain(..skip);
        out.truncate(end - start);
        out
    }

    /// The per-block scales as f32 (decoded when double-quantized).
    pub fn f32_scales(&self) -> Cow<'_, [f32]> {
        match &self.double {
            Some(d) => Cow::Owned(d.dequantize()),
            None => Cow::Borrowed(&self.scales),
        }
    }

    /// The dequantized matrix as a tensor on `device`.
    pub fn dequantize_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.dequantize(), self.shape), device)
    }
}
