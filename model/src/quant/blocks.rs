//! GGUF's own quantized blocks (Q4_1, Q8_0) kept as the file stores them, and 8-bit
//! activations, for products computed the way llama.cpp computes them.
//!
//! llama.cpp never dequantizes a Q4_1 or Q8_0 weight for a product: it quantizes the
//! activations to 8 bits per block of 32 (`quantize_row_q8_1` / `quantize_row_q8_0`) and
//! takes integer dot products per block, scaled by the two blocks' f16 scales
//! (`ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q8_0_q8_0`). A model loaded from a GGUF file with
//! `--dtype gguf` keeps its projections and head in a [`BlockMatrix`] and multiplies them
//! by [`Q8Activations`] in [`crate::kernels::int8`], so its numbers are llama.cpp's (up to
//! the order of f32 sums) and each weight costs what it costs in the file (Q4_1: 5 bits,
//! Q8_0: 8.5 bits), not 32.
//!
//! Per block `b` of a weight row `w` and an activation row `x` (`d`, `m`: f16 scale and
//! minimum of the weight block; `c`: its codes; `q`: the activation codes):
//! - Q4_1: `w_j = d·c_j + m` (`c_j` in 0..15), so `Σ_j w_j·x_j ≈ d·d_x·Σ c_j·q_j + m·s_x`
//!   with `s_x = f16(d_x · Σ q_j)` (Q8_1's stored sum);
//! - Q8_0: `w_j = d·c_j` (`c_j` in −127..127), so `Σ_j w_j·x_j ≈ d·d_x·Σ c_j·q_j`.
//!
//! Activations: `d_x = max|x_j| / 127` rounded to f16 for the product, `q_j` = `x_j · 127 /
//! max|x_j|` rounded to the nearest integer, ties to even (llama.cpp's AVX path).
//!
//! Layout (what the kernels read; built once at load): every row holds an even number of
//! blocks (a zero block pads an odd count), so the kernels take two blocks (64 values) per
//! step. Q4_1 codes: 32 bytes per pair of blocks, byte `j` holding value `j` of the first
//! block in its low nibble and value `j` of the second in its high one. Q8_0 codes: 64 bytes
//! per pair, each `c + 128` as an unsigned byte (the integer dot product instruction takes
//! one unsigned operand; [`Q8Activations::lane_offsets`] takes the 128 back out exactly).
//! Scales and minimums: f16 bits, each row padded with zeros to a multiple of
//! [`SCALE_GROUP`] blocks.
// Block kernels over shapes checked at construction, indexed in hot loops. The GGUF parser
// (which hands these bytes over) denies indexing.
#![allow(clippy::indexing_slicing)]

use half::f16;

use crate::error::ModelError;

/// Values per block (ggml's `QK4_1`, `QK8_0`, `QK8_1`).
pub const BLOCK: usize = 32;
/// Values per kernel step: two blocks.
pub const PAIR: usize = 2 * BLOCK;
/// Blocks whose scales a kernel loads at once (16 f32 lanes); rows of scales are padded to
/// a multiple of it.
pub const SCALE_GROUP: usize = 16;

/// Which ggml block format a [`BlockMatrix`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// 4-bit codes with an f16 scale and an f16 minimum per block of 32 (20 bytes in the file).
    Q4_1,
    /// 8-bit codes with an f16 scale per block of 32 (34 bytes in the file).
    Q8_0,
}

impl BlockFormat {
    /// ggml's name of the format.
    pub fn name(self) -> &'static str {
        match self {
            BlockFormat::Q4_1 => "Q4_1",
            BlockFormat::Q8_0 => "Q8_0",
        }
    }

    /// Bytes of one block in a GGUF file.
    pub fn file_block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
        }
    }

    /// Code bytes per pair of blocks in a [`BlockMatrix`].
    pub fn pair_code_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_1 => PAIR / 2,
            BlockFormat::Q8_0 => PAIR,
        }
    }
}

/// A weight matrix `W` `[rows, cols]` (rows = output features, as a GGUF file and a
/// checkpoint store it) in a ggml block format, blocks running along a row.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    /// Pairs of blocks per row (the last pair may end in a zero block).
    pairs: usize,
    /// Scales per row in `scales` and `mins` (a multiple of [`SCALE_GROUP`]).
    scale_stride: usize,
    codes: Vec<u8>,
    scales: Vec<u16>,
    /// Q4_1's minimums (empty for Q8_0).
    mins: Vec<u16>,
}

