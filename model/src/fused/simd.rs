//! Row kernels of the fused training ops (and of the host decode step's SiLU·up), each in
//! three versions chosen at run time by [`Isa`] (one `…_isa` dispatch function per kernel;
//! the `simd: bool` forms pick [`Isa::select`]): AVX-512F (16 lanes, with a vectorized `exp`),
//! AVX2+FMA (8 lanes, the same `exp` scheme, for CPUs without AVX-512) and a portable one
//! (plain loops, `f32::exp`) that every other CPU uses.
//!
//! The vectorized `exp` is the Cephes single-precision scheme: `n = round(x·log₂e)`,
//! `r = x − n·ln2` in two parts, a degree-6 polynomial for `eʳ`, and `2ⁿ` applied with
//! `vscalefps`, which underflows to 0 (through the denormals) for very negative `x` without
//! the slow path glibc's `expf` takes there (AVX2 has no `vscalefps`: it multiplies by
//! `2^(n/2)` and `2^(n−n/2)`, both normal, so the one rounding to a denormal is the last).
//! Its error is within 2 ulp of `f32::exp` over the
//! whole range (`model/tests/fused_ops.rs` checks it against f64).
// Fused kernels over tensors whose shapes burn checked; indexed in hot loops. The
// parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::cell::Cell;

use crate::kernels::Isa;

