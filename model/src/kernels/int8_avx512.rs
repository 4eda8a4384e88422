//! The AVX-512 VNNI body of [`super::int8`]'s block product (callers check the features).
//!
//! One step takes a pair of blocks (64 values) of one weight row: its codes widened to 64
//! unsigned bytes (Q4_1: the two nibbles of 32 bytes; Q8_0: stored +128), `vpdpbusd` with
//! each activation row's 64 signed codes gives 16 i32 lanes (lanes 0–7 the first block's
//! partial sums, 8–15 the second's), converted to f32 and multiplied by the blocks' product
//! of scales, broadcast from a vector of 16 blocks' scales with one permute.
// Shapes are checked at entry; the loops index within them.
#![allow(clippy::indexing_slicing)]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::quant::blocks::{BlockFormat, BlockMatrix, PAIR, Q8Activations, SCALE_GROUP};

/// Activation rows sharing one decoded weight pair.
const MAX_ROWS: usize = 4;

/// Lane `l` of index vector `k` picks scale `2k` (lanes 0–7) or `2k + 1` (lanes 8–15).
static PAIR_SCALE_INDEX: [[i32; 16]; 8] = {
    let mut idx = [[0i32; 16]; 8];
    let mut k = 0;
    while k < 8 {
        let mut l = 0;
        while l < 16 {
            idx[k][l] = (2 * k + l / 8) as i32;
            l += 1;
        }
        k += 1;
    }
    idx
};

/// `y[r][o]` for every activation row `r` and output `o` in `outputs`, through `write`.
///
/// # Safety
/// The CPU must have avx512f, avx512bw and avx512vnni.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn rows(
    w: &BlockMatrix,
    a: &Q8Activations,
    outputs: Range<usize>,
    write: &dyn Fn(usize, usize, f32),
) {
    let [rows, _] = w.shape();
    assert!(outputs.end <= rows);
    let m = a.rows();
    let mut r0 = 0;
    while r0 < m {
        let rr = (m - r0).min(MAX_ROWS);
        match rr {
            1 => rows_r::<1>(w, a, r0, outputs.clone(), write),
            2 => rows_r::<2>(w, a, r0, outputs.clone(), write),
            3 => rows_r::<3>(w, a, r0, outputs.clone(), write),
            _ => rows_r::<MAX_ROWS>(w, a, r0, outputs.clone(), write),
        }
        r0 += rr;
    }
}

/// Bytes ahead of the current pair that the weight stream is prefetched.
const PREFETCH_AHEAD: usize = 1024;

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn rows_r<const R: usize>(
    w: &BlockMatrix,
    a: &Q8Activations,
    r0: usize,
    outputs: Range<usize>,
    write: &dyn Fn(usize, usize, f32),
) {
    let (pairs, stride) = (w.pairs(), w.scale_stride());
    let pair_bytes = w.format().pair_code_bytes();
    assert!(stride.is_multiple_of(SCALE_GROUP) && stride >= 2 * pairs);
    assert!(w.codes().len() >= outputs.end * pairs * pair_bytes);
    assert!(w.scales().len() >= outputs.end * stride);
    let q4 = w.format() == BlockFormat::Q4_1;
    assert!(!q4 || w.mins().len() >= outputs.end * stride);
    let rows = ActivationRows::<R> {
        codes: std::array::from_fn(|r| a.codes(r0 + r)),
        scales: std::array::from_fn(|r| a.scales(r0 + r)),
        sums: std::array::from_fn(|r| a.sums(r0 + r)),
        offsets: std::array::from_fn(|r| a.lane_offsets(r0 + r)),
    };
    for r in 0..R {
        assert!(rows.codes[r].len() >= pairs * PAIR);
        assert!(rows.scales[r].len() >= stride && rows.sums[r].len() >= stride);
        assert!(q4 || rows.offsets[r].len() >= pairs * 16);
    }
    // Two outputs at a time share the activation loads and keep two chains of FMAs apart.
    let mut o = outputs.start;
    while o + 2 <= outputs.end {
        let y: [[f32; R]; 2] = outputs_o::<R, 2>(w, &rows, o, q4);
        for (k, yk) in y.iter().enumerate() {
            for (r, &v) in yk.iter().enumerate() {
                write(r0 + r, o + k, v);
            }
        }
        o += 2;
    }
    if o < outputs.end {
        let y: [[f32; R]; 1] = outputs_o::<R, 1>(w, &rows, o, q4);
        for (r, &v) in y[0].iter().enumerate() {
            write(r0 + r, o, v);
        }
    }
}

