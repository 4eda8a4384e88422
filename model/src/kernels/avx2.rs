//! The AVX2+FMA bodies of the tile kernels (8-lane f32 vectors; callers check the CPU features
//! first), for CPUs without AVX-512.
//!
//! With 16 vector registers (AVX-512 has 32) a 32-column tile fits in registers for one or
//! two rows of `x` (4 accumulators per row, 4 weight vectors); more rows are done in groups of
//! four over each 16-column half of the tile, so at most 8 accumulators are live and the
//! weights are streamed twice from memory or cache, not once per row. The NF4 kernel looks the
//! 16-entry code table up with two 8-entry permutes and a blend on the index's bit 3.
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::arch::x86_64::*;

use super::{MR, NF4_BLOCK, NF4_CODE, NF4_MR, NF4_TILE, Nf4Matrix, TILE};

/// f32 lanes of one AVX2 vector.
const LANES: usize = 8;

/// Vectors per full tile row.
const VECS: usize = TILE / LANES;

/// Rows per group when the tile is done in column halves.
const GROUP: usize = 4;

/// Bytes ahead of the weight stream at which [`stream_hint`] asks for lines.
const STREAM_AHEAD: usize = 1024;

/// Asks for the line at `p` as non-temporal data (a hint; never faults): weights are read
/// once per step, so they should not push LoRA factors and the KV cache out of cache.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn stream_hint(p: *const i8) {
    // SAFETY: a prefetch never faults and reads nothing into the program.
    #[allow(unused_unsafe)]
    unsafe {
        _mm_prefetch::<_MM_HINT_NTA>(p)
    };
}

/// 8 f32 weights at `p`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_f32(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable floats at p.
    unsafe { _mm256_loadu_ps(p) }
}

/// 8 bf16 weights at `p` widened to f32 (a 16-bit left shift).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16(p: *const u16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable u16 at p.
    let v = unsafe { _mm_loadu_si128(p.cast()) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

/// Generates the entry point and the constant-shape body of a tile kernel for one weight type.
macro_rules! tile_kernel {
    ($entry:ident, $rows:ident, $elem:ty, $load:ident) => {
        /// One tile: `w` is `[k][TILE]`, `x` `[mr][k]`, `y` `[mr][TILE]`.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn $entry(w: &[$elem], x: &[f32], k: usize, mr: usize, y: &mut [f32]) {
            assert!(w.len() >= k * TILE && x.len() >= mr * k && y.len() >= mr * TILE && mr <= MR);
            match mr {
                0 => {}
                1 => $rows::<1, VECS>(w, x, k, 0, y),
                2 => $rows::<2, VECS>(w, x, k, 0, y),
                _ => {
                    for r0 in (0..mr).step_by(GROUP) {
                        let rows = (mr - r0).min(GROUP);
                        let (xs, ys) = (&x[r0 * k..], &mut y[r0 * TILE..]);
                        for col in [0, TILE / 2] {
                            match rows {
                                1 => $rows::<1, { VECS / 2 }>(w, xs, k, col, ys),
                                2 => $rows::<2, { VECS / 2 }>(w, xs, k, col, ys),
                                3 => $rows::<3, { VECS / 2 }>(w, xs, k, col, ys),
                                _ => $rows::<GROUP, { VECS / 2 }>(w, xs, k, col, ys),
                            }
                        }
                    }
                }
            }
        }

        /// `R` rows over the `C` vectors of columns from `col`; full tiles (`C = VECS`) hint
        /// the weight stream as non-temporal, half tiles leave it cached for the other half.
        #[target_feature(enable = "avx2,fma")]
        fn $rows<const R: usize, const C: usize>(
            w: &[$elem],
            x: &[f32],
            k: usize,
            col: usize,
            y: &mut [f32],
        ) {
            assert!(col + C * LANES <= TILE);
            assert!(w.len() >= k * TILE && x.len() >= R * k && y.len() >= R * TILE);
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let wp = w.as_ptr();
            let elem = std::mem::size_of::<$elem>();
            for i in 0..k {
                if C == VECS {
                    let ahead = wp.wrapping_add(i * TILE + STREAM_AHEAD / elem).cast::<i8>();
                    stream_hint(ahead);
                    if elem == 4 {
                        stream_hint(ahead.wrapping_add(64));
                    }
                }
                let mut wv = [_mm256_setzero_ps(); C];
                for (c, v) in wv.iter_mut().enumerate() {
                    // SAFETY: i·TILE + col + (c+1)·8 ≤ (i+1)·TILE ≤ k·TILE ≤ w.len().
                    *v = unsafe { $load(wp.add(i * TILE + col + c * LANES)) };
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(x[r * k + i]);
                    for (a, v) in a.iter_mut().zip(&wv) {
                        *a = _mm256_fmadd_ps(xv, *v, *a);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let out = &mut y[r * TILE + col..r * TILE + col + C * LANES];
                for (c, v) in a.iter().enumerate() {
                    // SAFETY: `out` holds C·8 floats, c·8 + 8 of them are in range.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c * LANES), *v) };
                }
            }
        }
    };
}

tile_kernel!(tile_f32, tile_f32_rows, f32, load_f32);
tile_kernel!(tile_bf16, tile_bf16_rows, u16, load_bf16);

/// `code[idx & 15]` for 8 lanes of indices (bits above the low 4 of each lane ignored): two
/// 8-entry permutes (they read the low 3 bits) and a blend on bit 3.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lookup16(idx: __m256i, code_lo: __m256, code_hi: __m256) -> __m256 {
    let lo = _mm256_permutevar8x32_ps(code_lo, idx);
    let hi = _mm256_permutevar8x32_ps(code_hi, idx);
    // blendv picks by each lane's sign bit: move bit 3 there.
    let pick_hi = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
    _mm256_blendv_ps(lo, hi, pick_hi)
}

/// One 64-column NF4 tile starting at column `c0` of `q` (the last tile of a row may have only
/// 32 columns): see `super::avx512::nf4_tile` for the layout. One row of `x` does both halves
/// in one pass (8 accumulators); more rows go in pairs over each half.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn nf4_tile(q: &Nf4Matrix, c0: usize, x: &[f32], mr: usize, y: &mut [f32]) {
    let [k, n] = q.shape();
    let half = NF4_TILE / 2;
    assert!(c0 + half <= n && n.is_multiple_of(half) && mr <= NF4_MR);
    assert!(x.len() >= mr * k && y.len() >= mr * NF4_TILE);
    let halves = if c0 + NF4_TILE <= n { 2 } else { 1 };
    if mr == 1 && halves == 2 {
        nf4_tile_rows::<1, 2>(q, c0, x, y);
        return;
    }
    for h in 0..halves {
        for r0 in (0..mr).step_by(2) {
            let (xs, ys) = (&x[r0 * k..], &mut y[r0 * NF4_TILE + h * half..]);
            if mr - r0 == 1 {
                nf4_tile_rows::<1, 1>(q, c0 + h * half, xs, ys);
            } else {
                nf4_tile_rows::<2, 1>(q, c0 + h * half, xs, ys);
            }
        }
    }
}

