//! Products of GGUF block weights ([`BlockMatrix`]: Q4_1, Q8_0) with 8-bit activations
//! ([`Q8Activations`]), as llama.cpp computes them: integer dot products per block of 32,
//! scaled by the two blocks' f16 scales (see [`crate::quant::blocks`] for the arithmetic).
//!
//! Two paths: AVX-512 VNNI (`vpdpbusd`: 64 unsigned-by-signed byte products summed into 16
//! i32 lanes per instruction, two blocks per step), and a portable one that sums each
//! block's products in i32 exactly and is the reference the tests hold the other to.
//! Output rows are split over the decode pool ([`super::pool`]).
// Kernels over shapes checked at entry, indexed in hot loops.
#![allow(clippy::indexing_slicing)]

use half::f16;

use super::Split;
use super::pool::{self, SharedMut};
use crate::quant::blocks::{BLOCK, BlockFormat, BlockMatrix, Q8Activations};

/// Which implementation of the block product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// AVX-512F + BW + VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// Plain Rust, exact i32 block sums.
    Portable,
}

impl Int8Isa {
    /// The fastest path this CPU runs.
    pub fn best() -> Self {
        if Int8Isa::Avx512Vnni.runs_here() {
            Int8Isa::Avx512Vnni
        } else {
            Int8Isa::Portable
        }
    }

    /// [`Int8Isa::best`] when `simd` is asked for, else [`Int8Isa::Portable`] (the kernels'
    /// `simd` knob).
    pub fn select(simd: bool) -> Self {
        if simd {
            Int8Isa::best()
        } else {
            Int8Isa::Portable
        }
    }

    /// Whether this CPU has the path's features.
    pub fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Int8Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Int8Isa::Avx512Vnni => false,
            Int8Isa::Portable => true,
        }
    }
}

/// Output features per pool part (a part should be a few µs of work).
const ROWS_PER_PART: usize = 64;

/// `x` `[m, cols]` times `Wᵀ`: `[m, rows]` row-major, the activations quantized to 8 bits
/// per block first (as llama.cpp does), on the fastest path this CPU has.
pub fn block_matmul(w: &BlockMatrix, x: &[f32], m: usize) -> Vec<f32> {
    block_matmul_isa(w, x, m, Int8Isa::best(), Split::Auto)
}

/// [`block_matmul`] on the path `isa` (a path this CPU lacks runs the portable one) with
/// the pool use `split` (tests compare them).
pub fn block_matmul_isa(
    w: &BlockMatrix,
    x: &[f32],
    m: usize,
    isa: Int8Isa,
    split: Split,
) -> Vec<f32> {
    let [rows, cols] = w.shape();
    assert_eq!(x.len(), m * cols, "block_matmul: x is not [m, cols]");
    let isa = if isa.runs_here() {
        isa
    } else {
        Int8Isa::Portable
    };
    let a = Q8Activations::quantize(x, m, w);
    let mut y = vec![0.0f32; m * rows];
    let out = SharedMut::new(y.as_mut_ptr());
    let part = |p: usize| {
        let o0 = p * ROWS_PER_PART;
        let o1 = (o0 + ROWS_PER_PART).min(rows);
        // SAFETY: parts cover disjoint output columns `o0..o1` of every row of `y`, which
        // outlives the pool run; each write below stays inside `y`.
        let write = |r: usize, o: usize, v: f32| unsafe {
            debug_assert!(r < m && o < rows);
            *out.get().add(r * rows + o) = v;
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the features were detected above; shapes are checked inside.
            Int8Isa::Avx512Vnni => unsafe {
                super::int8_avx512::rows(w, &a, o0..o1, &write);
            },
            _ => portable_rows(w, &a, o0..o1, &write),
        }
    };
    let parts = rows.div_ceil(ROWS_PER_PART);
    if split.pooled(rows * cols) {
        pool::run(parts, &part);
    } else {
        (0..parts).for_each(part);
    }
    y
}

/// The portable path: each block's products summed in i32, then scaled, as ggml's generic
/// `vec_dot` does.
fn portable_rows(
    w: &BlockMatrix,
    a: &Q8Activations,
    outputs: std::ops::Range<usize>,
    write: &dyn Fn(usize, usize, f32),
) {
    let [_, cols] = w.shape();
    let blocks = cols / BLOCK;
    let (pairs, stride) = (w.pairs(), w.scale_stride());
    let pair_bytes = w.format().pair_code_bytes();
    for o in outputs {
        let codes = &w.codes()[o * pairs * pair_bytes..(o + 1) * pairs * pair_bytes];
        let scales = &w.scales()[o * stride..(o + 1) * stride];
        for r in 0..a.rows() {
            let (q, xd, xs) = (a.codes(r), a.scales(r), a.sums(r));
            let mut acc = 0.0f32;
            for b in 0..blocks {
                let pair = &codes[(b / 2) * pair_bytes..(b / 2 + 1) * pair_bytes];
                let xq = &q[b * BLOCK..(b + 1) * BLOCK];
                let second = b % 2 == 1;
                let sumi: i32 = match w.format() {
                    BlockFormat::Q4_1 => {
                        let shift = if second { 4 } else { 0 };
                        (0..BLOCK)
                            .map(|j| i32::from((pair[j] >> shift) & 0x0f) * i32::from(xq[j]))
                            .sum()
                    }
                    BlockFormat::Q8_0 => {
                        let at = if second { BLOCK } else { 0 };
                        (0..BLOCK)
                            .map(|j| (i32::from(pair[at + j]) - 128) * i32::from(xq[j]))
                            .sum()
                    }
                };
                let d = f16::from_bits(scales[b]).to_f32();
                acc += d * xd[b] * sumi as f32;
                if w.format() == BlockFormat::Q4_1 {
                    let m = f16::from_bits(w.mins()[o * stride + b]).to_f32();
                    acc += m * xs[b];
                }
            }
            write(r, o, acc);
        }
    }
}
