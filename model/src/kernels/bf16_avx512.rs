//! The AVX-512 BF16 bodies of [`super::bf16_gemm`] (callers check the CPU features first).
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::arch::x86_64::*;

use super::bf16_gemm::{MR, NR};

/// Calls `f::<R>(args)` with `R` the constant equal to `mr` (1..=MR), so the accumulators
/// stay in registers.
macro_rules! with_rows {
    ($mr:expr, $f:ident($($arg:expr),*)) => {
        match $mr {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            _ => $f::<MR>($($arg),*),
        }
    };
}

/// `src` (an even number of values) rounded to bf16 (nearest even) in pairs into `dst`
/// (`≥ src.len()/2` words, the even value in the low half; words past `src.len()/2` are left
/// as they are).
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pack_row(src: &[f32], dst: &mut [u32]) {
    let k = src.len();
    assert!(k.is_multiple_of(2) && dst.len() >= k / 2);
    let dst = &mut dst[..k / 2];
    let mut i = 0;
    while i + 32 <= k {
        // SAFETY: i + 32 ≤ k = src.len(); i/2 + 16 ≤ k/2 = dst.len().
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            // Element j of the result is `lo[j]` for j < 16, `hi[j-16]` after: 32
            // consecutive values, i.e. 16 pairs in order.
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i / 2).cast(), v);
        }
        i += 32;
    }
    while i < k {
        let lo = u32::from(half::bf16::from_f32(src[i]).to_bits());
        let hi = u32::from(half::bf16::from_f32(src[i + 1]).to_bits());
        dst[i / 2] = lo | (hi << 16);
        i += 2;
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn micro(
    a: &[u32],
    pairs: usize,
    b: &[u32],
    mr: usize,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    assert!(a.len() >= mr * pairs && b.len() >= pairs * NR && (1..=MR).contains(&mr));
    assert!(cols <= NR && c.len() >= (mr - 1) * ldc + cols);
    with_rows!(mr, micro_rows(a, pairs, b, c, ldc, cols))
}

#[target_feature(enable = "avx512f,avx512bf16")]
fn micro_rows<const R: usize>(
    a: &[u32],
    pairs: usize,
    b: &[u32],
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    assert!(a.len() >= R * pairs && b.len() >= pairs * NR && cols <= NR);
    assert!(c.len() >= (R - 1) * ldc + cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: (p + 1)·NR ≤ pairs·NR ≤ b.len(); r·pairs + p < R·pairs ≤ a.len().
        unsafe {
            let b0 =
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(p * NR).cast()));
            let b1 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                bp.add(p * NR + 16).cast(),
            ));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *ap.add(r * pairs + p) as i32,
                ));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
    }
    let m0: __mmask16 = if cols >= 16 {
        0xffff
    } else {
        (1u16 << cols) - 1
    };
    let m1: __mmask16 = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        (1u16 << (cols - 16)) - 1
    } else {
        0
    };
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: the masks cover only the first `cols` columns of row r, inside `c`.
        unsafe {
            let row = c.as_mut_ptr().add(r * ldc);
            _mm512_mask_storeu_ps(row, m0, acc[0]);
            _mm512_mask_storeu_ps(row.add(16), m1, acc[1]);
        }
    }
}

/// `dst[i]` = bf16 of `lo[i]` (low half) and of `hi[i]` (high half), rounded to nearest even,
/// for every `i < dst.len()`: two rows (or two columns) of a matrix as the pair words of a
/// panel or of packed rows, 16 words per step.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn interleave_pairs(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    let len = dst.len();
    assert!(lo.len() >= len && hi.len() >= len);
    let mut i = 0;
    while i + 16 <= len {
        // SAFETY: i + 16 ≤ len ≤ the lengths of lo, hi and dst (asserted).
        unsafe {
            let l = _mm512_cvtneps_pbh(_mm512_loadu_ps(lo.as_ptr().add(i)));
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(hi.as_ptr().add(i)));
            let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(l));
            let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h));
            let words = _mm512_or_si512(l, _mm512_slli_epi32::<16>(h));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), words);
        }
        i += 16;
    }
    for ((d, &l), &h) in dst[i..].iter_mut().zip(&lo[i..]).zip(&hi[i..]) {
        let l = u32::from(half::bf16::from_f32(l).to_bits());
        let h = u32::from(half::bf16::from_f32(h).to_bits());
        *d = l | (h << 16);
    }
}
