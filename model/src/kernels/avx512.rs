//! The AVX-512F bodies of the tile kernels (callers check the CPU feature first).
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::arch::x86_64::*;

use super::{MR, NF4_BLOCK, NF4_CODE, NF4_MR, NF4_TILE, Nf4Matrix, TILE};

/// Calls `f::<R>(args)` with `R` the constant equal to `mr` (1..=MR; larger is MR), so the
/// accumulators of a tile kernel stay in registers.
macro_rules! with_row_count {
    ($mr:expr, $f:ident($($arg:expr),*)) => {
        match $mr {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<MR>($($arg),*),
        }
    };
}

/// One tile of bf16 weights: `w` is `[k][TILE]`, `x` `[mr][k]`, `y` `[mr][TILE]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_bf16(w: &[u16], x: &[f32], k: usize, mr: usize, y: &mut [f32]) {
    assert!(w.len() >= k * TILE && x.len() >= mr * k && y.len() >= mr * TILE && mr <= MR);
    // A constant row count keeps the accumulators in registers.
    with_row_count!(mr, tile_bf16_rows(w, x, k, y))
}

#[target_feature(enable = "avx512f")]
fn tile_bf16_rows<const R: usize>(w: &[u16], x: &[f32], k: usize, y: &mut [f32]) {
    assert!(w.len() >= k * TILE && x.len() >= R * k && y.len() >= R * TILE);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let wp = w.as_ptr();
    for i in 0..k {
        stream_hint(wp.wrapping_add(i * TILE + STREAM_AHEAD / 2).cast());
        // SAFETY: i·TILE + 32 ≤ k·TILE ≤ w.len(); bf16 → f32 is a 16-bit left shift.
        let (w0, w1) = unsafe {
            let p = wp.add(i * TILE) as *const __m256i;
            let lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p));
            let hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(1)));
            (
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(lo)),
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(hi)),
            )
        };
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(x[r * k + i]);
            a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
            a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
        }
    }
    store(&acc, y);
}

/// One tile of f32 weights: `w` is `[k][TILE]`, `x` `[mr][k]`, `y` `[mr][TILE]`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_f32(w: &[f32], x: &[f32], k: usize, mr: usize, y: &mut [f32]) {
    assert!(w.len() >= k * TILE && x.len() >= mr * k && y.len() >= mr * TILE && mr <= MR);
    with_row_count!(mr, tile_f32_rows(w, x, k, y))
}

#[target_feature(enable = "avx512f")]
fn tile_f32_rows<const R: usize>(w: &[f32], x: &[f32], k: usize, y: &mut [f32]) {
    assert!(w.len() >= k * TILE && x.len() >= R * k && y.len() >= R * TILE);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let wp = w.as_ptr();
    for i in 0..k {
        let ahead = wp.wrapping_add(i * TILE + STREAM_AHEAD / 4).cast::<i8>();
        stream_hint(ahead);
        stream_hint(ahead.wrapping_add(64));
        // SAFETY: i·TILE + 32 ≤ k·TILE ≤ w.len().
        let (w0, w1) = unsafe {
            let p = wp.add(i * TILE);
            (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
        };
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(x[r * k + i]);
            a[0] = _mm512_fmadd_ps(xv, w0, a[0]);
            a[1] = _mm512_fmadd_ps(xv, w1, a[1]);
        }
    }
    store(&acc, y);
}

/// Bytes ahead of the weight stream at which [`stream_hint`] asks for lines.
const STREAM_AHEAD: usize = 1024;

/// Asks for the line at `p` ahead of its use (a hint; never faults). Into every cache level
/// (`T0`), not as non-temporal data (`NTA`): on the Sapphire Rapids VMs (2026-12-07) `NTA`
/// halved bf16 decode (SmolLM2 batch 1: 19 → 36.5 tokens/s on one thread with `T0`,
/// `docs/benchmarks.md`).
#[inline]
#[target_feature(enable = "avx512f")]
fn stream_hint(p: *const i8) {
    // SAFETY: a prefetch never faults and reads nothing into the program.
    #[allow(unused_unsafe)]
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p)
    };
}

#[target_feature(enable = "avx512f")]
fn store<const R: usize>(acc: &[[__m512; 2]; R], y: &mut [f32]) {
    for (r, a) in acc.iter().enumerate() {
        let out = &mut y[r * TILE..(r + 1) * TILE];
        // SAFETY: `out` holds exactly 32 floats.
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(out.as_mut_ptr().add(16), a[1]);
        }
    }
}