/// [`nf4_tile`] for `R` rows and `H` 32-column halves from column `c0` (each half with its
/// block's scale); writes `y[r·NF4_TILE + j]` for `j < 32·H`.
#[target_feature(enable = "avx2,fma")]
fn nf4_tile_rows<const R: usize, const H: usize>(
    q: &Nf4Matrix,
    c0: usize,
    x: &[f32],
    y: &mut [f32],
) {
    let half = NF4_TILE / 2;
    let [k, n] = q.shape();
    let (packed, scales) = (q.packed(), q.scales());
    assert!((H == 1 || H == 2) && c0 + H * half <= n && R <= NF4_MR);
    assert!(x.len() >= R * k && y.len() >= (R - 1) * NF4_TILE + H * half);
    assert!(packed.len() * 2 >= k * n && scales.len() * NF4_BLOCK >= k * n);
    // SAFETY: NF4_CODE holds 16 floats.
    let (code_lo, code_hi) = unsafe {
        (
            _mm256_loadu_ps(NF4_CODE.as_ptr()),
            _mm256_loadu_ps(NF4_CODE.as_ptr().add(LANES)),
        )
    };
    // acc[r][4h + 2g + o]: half h, bytes 8g..8g+8 of it, o = 0 the low nibbles (even
    // columns), o = 1 the high nibbles (odd columns).
    let mut acc = [[_mm256_setzero_ps(); 8]; R];
    for i in 0..k {
        let start = i * n + c0;
        let mut scale = [scales[start / NF4_BLOCK]; 2];
        if H == 2 {
            scale[1] = scales[(start + half) / NF4_BLOCK];
        }
        // start/2 + 16·H ≤ (i·n + c0 + 32·H)/2 ≤ k·n/2 ≤ packed.len() (checked above).
        let bytes = &packed[start / 2..start / 2 + 16 * H];
        for (h, &sh) in scale.iter().enumerate().take(H) {
            for g in 0..2 {
                // SAFETY: 16h + 8g + 8 ≤ 16·H = bytes.len(): the 8 bytes read are in the slice.
                let b = unsafe {
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.as_ptr().add(16 * h + 8 * g).cast()))
                };
                let even = lookup16(b, code_lo, code_hi);
                let odd = lookup16(_mm256_srli_epi32::<4>(b), code_lo, code_hi);
                for (r, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_set1_ps(x[r * k + i] * sh);
                    let j = 4 * h + 2 * g;
                    a[j] = _mm256_fmadd_ps(xv, even, a[j]);
                    a[j + 1] = _mm256_fmadd_ps(xv, odd, a[j + 1]);
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let mut lanes = [[0.0f32; LANES]; 8];
        for (l, v) in lanes.iter_mut().zip(a).take(4 * H) {
            // SAFETY: each lane array holds 8 floats.
            unsafe { _mm256_storeu_ps(l.as_mut_ptr(), *v) };
        }
        let out = &mut y[r * NF4_TILE..r * NF4_TILE + H * half];
        for h in 0..H {
            for g in 0..2 {
                let (even, odd) = (&lanes[4 * h + 2 * g], &lanes[4 * h + 2 * g + 1]);
                for (j, (e, o)) in even.iter().zip(odd).enumerate() {
                    let c = h * half + 16 * g + 2 * j;
                    out[c] = *e;
                    out[c + 1] = *o;
                }
            }
        }
    }
}