impl BlockMatrix {
    /// Reads `rows` rows of `cols` values from a GGUF tensor's raw bytes (row `r` of the
    /// result is the file's row `source_row(r)`, so a permutation of rows is undone while
    /// reading). `cols` must be a multiple of [`BLOCK`] and `raw` hold exactly the blocks.
    pub fn from_ggml(
        format: BlockFormat,
        raw: &[u8],
        rows: usize,
        cols: usize,
        source_row: impl Fn(usize) -> usize,
    ) -> Result<Self, ModelError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(ModelError::Input(format!(
                "{}: rows of {cols} values are not whole blocks of {BLOCK}",
                format.name()
            )));
        }
        let file_blocks = cols / BLOCK;
        let row_bytes = file_blocks * format.file_block_bytes();
        if rows.checked_mul(row_bytes) != Some(raw.len()) {
            return Err(ModelError::Input(format!(
                "{}: {} bytes for {rows} rows of {cols} values (expected {})",
                format.name(),
                raw.len(),
                rows.saturating_mul(row_bytes)
            )));
        }
        let pairs = file_blocks.div_ceil(2);
        let scale_stride = (2 * pairs).next_multiple_of(SCALE_GROUP);
        let pair_bytes = format.pair_code_bytes();
        let mut codes = vec![0u8; rows * pairs * pair_bytes];
        let mut scales = vec![0u16; rows * scale_stride];
        let mut mins = match format {
            BlockFormat::Q4_1 => vec![0u16; rows * scale_stride],
            BlockFormat::Q8_0 => Vec::new(),
        };
        // A Q8_0 pad block's codes must read as 0 after the +128 offset.
        if format == BlockFormat::Q8_0 {
            codes.fill(128);
        }
        for r in 0..rows {
            let src = source_row(r);
            if src >= rows {
                return Err(ModelError::Input(format!(
                    "{}: row {r} maps to row {src} of {rows}",
                    format.name()
                )));
            }
            let file_row = &raw[src * row_bytes..(src + 1) * row_bytes];
            let row_codes = &mut codes[r * pairs * pair_bytes..(r + 1) * pairs * pair_bytes];
            for (b, block) in file_row.chunks_exact(format.file_block_bytes()).enumerate() {
                scales[r * scale_stride + b] = u16::from_le_bytes([block[0], block[1]]);
                let pair = &mut row_codes[(b / 2) * pair_bytes..(b / 2 + 1) * pair_bytes];
                let second = b % 2 == 1;
                match format {
                    BlockFormat::Q4_1 => {
                        mins[r * scale_stride + b] = u16::from_le_bytes([block[2], block[3]]);
                        let qs = &block[4..20];
                        for j in 0..BLOCK / 2 {
                            // The file's byte j holds values j (low) and j + 16 (high).
                            let lo = qs[j] & 0x0f;
                            let hi = qs[j] >> 4;
                            let shift = if second { 4 } else { 0 };
                            pair[j] |= lo << shift;
                            pair[j + BLOCK / 2] |= hi << shift;
                        }
                    }
                    BlockFormat::Q8_0 => {
                        let at = if second { BLOCK } else { 0 };
                        for (dst, &q) in pair[at..at + BLOCK].iter_mut().zip(&block[2..34]) {
                            *dst = (q as i8 as i16 + 128) as u8;
                        }
                    }
                }
            }
        }
        Ok(Self {
            format,
            rows,
            cols,
            pairs,
            scale_stride,
            codes,
            scales,
            mins,
        })
    }

    /// Quantizes `values` (`[rows, cols]` row-major) to `format` as ggml's reference
    /// quantizers do (`quantize_row_q4_1_ref`: per block `d = (max − min)/15`, `m = min`,
    /// codes `⌊(x − min)/d + ½⌋` capped at 15; `quantize_row_q8_0_ref`: `d = max|x|/127`,
    /// codes rounded half away from zero), the f16 scales rounded to nearest.
    pub fn quantize(
        format: BlockFormat,
        values: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, ModelError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return Err(ModelError::Input(format!(
                "{}: {} values are not {rows} rows of whole blocks of {BLOCK} ({cols} columns)",
                format.name(),
                values.len()
            )));
        }
        let mut raw = Vec::with_capacity(values.len() / BLOCK * format.file_block_bytes());
        for block in values.chunks_exact(BLOCK) {
            match format {
                BlockFormat::Q4_1 => {
                    let (min, max) = block
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                            (lo.min(v), hi.max(v))
                        });
                    let d = (max - min) / 15.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    raw.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                    raw.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                    let code = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                    for j in 0..BLOCK / 2 {
                        raw.push(code(block[j]) | code(block[j + BLOCK / 2]) << 4);
                    }
                }
                BlockFormat::Q8_0 => {
                    let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    raw.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                    raw.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
                }
            }
        }
        Self::from_ggml(format, &raw, rows, cols, |r| r)
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// `[rows, cols]`: output features, input features.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Pairs of blocks per row.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Scales (and minimums) per row in [`Self::scales`] and [`Self::mins`].
    pub fn scale_stride(&self) -> usize {
        self.scale_stride
    }

    /// The codes, [`BlockFormat::pair_code_bytes`] per pair, row after row.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// Per-block f16 scales, [`Self::scale_stride`] per row.
    pub fn scales(&self) -> &[u16] {
        &self.scales
    }

    /// Per-block f16 minimums (Q4_1; empty for Q8_0).
    pub fn mins(&self) -> &[u16] {
        &self.mins
    }

    /// Bytes held.
    pub fn resident_bytes(&self) -> usize {
        self.codes.len() + 2 * (self.scales.len() + self.mins.len())
    }

    /// Row `r`'s values as f32, exactly as ggml dequantizes them (`d·c + m`, `d·c`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let pair_bytes = self.format.pair_code_bytes();
        let codes = &self.codes[r * self.pairs * pair_bytes..];
        for (b, chunk) in out[..self.cols].chunks_exact_mut(BLOCK).enumerate() {
            let d = f16::from_bits(self.scales[r * self.scale_stride + b]).to_f32();
            let pair = &codes[(b / 2) * pair_bytes..];
            match self.format {
                BlockFormat::Q4_1 => {
                    let m = f16::from_bits(self.mins[r * self.scale_stride + b]).to_f32();
                    let shift = if b % 2 == 1 { 4 } else { 0 };
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v = f32::from((pair[j] >> shift) & 0x0f) * d + m;
                    }
                }
                BlockFormat::Q8_0 => {
                    let at = if b % 2 == 1 { BLOCK } else { 0 };
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v = f32::from(i16::from(pair[at + j]) - 128) * d;
                    }
                }
            }
        }
    }

    /// The whole matrix transposed, `Wᵀ` `[cols, rows]` row-major f32 (the layout the
    /// decoder's projections use).
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        crate::weights::transpose(&self.dequantize(), self.rows, self.cols)
    }

    /// The whole matrix as f32, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }
}

