//! Row kernels of the fused training ops, each in two versions: AVX-512F (16 lanes, with a
//! vectorized `exp`) and a portable one (plain loops, `f32::exp`) that every other CPU uses.
//!
//! The vectorized `exp` is the Cephes single-precision scheme: `n = round(x·log₂e)`,
//! `r = x − n·ln2` in two parts, a degree-6 polynomial for `eʳ`, and `2ⁿ` applied with
//! `vscalefps`, which underflows to 0 (through the denormals) for very negative `x` without
//! the slow path glibc's `expf` takes there. Its error is within 2 ulp of `f32::exp` over the
//! whole range (`model/tests/fused_ops.rs` checks it against f64).
// Fused kernels over tensors whose shapes burn checked; indexed in hot loops. The
// parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::cell::Cell;

thread_local! {
    /// Set by [`with_portable_kernels`]: ops started on this thread use the portable kernels.
    static PORTABLE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the AVX-512F kernels can run here (and this thread has not asked for the portable
/// ones). Read once when an op starts, then passed to its kernels (which may run on rayon's
/// threads).
pub(crate) fn use_simd() -> bool {
    !PORTABLE_ONLY.with(Cell::get) && crate::kernels::simd_available()
}

/// Runs `f` with the fused ops started on this thread using the portable kernels, to compare
/// them with the AVX-512F ones.
pub fn with_portable_kernels<T>(f: impl FnOnce() -> T) -> T {
    let before = PORTABLE_ONLY.with(|p| p.replace(true));
    let out = f();
    PORTABLE_ONLY.with(|p| p.set(before));
    out
}

/// `exp` of every element of `x`, written to `out` (the same length); public for the tests of
/// the vectorized `exp`.
pub fn exp_into(x: &[f32], out: &mut [f32], simd: bool) {
    assert_eq!(x.len(), out.len(), "exp_into: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if simd && crate::kernels::simd_available() {
        // SAFETY: AVX-512F was detected at run time.
        unsafe { avx512::exp_into(x, out) };
        return;
    }
    let _ = simd;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.exp();
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
    out[..lo].fill(0.0);
    out[hi..].fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true where AVX-512F was detected ([`use_simd`]).
        unsafe { avx512::softmax(&x[lo..hi], &mut out[lo..hi], scale) };
        return;
    }
    let _ = simd;
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
    grad[..lo].fill(0.0);
    grad[hi..].fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `softmax_range`.
        unsafe { avx512::softmax_backward(&p[lo..hi], &mut grad[lo..hi], scale) };
        return;
    }
    let _ = simd;
    let (p, g) = (&p[lo..hi], &mut grad[lo..hi]);
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
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `softmax_range`.
        unsafe { avx512::swiglu(g, u, out) };
        return;
    }
    let _ = simd;
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g * sigmoid(g) * u;
    }
}

/// The input gradients of `silu(g)·u` for output gradient `dh`: `dg` is written over `dh`,
/// `du` into `du`.
pub(crate) fn swiglu_backward(g: &[f32], u: &[f32], dh: &mut [f32], du: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `softmax_range`.
        unsafe { avx512::swiglu_backward(g, u, dh, du) };
        return;
    }
    let _ = simd;
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
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() {
        return max;
    }
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `softmax_range`.
        return max + unsafe { avx512::sum_exp_shifted(x, max) }.ln();
    }
    let _ = simd;
    max + x.iter().map(|&v| (v - max).exp()).sum::<f32>().ln()
}

/// `out = scale·exp(x − shift)` elementwise.
pub(crate) fn scaled_exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `softmax_range`.
        unsafe { avx512::scaled_exp_shifted(x, shift, scale, out) };
        return;
    }
    let _ = simd;
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