thread_local! {
    /// Set by [`with_portable_kernels`]: ops started on this thread use the portable kernels.
    static PORTABLE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether a SIMD path (AVX-512F or AVX2+FMA) can run here (and this thread has not asked
/// for the portable ones). Read once when an op starts, then passed to its kernels (which may run on rayon's
/// threads).
pub(crate) fn use_simd() -> bool {
    !PORTABLE_ONLY.with(Cell::get) && crate::kernels::simd_available()
}

/// Runs `f` with the fused ops started on this thread using the portable kernels, to compare
/// them with the SIMD ones.
pub fn with_portable_kernels<T>(f: impl FnOnce() -> T) -> T {
    let before = PORTABLE_ONLY.with(|p| p.replace(true));
    let out = f();
    PORTABLE_ONLY.with(|p| p.set(before));
    out
}

/// `exp` of every element of `x`, written to `out` (the same length); public for the tests of
/// the vectorized `exp`.
pub fn exp_into(x: &[f32], out: &mut [f32], simd: bool) {
    exp_into_isa(x, out, Isa::select(simd));
}

/// [`exp_into`] on the path `isa` (a path this CPU lacks runs the portable loop).
pub fn exp_into_isa(x: &[f32], out: &mut [f32], isa: Isa) {
    assert_eq!(x.len(), out.len(), "exp_into: lengths differ");
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => unsafe { avx512::exp_into(x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => unsafe { avx2::exp_into(x, out) },
        _ => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v.exp();
            }
        }
    }
}

/// Softmax of `x[lo..hi]` with every element multiplied by `scale` first, written to
/// `out[lo..hi]`; the rest of `out` is set to 0 (masked keys).
pub(crate) fn softmax_range(
    x: &[f32],
    out: &mut [f32],
    lo: usize,
    hi: usize,
    scale: f32,
    simd: bool,
) {
    softmax_range_isa(x, out, lo, hi, scale, Isa::select(simd));
}

/// [`softmax_range`] on the path `isa`.
pub(crate) fn softmax_range_isa(
    x: &[f32],
    out: &mut [f32],
    lo: usize,
    hi: usize,
    scale: f32,
    isa: Isa,
) {
    out[..lo].fill(0.0);
    out[hi..].fill(0.0);
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => return unsafe { avx512::softmax(&x[lo..hi], &mut out[lo..hi], scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => return unsafe { avx2::softmax(&x[lo..hi], &mut out[lo..hi], scale) },
        _ => {}
    }
    let (x, out) = (&x[lo..hi], &mut out[lo..hi]);
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut sum = 0.0f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v * scale - max).exp();
        sum += *o;
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Softmax's input gradient on `[lo, hi)`, in place in `grad` (the output gradient on entry):
/// `scale·p·(g − Σ g·p)`; 0 outside the range.
pub(crate) fn softmax_backward_range(
    p: &[f32],
    grad: &mut [f32],
    lo: usize,
    hi: usize,
    scale: f32,
    simd: bool,
) {
    softmax_backward_range_isa(p, grad, lo, hi, scale, Isa::select(simd));
}

/// [`softmax_backward_range`] on the path `isa`.
pub(crate) fn softmax_backward_range_isa(
    p: &[f32],
    grad: &mut [f32],
    lo: usize,
    hi: usize,
    scale: f32,
    isa: Isa,
) {
    grad[..lo].fill(0.0);
    grad[hi..].fill(0.0);
    let (pr, gr) = (&p[lo..hi], &mut grad[lo..hi]);
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => return unsafe { avx512::softmax_backward(pr, gr, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => return unsafe { avx2::softmax_backward(pr, gr, scale) },
        _ => {}
    }
    let (p, g) = (pr, gr);
    let dot: f32 = p.iter().zip(g.iter()).map(|(p, g)| p * g).sum();
    for (g, &p) in g.iter_mut().zip(p) {
        *g = scale * p * (*g - dot);
    }
}

/// RMSNorm of one row: `out = w·(x·r)` with `r = 1/√(mean(x²)+eps)`, which it returns (the
/// backward needs it).
pub(crate) fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for ((o, &x), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (x * r);
    }
    r
}

/// `silu(g)·u` elementwise into `out`.
pub(crate) fn swiglu(g: &[f32], u: &[f32], out: &mut [f32], simd: bool) {
    swiglu_isa(g, u, out, Isa::select(simd));
}

/// [`swiglu`] on the path `isa`.
pub(crate) fn swiglu_isa(g: &[f32], u: &[f32], out: &mut [f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => return unsafe { avx512::swiglu(g, u, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => return unsafe { avx2::swiglu(g, u, out) },
        _ => {}
    }
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

/// The input gradients of `silu(g)·u` for output gradient `dh`: `dg` is written over `dh`,
/// `du` into `du`.
pub(crate) fn swiglu_backward(g: &[f32], u: &[f32], dh: &mut [f32], du: &mut [f32], simd: bool) {
    swiglu_backward_isa(g, u, dh, du, Isa::select(simd));
}

/// [`swiglu_backward`] on the path `isa`.
pub(crate) fn swiglu_backward_isa(g: &[f32], u: &[f32], dh: &mut [f32], du: &mut [f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => return unsafe { avx512::swiglu_backward(g, u, dh, du) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => return unsafe { avx2::swiglu_backward(g, u, dh, du) },
        _ => {}
    }
    for (((dh, du), &g), &u) in dh.iter_mut().zip(du.iter_mut()).zip(g).zip(u) {
        let s = sigmoid(g);
        *du = *dh * g * s;
        *dh = *dh * u * s * (1.0 + g * (1.0 - s));
    }
}

/// The logistic function, as burn-flex computes it (no overflow for either sign).
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log Σ exp(x)` of one row (shifted by its maximum).
pub(crate) fn log_sum_exp(x: &[f32], simd: bool) -> f32 {
    log_sum_exp_isa(x, Isa::select(simd))
}

/// [`log_sum_exp`] on the path `isa`.
pub(crate) fn log_sum_exp_isa(x: &[f32], isa: Isa) -> f32 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() {
        return max;
    }
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => return max + unsafe { avx512::sum_exp_shifted(x, max) }.ln(),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => return max + unsafe { avx2::sum_exp_shifted(x, max) }.ln(),
        _ => {}
    }
    max + x.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

/// `out = scale·exp(x − shift)` elementwise.
pub(crate) fn scaled_exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32], simd: bool) {
    scaled_exp_shifted_isa(x, shift, scale, out, Isa::select(simd));
}

/// [`scaled_exp_shifted`] on the path `isa`.
pub(crate) fn scaled_exp_shifted_isa(x: &[f32], shift: f32, scale: f32, out: &mut [f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time (or_portable).
        Isa::Avx512 => return unsafe { avx512::scaled_exp_shifted(x, shift, scale, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected at run time (or_portable).
        Isa::Avx2Fma => return unsafe { avx2::scaled_exp_shifted(x, shift, scale, out) },
        _ => {}
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = scale * (v - shift).exp();
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    //! The AVX-512F row kernels; [`exp16`] also serves the host decode step's attention.

    use std::arch::x86_64::*;

    const LANES: usize = 16;

    /// `eˣ` for 16 lanes (see the module docs); NaN stays NaN.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn exp16(x: __m512) -> __m512 {
        // max/min return their second operand when one is NaN: keep `x` second.
        let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
        // Above ln(f32::MAX) ≈ 88.7228 the scaling by 2ⁿ (n = 128) overflows to +inf, as it should.
        let x = _mm512_min_ps(_mm512_set1_ps(89.0), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(y, n)
    }

    /// Loads lanes `[i, i+len)` of `x` (`len` < 16 for a tail), the rest set to `fill`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load(x: &[f32], i: usize, fill: f32) -> (__m512, __mmask16) {
        let len = (x.len() - i).min(LANES);
        let mask: __mmask16 = if len == LANES {
            0xffff
        } else {
            (1u16 << len) - 1
        };
        // SAFETY: the mask limits the load to `x[i..i+len]`.
        let v = unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask, x.as_ptr().add(i)) };
        (v, mask)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn store(out: &mut [f32], i: usize, v: __m512, mask: __mmask16) {
        // SAFETY: `mask` came from `load` on a slice of the same length.
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, v) };
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_into(x: &[f32], out: &mut [f32]) {
        for i in (0..x.len()).step_by(LANES) {
            let (v, m) = load(x, i, 0.0);
            store(out, i, exp16(v), m);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn sum_exp_shifted(x: &[f32], shift: f32) -> f32 {
        let sh = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        for i in (0..x.len()).step_by(LANES) {
            let (v, m) = load(x, i, 0.0);
            let e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(v, sh)));
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn scaled_exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
        let (sh, sc) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale));
        for i in (0..x.len()).step_by(LANES) {
            let (v, m) = load(x, i, 0.0);
            store(out, i, _mm512_mul_ps(sc, exp16(_mm512_sub_ps(v, sh))), m);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax(x: &[f32], out: &mut [f32], scale: f32) {
        if x.is_empty() {
            return;
        }
        let sc = _mm512_set1_ps(scale);
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..x.len()).step_by(LANES) {
            let (v, _) = load(x, i, f32::NEG_INFINITY);
            mx = _mm512_max_ps(mx, _mm512_mul_ps(v, sc));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        let mut sum = _mm512_setzero_ps();
        for i in (0..x.len()).step_by(LANES) {
            let (v, m) = load(x, i, 0.0);
            let e = exp16(_mm512_sub_ps(_mm512_mul_ps(v, sc), max));
            let e = _mm512_maskz_mov_ps(m, e);
            sum = _mm512_add_ps(sum, e);
            store(out, i, e, m);
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for i in (0..out.len()).step_by(LANES) {
            let (v, m) = load(out, i, 0.0);
            store(out, i, _mm512_mul_ps(v, inv), m);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_backward(p: &[f32], g: &mut [f32], scale: f32) {
        let mut dot = _mm512_setzero_ps();
        for i in (0..p.len()).step_by(LANES) {
            let (pv, _) = load(p, i, 0.0);
            let (gv, _) = load(g, i, 0.0);
            dot = _mm512_fmadd_ps(pv, gv, dot);
        }
        let dot = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
        let sc = _mm512_set1_ps(scale);
        for i in (0..p.len()).step_by(LANES) {
            let (pv, m) = load(p, i, 0.0);
            let (gv, _) = load(g, i, 0.0);
            let d = _mm512_mul_ps(_mm512_mul_ps(sc, pv), _mm512_sub_ps(gv, dot));
            store(g, i, d, m);
        }
    }

    /// `σ(g)` for 16 lanes: `1/(1+e⁻ᵍ)`, exact in the limits (e⁻ᵍ overflowing gives 0).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn sigmoid16(g: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_div_ps(one, _mm512_add_ps(one, e))
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
        for i in (0..g.len()).step_by(LANES) {
            let (gv, m) = load(g, i, 0.0);
            let (uv, _) = load(u, i, 0.0);
            let h = _mm512_mul_ps(_mm512_mul_ps(gv, sigmoid16(gv)), uv);
            store(out, i, h, m);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn swiglu_backward(g: &[f32], u: &[f32], dh: &mut [f32], du: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        for i in (0..g.len()).step_by(LANES) {
            let (gv, m) = load(g, i, 0.0);
            let (uv, _) = load(u, i, 0.0);
            let (dv, _) = load(dh, i, 0.0);
            let s = sigmoid16(gv);
            let dgs = _mm512_mul_ps(dv, s);
            store(du, i, _mm512_mul_ps(dgs, gv), m);
            // dh·u·s·(1 + g·(1−s))
            let k = _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one);
            store(dh, i, _mm512_mul_ps(_mm512_mul_ps(dgs, uv), k), m);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! The AVX2+FMA row kernels (8 lanes; tails through a stack buffer); [`exp8`] also serves
    //! the host decode step's attention and SiLU.

    use std::arch::x86_64::*;

    const LANES: usize = 8;

    /// `2ᵏ` for integer lanes `k` in [-126, 127] (the exponent field set directly).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn pow2i(k: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    }

    /// `eˣ` for 8 lanes (see the module docs); NaN stays NaN.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn exp8(x: __m256) -> __m256 {
        // max/min return their second operand when one is NaN: keep `x` second.
        let x = _mm256_max_ps(_mm256_set1_ps(-104.0), x);
        // Above ln(f32::MAX) ≈ 88.7228 the scaling by 2ⁿ (n = 128) overflows to +inf.
        let x = _mm256_min_ps(_mm256_set1_ps(89.0), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // n in [-150, 128]: 2ⁿ as 2^(n>>1) · 2^(n − n>>1), both factors normal; NaN lanes
        // give garbage exponents here but y is NaN.
        let ni = _mm256_cvtps_epi32(n);
        let n1 = _mm256_srai_epi32::<1>(ni);
        let n2 = _mm256_sub_epi32(ni, n1);
        _mm256_mul_ps(_mm256_mul_ps(y, pow2i(n1)), pow2i(n2))
    }

    /// Lanes `[i, i+len)` of `x` (`len` < 8 for a tail), the rest set to `fill`; and `len`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load(x: &[f32], i: usize, fill: f32) -> (__m256, usize) {
        let len = (x.len() - i).min(LANES);
        if len == LANES {
            // SAFETY: i + 8 ≤ x.len().
            (unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }, len)
        } else {
            let mut buf = [fill; LANES];
            buf[..len].copy_from_slice(&x[i..i + len]);
            // SAFETY: `buf` holds 8 floats.
            (unsafe { _mm256_loadu_ps(buf.as_ptr()) }, len)
        }
    }

    /// Stores the first `len` lanes of `v` at `out[i..]`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store(out: &mut [f32], i: usize, v: __m256, len: usize) {
        let dst = &mut out[i..i + len];
        if len == LANES {
            // SAFETY: `dst` holds 8 floats.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
        } else {
            let mut buf = [0.0f32; LANES];
            // SAFETY: `buf` holds 8 floats.
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), v) };
            dst.copy_from_slice(&buf[..len]);
        }
    }

    /// Lanes past `len` set to 0.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn keep(v: __m256, len: usize) -> __m256 {
        if len == LANES {
            return v;
        }
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), idx);
        _mm256_and_ps(v, _mm256_castsi256_ps(live))
    }

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Maximum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hmax(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_into(x: &[f32], out: &mut [f32]) {
        for i in (0..x.len()).step_by(LANES) {
            let (v, len) = load(x, i, 0.0);
            store(out, i, exp8(v), len);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sum_exp_shifted(x: &[f32], shift: f32) -> f32 {
        let sh = _mm256_set1_ps(shift);
        let mut sum = _mm256_setzero_ps();
        for i in (0..x.len()).step_by(LANES) {
            let (v, len) = load(x, i, 0.0);
            let e = keep(exp8(_mm256_sub_ps(v, sh)), len);
            sum = _mm256_add_ps(sum, e);
        }
        hsum(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn scaled_exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) {
        let (sh, sc) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
        for i in (0..x.len()).step_by(LANES) {
            let (v, len) = load(x, i, 0.0);
            store(out, i, _mm256_mul_ps(sc, exp8(_mm256_sub_ps(v, sh))), len);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax(x: &[f32], out: &mut [f32], scale: f32) {
        if x.is_empty() {
            return;
        }
        let sc = _mm256_set1_ps(scale);
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..x.len()).step_by(LANES) {
            let (v, _) = load(x, i, f32::NEG_INFINITY);
            mx = _mm256_max_ps(mx, _mm256_mul_ps(v, sc));
        }
        let max = _mm256_set1_ps(hmax(mx));
        let mut sum = _mm256_setzero_ps();
        for i in (0..x.len()).step_by(LANES) {
            let (v, len) = load(x, i, 0.0);
            let e = keep(exp8(_mm256_sub_ps(_mm256_mul_ps(v, sc), max)), len);
            sum = _mm256_add_ps(sum, e);
            store(out, i, e, len);
        }
        let inv = _mm256_set1_ps(1.0 / hsum(sum));
        for i in (0..out.len()).step_by(LANES) {
            let (v, len) = load(out, i, 0.0);
            store(out, i, _mm256_mul_ps(v, inv), len);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_backward(p: &[f32], g: &mut [f32], scale: f32) {
        let mut dot = _mm256_setzero_ps();
        for i in (0..p.len()).step_by(LANES) {
            let (pv, _) = load(p, i, 0.0);
            let (gv, _) = load(g, i, 0.0);
            dot = _mm256_fmadd_ps(pv, gv, dot);
        }
        let dot = _mm256_set1_ps(hsum(dot));
        let sc = _mm256_set1_ps(scale);
        for i in (0..p.len()).step_by(LANES) {
            let (pv, len) = load(p, i, 0.0);
            let (gv, _) = load(g, i, 0.0);
            let d = _mm256_mul_ps(_mm256_mul_ps(sc, pv), _mm256_sub_ps(gv, dot));
            store(g, i, d, len);
        }
    }

    /// `σ(g)` for 8 lanes: `1/(1+e⁻ᵍ)`, exact in the limits (e⁻ᵍ overflowing gives 0).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sigmoid8(g: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_div_ps(one, _mm256_add_ps(one, e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn swiglu(g: &[f32], u: &[f32], out: &mut [f32]) {
        for i in (0..g.len()).step_by(LANES) {
            let (gv, len) = load(g, i, 0.0);
            let (uv, _) = load(u, i, 0.0);
            let h = _mm256_mul_ps(_mm256_mul_ps(gv, sigmoid8(gv)), uv);
            store(out, i, h, len);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn swiglu_backward(g: &[f32], u: &[f32], dh: &mut [f32], du: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        for i in (0..g.len()).step_by(LANES) {
            let (gv, len) = load(g, i, 0.0);
            let (uv, _) = load(u, i, 0.0);
            let (dv, _) = load(dh, i, 0.0);
            let s = sigmoid8(gv);
            let dgs = _mm256_mul_ps(dv, s);
            store(du, i, _mm256_mul_ps(dgs, gv), len);
            // dh·u·s·(1 + g·(1−s))
            let k = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one);
            store(dh, i, _mm256_mul_ps(_mm256_mul_ps(dgs, uv), k), len);
        }
    }
}