/// Rows of activations quantized to 8 bits per block of 32, as llama.cpp quantizes the
/// input of a Q4_1 or Q8_0 product (Q8_1 and Q8_0 share the codes and scale; Q8_1 adds the
/// scaled sum).
#[derive(Debug, Clone)]
pub struct Q8Activations {
    rows: usize,
    pairs: usize,
    scale_stride: usize,
    /// `[rows][pairs · 64]` codes (zeros in a pad block).
    codes: Vec<i8>,
    /// `[rows][scale_stride]`: `f16(max|x| / 127)` as f32.
    scales: Vec<f32>,
    /// `[rows][scale_stride]`: `f16(d · Σ q)` as f32 (Q8_1's `s`; `d` before rounding).
    sums: Vec<f32>,
    /// `[rows][pairs][16]`: `−128 · Σ` of each 4-code group (for Q8_0 weights stored +128).
    lane_offsets: Vec<i32>,
}

impl Q8Activations {
    /// Quantizes `m` rows of `cols` values (`x` row-major) for a product with `w`.
    pub fn quantize(x: &[f32], m: usize, w: &BlockMatrix) -> Self {
        let cols = w.cols;
        assert_eq!(x.len(), m * cols, "Q8Activations: x is not [m, cols]");
        let (pairs, scale_stride) = (w.pairs, w.scale_stride);
        let mut codes = vec![0i8; m * pairs * PAIR];
        let mut scales = vec![0.0f32; m * scale_stride];
        let mut sums = vec![0.0f32; m * scale_stride];
        let offsets = w.format == BlockFormat::Q8_0;
        let mut lane_offsets = vec![0i32; if offsets { m * pairs * 16 } else { 0 }];
        for r in 0..m {
            let row = &x[r * cols..(r + 1) * cols];
            let row_codes = &mut codes[r * pairs * PAIR..(r + 1) * pairs * PAIR];
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                let mut sum = 0i32;
                for (q, &v) in row_codes[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(block) {
                    let c = (v * id).round_ties_even() as i32;
                    sum += c;
                    *q = c as i8;
                }
                scales[r * scale_stride + b] = f16::from_f32(d).to_f32();
                sums[r * scale_stride + b] = f16::from_f32(d * sum as f32).to_f32();
            }
            if offsets {
                for (lane, group) in row_codes.chunks_exact(4).enumerate() {
                    let s: i32 = group.iter().map(|&q| i32::from(q)).sum();
                    lane_offsets[r * pairs * 16 + lane] = -128 * s;
                }
            }
        }
        Self {
            rows: m,
            pairs,
            scale_stride,
            codes,
            scales,
            sums,
            lane_offsets,
        }
    }

    /// Rows quantized.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `r`'s codes, `pairs · 64`.
    pub fn codes(&self, r: usize) -> &[i8] {
        &self.codes[r * self.pairs * PAIR..(r + 1) * self.pairs * PAIR]
    }

    /// Row `r`'s f16-rounded block scales, padded to the weight's scale stride.
    pub fn scales(&self, r: usize) -> &[f32] {
        &self.scales[r * self.scale_stride..(r + 1) * self.scale_stride]
    }

    /// Row `r`'s f16-rounded scaled sums (Q8_1's `s`), padded like the scales.
    pub fn sums(&self, r: usize) -> &[f32] {
        &self.sums[r * self.scale_stride..(r + 1) * self.scale_stride]
    }

    /// Row `r`'s `−128 · Σ` per group of 4 codes, 16 per pair (empty unless the weight is
    /// Q8_0): the start value of each integer lane that undoes the weights' +128.
    pub fn lane_offsets(&self, r: usize) -> &[i32] {
        if self.lane_offsets.is_empty() {
            return &[];
        }
        &self.lane_offsets[r * self.pairs * 16..(r + 1) * self.pairs * 16]
    }
}