/// `R` rows of quantized activations (lengths checked by the caller).
struct ActivationRows<'a, const R: usize> {
    codes: [&'a [i8]; R],
    scales: [&'a [f32]; R],
    sums: [&'a [f32]; R],
    offsets: [&'a [i32]; R],
}

/// Outputs `o0..o0 + O` for the `R` activation rows: `[output][row]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn outputs_o<const R: usize, const O: usize>(
    w: &BlockMatrix,
    x: &ActivationRows<'_, R>,
    o0: usize,
    q4: bool,
) -> [[f32; R]; O] {
    let (pairs, stride) = (w.pairs(), w.scale_stride());
    let pair_bytes = w.format().pair_code_bytes();
    let low = _mm256_set1_epi8(0x0f);
    // SAFETY (every load below): `o0 + O ≤ outputs.end`, `p < pairs` and `g·16 + 16 ≤
    // stride`, within the lengths the caller asserted; prefetches do not fault.
    let wc: [*const u8; O] =
        std::array::from_fn(|k| w.codes()[(o0 + k) * pairs * pair_bytes..].as_ptr());
    let ws: [*const u16; O] = std::array::from_fn(|k| w.scales()[(o0 + k) * stride..].as_ptr());
    let wm: [*const u16; O] = std::array::from_fn(|k| {
        if q4 {
            w.mins()[(o0 + k) * stride..].as_ptr()
        } else {
            ws[k]
        }
    });
    let mut acc = [[_mm512_setzero_ps(); R]; O];
    let mut min_acc = [[_mm512_setzero_ps(); R]; O];
    for g in 0..pairs.div_ceil(SCALE_GROUP / 2) {
        let b0 = g * SCALE_GROUP;
        let mut scale = [[_mm512_setzero_ps(); R]; O];
        for k in 0..O {
            let wd = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(ws[k].add(b0).cast())) };
            for (sc, xd) in scale[k].iter_mut().zip(&x.scales) {
                let d = unsafe { _mm512_loadu_ps(xd.as_ptr().add(b0)) };
                *sc = _mm512_mul_ps(wd, d);
            }
            if q4 {
                let wmv = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(wm[k].add(b0).cast())) };
                for (ma, xs) in min_acc[k].iter_mut().zip(&x.sums) {
                    let s = unsafe { _mm512_loadu_ps(xs.as_ptr().add(b0)) };
                    *ma = _mm512_fmadd_ps(wmv, s, *ma);
                }
            }
        }
        let steps = (pairs - g * (SCALE_GROUP / 2)).min(SCALE_GROUP / 2);
        for (j, index) in PAIR_SCALE_INDEX.iter().enumerate().take(steps) {
            let p = g * (SCALE_GROUP / 2) + j;
            let idx = unsafe { _mm512_loadu_si512(index.as_ptr().cast()) };
            let mut wv = [_mm512_setzero_si512(); O];
            for k in 0..O {
                let at = p * pair_bytes;
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(wc[k].wrapping_add(at + PREFETCH_AHEAD).cast());
                    wv[k] = if q4 {
                        let b = _mm256_loadu_si256(wc[k].add(at).cast());
                        let lo = _mm256_and_si256(b, low);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), low);
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                    } else {
                        _mm512_loadu_si512(wc[k].add(at).cast())
                    };
                }
            }
            for r in 0..R {
                let (xv, start) = unsafe {
                    let xv = _mm512_loadu_si512(x.codes[r].as_ptr().add(p * PAIR).cast());
                    let start = if q4 {
                        _mm512_setzero_si512()
                    } else {
                        _mm512_loadu_si512(x.offsets[r].as_ptr().add(p * 16).cast())
                    };
                    (xv, start)
                };
                for k in 0..O {
                    let dot = _mm512_dpbusd_epi32(start, wv[k], xv);
                    let s = _mm512_permutexvar_ps(idx, scale[k][r]);
                    acc[k][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[k][r]);
                }
            }
        }
    }
    std::array::from_fn(|k| {
        std::array::from_fn(|r| {
            _mm512_reduce_add_ps(acc[k][r]) + _mm512_reduce_add_ps(min_acc[k][r])
        })
    })
}