/// One 64-column tile starting at column `c0` of `q` (the last tile of a row may have only
/// 32 columns). Byte `b` of a half tile holds its element `2b` (low nibble) and `2b+1` (high
/// nibble): the low nibbles of 16 bytes give the even columns, the high ones the odd columns.
/// Each 32-column half lies within one block ([`super::nf4_fusable`]); when `Wᵀ`'s rows are
/// not a multiple of 64 long, the two halves of a tile may belong to different blocks.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn nf4_tile(q: &Nf4Matrix, c0: usize, x: &[f32], mr: usize, y: &mut [f32]) {
    let n = q.shape()[1];
    let half = NF4_TILE / 2;
    let (halves, split) = if c0 + NF4_TILE <= n {
        (2, !n.is_multiple_of(NF4_BLOCK))
    } else {
        (1, false)
    };
    macro_rules! rows {
        ($h:literal, $s:literal) => {
            match mr {
                1 => nf4_tile_rows::<1, $h, $s>(q, c0, x, y),
                2 => nf4_tile_rows::<2, $h, $s>(q, c0, x, y),
                3 => nf4_tile_rows::<3, $h, $s>(q, c0, x, y),
                _ => nf4_tile_rows::<NF4_MR, $h, $s>(q, c0, x, y),
            }
        };
    }
    assert!(c0 + half <= n && n.is_multiple_of(half));
    match (halves, split) {
        (2, false) => rows!(2, false),
        (2, true) => rows!(2, true),
        _ => rows!(1, false),
    }
}

/// [`nf4_tile`] for `R` rows and `H` halves (1 or 2); `SPLIT`: the second half has its own
/// block scale.
#[target_feature(enable = "avx512f")]
fn nf4_tile_rows<const R: usize, const H: usize, const SPLIT: bool>(
    q: &Nf4Matrix,
    c0: usize,
    x: &[f32],
    y: &mut [f32],
) {
    let mr = R;
    let half = NF4_TILE / 2;
    let [k, n] = q.shape();
    let (packed, scales) = (q.packed(), q.scales());
    assert!((H == 1 || H == 2) && c0 + H * half <= n && mr <= NF4_MR);
    assert!(x.len() >= mr * k && y.len() >= mr * NF4_TILE);
    assert!(packed.len() * 2 >= k * n && scales.len() * NF4_BLOCK >= k * n);
    // SAFETY: NF4_CODE holds 16 floats.
    let code = unsafe { _mm512_loadu_ps(NF4_CODE.as_ptr()) };
    // acc[r] = [even 0..32, odd 0..32, even 32..64, odd 32..64] column groups.
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for i in 0..k {
        let start = i * n + c0;
        let scale = scales[start / NF4_BLOCK];
        let scale_hi = if SPLIT {
            scales[(start + half) / NF4_BLOCK]
        } else {
            scale
        };
        // Half h's 16 bytes start at byte start/2 + 16·h; start/2 + 16·H ≤ (i·n + c0 + 32·H)/2
        // ≤ k·n/2 ≤ packed.len() (checked above).
        let p = packed[start / 2..start / 2 + 16 * H].as_ptr() as *const __m128i;
        // SAFETY: the slice just taken holds the 16·H bytes read here.
        let b0 = unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p)) };
        // permutexvar reads only the low 4 bits of each index: the low nibble as is.
        let v0 = _mm512_permutexvar_ps(b0, code);
        let v1 = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(b0), code);
        if H == 2 {
            // SAFETY: as above (H = 2: the slice holds 32 bytes).
            let b1 = unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(1))) };
            let v2 = _mm512_permutexvar_ps(b1, code);
            let v3 = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(b1), code);
            for (r, a) in acc.iter_mut().enumerate() {
                let xr = x[r * k + i];
                let xv = _mm512_set1_ps(xr * scale);
                let xh = if SPLIT {
                    _mm512_set1_ps(xr * scale_hi)
                } else {
                    xv
                };
                a[0] = _mm512_fmadd_ps(xv, v0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, v1, a[1]);
                a[2] = _mm512_fmadd_ps(xh, v2, a[2]);
                a[3] = _mm512_fmadd_ps(xh, v3, a[3]);
            }
        } else {
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(x[r * k + i] * scale);
                a[0] = _mm512_fmadd_ps(xv, v0, a[0]);
                a[1] = _mm512_fmadd_ps(xv, v1, a[1]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let mut lanes = [[0.0f32; 16]; 4];
        for (l, v) in lanes.iter_mut().zip(a) {
            // SAFETY: each lane array holds 16 floats.
            unsafe { _mm512_storeu_ps(l.as_mut_ptr(), *v) };
        }
        let out = &mut y[r * NF4_TILE..(r + 1) * NF4_TILE];
        for h in 0..H {
            for j in 0..16 {
                out[h * 32 + 2 * j] = lanes[2 * h][j];
                out[h * 32 + 2 * j + 1] = lanes[2 * h + 1][j];
            }
        }
    }
}
