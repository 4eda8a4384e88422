//! The host decode step's arithmetic between projections, on row-major `Vec<f32>` buffers:
//! RMSNorm, RoPE, SiLU·up, and grouped-query attention over a [`HostKv`] store.
//!
//! Each follows what the burn path (and transformers) computes in float32: RMSNorm as
//! `w·(x·1/√(mean(x²)+ε))`, RoPE as `x·cos + rotate_half(x)·sin`, softmax with the maximum
//! subtracted. Masked keys (padding, or positions after the query) are skipped rather than
//! given `f32::MIN` scores, so no `exp` of a huge negative number is taken.
//!
//! Attention's dot products, `exp` and weighted sums of values, and SiLU·up, have three paths
//! chosen at run time by [`Isa`] (one dispatch per kernel; `simd = false` forces the portable
//! one): AVX-512F (16 lanes), AVX2+FMA (8 lanes, for CPUs without AVX-512) and portable
//! loops that compute the same sums in scalar code.
// Decoder math over tensors whose shapes were checked when the checkpoint loaded
// (`weights::TensorStore::tensor`, `gguf::mapping`), indexed in hot loops. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use super::cache::{HostKv, Plan};
use crate::fused::simd::{rms_norm_row, swiglu_isa};
use crate::kernels::Isa;

/// RMSNorm of every `weight.len()`-wide row of `x` (the training op's row kernel).
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (o, row) in out.chunks_mut(weight.len()).zip(x.chunks(weight.len())) {
        rms_norm_row(row, weight, eps, o);
    }
    out
}

/// RoPE in place on `x` `[n, heads·dim]` with `cos`/`sin` `[n, dim/2]` (both halves of a
/// head share one frequency): `x₁' = x₁·cos − x₂·sin`, `x₂' = x₂·cos + x₁·sin`.
pub(crate) fn rope(x: &mut [f32], dim: usize, cos: &[f32], sin: &[f32]) {
    let half = dim / 2;
    let n = cos.len() / half.max(1);
    let width = x.len() / n.max(1);
    for (r, row) in x.chunks_mut(width).enumerate() {
        let (c, s) = (&cos[r * half..][..half], &sin[r * half..][..half]);
        for head in row.chunks_mut(dim) {
            let (x1, x2) = head.split_at_mut(half);
            for ((p, q), (c, s)) in x1.iter_mut().zip(x2.iter_mut()).zip(c.iter().zip(s)) {
                let (a, b) = (*p, *q);
                *p = a * c - b * s;
                *q = b * c + a * s;
            }
        }
    }
}

/// `silu(gate)·up`, elementwise (the training op's row kernel; `simd`: the fastest path the
/// CPU has, see [`Isa::select`]).
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], simd: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; gate.len()];
    swiglu_isa(gate, up, &mut out, Isa::select(simd));
    out
}

/// `acc ← acc + x`, elementwise (residual connections).
pub(crate) fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, v)| *a += v);
}

/// The attention heads' layout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// Query heads.
    pub query: usize,
    /// Key/value heads (each shared by `query / kv` query heads).
    pub kv: usize,
    /// Values per head.
    pub dim: usize,
}

/// Attention of the queries `q` `[b·s, heads·dim]` (RoPE applied) over `layer` of `kv`,
/// whose positions `0..plan.past + s` are filled: query `t` of row `i` sees key `j` when
/// `j ≤ past + t` and `plan.key_valid[i][j]`. Returns `[b·s, heads·dim]` (zeros for a query
/// that sees no key, as only padding queries do).
pub(crate) fn attend(
    q: &[f32],
    kv: &HostKv,
    layer: usize,
    plan: &Plan,
    s: usize,
    heads: Heads,
    simd: bool,
) -> Vec<f32> {
    let Heads {
        query,
        kv: kvh,
        dim,
    } = heads;
    let group = query / kvh.max(1);
    let scale = (dim as f64).powf(-0.5) as f32;
    let width = query * dim;
    let mut out = vec![0.0f32; q.len()];
    let mut keys: Vec<usize> = Vec::new();
    let mut scores: Vec<f32> = Vec::new();
    for (i, valid) in plan.key_valid.iter().enumerate() {
        for t in 0..s {
            let limit = (plan.past + t + 1).min(valid.len());
            keys.clear();
            keys.extend((0..limit).filter(|&j| valid[j]));
            if keys.is_empty() {
                continue;
            }
            let n = i * s + t;
            for h in 0..query {
                let (kbuf, vbuf) = kv.head(layer, i, h / group.max(1));
                let head = Head {
                    keys: kbuf,
                    values: vbuf,
                    dim,
                    scale,
                };
                let qh = &q[n * width + h * dim..][..dim];
                let o = &mut out[n * width + h * dim..][..dim];
                attend_head(qh, &head, &keys, &mut scores, o, simd);
            }
        }
    }
    out
}

/// One key/value head's cached buffers (`[capacity, dim]` each) and the score scale.
pub(crate) struct Head<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub dim: usize,
    pub scale: f32,
}

/// One query head `q` over the key positions `keys` of `head`: softmax-weighted sum of
/// their values into `out` (`scores`: scratch space). A key position `j` is the `j`-th
/// `dim`-wide row of the buffers (a paged pool passes its slots).
pub(crate) fn attend_head(
    q: &[f32],
    head: &Head<'_>,
    keys: &[usize],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    simd: bool,
) {
    attend_head_isa(q, head, keys, scores, out, Isa::select(simd));
}

/// [`attend_head`] on the path `isa` (a path this CPU lacks runs the portable loops).
pub(crate) fn attend_head_isa(
    q: &[f32],
    head: &Head<'_>,
    keys: &[usize],
    scores: &mut Vec<f32>,
    out: &mut [f32],
    isa: Isa,
) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected; the whole head runs in one AVX-512 function so
        // that its loops inline (one call per head, not per key).
        Isa::Avx512 => return unsafe { avx512::attend_head(q, head, keys, scores, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected; one AVX2 function per head, as above.
        Isa::Avx2Fma => return unsafe { avx2::attend_head(q, head, keys, scores, out) },
        _ => {}
    }
    let dim = head.dim;
    scores.clear();
    scores.extend(
        keys.iter()
            .map(|&j| dot_isa(q, &head.keys[j * dim..][..dim], Isa::Portable) * head.scale),
    );
    let sum = exp_normalise_isa(scores, Isa::Portable);
    for (&j, &p) in keys.iter().zip(scores.iter()) {
        axpy_isa(out, p, &head.values[j * dim..][..dim], Isa::Portable);
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|v| *v *= inv);
}

/// `Σ aᵢ·bᵢ`.
#[cfg(test)]
pub(crate) fn dot(a: &[f32], b: &[f32], simd: bool) -> f32 {
    dot_isa(a, b, Isa::select(simd))
}

/// [`dot`] on the path `isa`.
pub(crate) fn dot_isa(a: &[f32], b: &[f32], isa: Isa) -> f32 {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected.
        Isa::Avx512 => return unsafe { avx512::dot(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected.
        Isa::Avx2Fma => return unsafe { avx2::dot(a, b) },
        _ => {}
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y ← y + a·x`.
#[cfg(test)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32], simd: bool) {
    axpy_isa(y, a, x, Isa::select(simd));
}

/// [`axpy`] on the path `isa`.
pub(crate) fn axpy_isa(y: &mut [f32], a: f32, x: &[f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected.
        Isa::Avx512 => return unsafe { avx512::axpy(y, a, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected.
        Isa::Avx2Fma => return unsafe { avx2::axpy(y, a, x) },
        _ => {}
    }
    y.iter_mut().zip(x).for_each(|(v, x)| *v += a * x);
}

/// `xᵢ ← exp(xᵢ − max x)` in place; returns `Σ xᵢ` afterwards (softmax's denominator).
#[cfg(test)]
pub(crate) fn exp_normalise(x: &mut [f32], simd: bool) -> f32 {
    exp_normalise_isa(x, Isa::select(simd))
}

/// [`exp_normalise`] on the path `isa`.
pub(crate) fn exp_normalise_isa(x: &mut [f32], isa: Isa) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected.
        Isa::Avx512 => return unsafe { avx512::exp_sub(x, max) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected.
        Isa::Avx2Fma => return unsafe { avx2::exp_sub(x, max) },
        _ => {}
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! AVX-512 versions of the attention loops (16 lanes; the tails in scalar code).

    use std::arch::x86_64::*;

    use super::Head;
    use crate::fused::simd::avx512::exp16;

    const LANES: usize = 16;

    /// [`super::attend_head`]: scores four keys at a time (independent accumulators), `exp`
    /// 16 lanes at a time, and the weighted sum of values with the output in registers
    /// (64 values per pass over the keys).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attend_head(
        q: &[f32],
        head: &Head<'_>,
        keys: &[usize],
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let d = head.dim;
        let full = d / LANES * LANES;
        scores.clear();
        let mut quads = keys.chunks_exact(4);
        for quad in &mut quads {
            let rows = [0, 1, 2, 3].map(|r| &head.keys[quad[r] * d..][..d]);
            let mut acc = [_mm512_setzero_ps(); 4];
            for c in (0..full).step_by(LANES) {
                // SAFETY: c + 16 ≤ full ≤ d = every slice's length.
                let qv = unsafe { _mm512_loadu_ps(q.as_ptr().add(c)) };
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a = _mm512_fmadd_ps(qv, unsafe { _mm512_loadu_ps(row.as_ptr().add(c)) }, *a);
                }
            }
            for (a, row) in acc.iter().zip(&rows) {
                let tail: f32 = q[full..d]
                    .iter()
                    .zip(&row[full..d])
                    .map(|(x, y)| x * y)
                    .sum();
                scores.push((_mm512_reduce_add_ps(*a) + tail) * head.scale);
            }
        }
        for &j in quads.remainder() {
            // SAFETY: avx512f is enabled here.
            scores.push(unsafe { dot(q, &head.keys[j * d..][..d]) } * head.scale);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // SAFETY: as above.
        let inv = 1.0 / unsafe { exp_sub(scores, max) };
        let mut c = 0;
        while c + 4 * LANES <= full {
            let mut acc = [_mm512_setzero_ps(); 4];
            for (&j, &p) in keys.iter().zip(scores.iter()) {
                let (pv, row) = (_mm512_set1_ps(p), &head.values[j * d + c..][..4 * LANES]);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: r·16 + 16 ≤ 64 = row's length.
                    let x = unsafe { _mm512_loadu_ps(row.as_ptr().add(r * LANES)) };
                    *a = _mm512_fmadd_ps(pv, x, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let v = _mm512_mul_ps(*a, _mm512_set1_ps(inv));
                // SAFETY: c + 64 ≤ full ≤ out.len().
                unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c + r * LANES), v) };
            }
            c += 4 * LANES;
        }
        while c + LANES <= full {
            let mut acc = _mm512_setzero_ps();
            for (&j, &p) in keys.iter().zip(scores.iter()) {
                // SAFETY: c + 16 ≤ full ≤ d.
                let x = unsafe { _mm512_loadu_ps(head.values.as_ptr().add(j * d + c)) };
                acc = _mm512_fmadd_ps(_mm512_set1_ps(p), x, acc);
            }
            let v = _mm512_mul_ps(acc, _mm512_set1_ps(inv));
            // SAFETY: c + 16 ≤ out.len().
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c), v) };
            c += LANES;
        }
        for (i, o) in out.iter_mut().enumerate().take(d).skip(full) {
            let sum: f32 = keys
                .iter()
                .zip(scores.iter())
                .map(|(&j, &p)| p * head.values[j * d + i])
                .sum();
            *o = sum * inv;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / LANES * LANES;
        let mut acc = _mm512_setzero_ps();
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 16 ≤ full ≤ both lengths.
            let (x, y) = unsafe {
                (
                    _mm512_loadu_ps(a.as_ptr().add(i)),
                    _mm512_loadu_ps(b.as_ptr().add(i)),
                )
            };
            acc = _mm512_fmadd_ps(x, y, acc);
        }
        let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
        _mm512_reduce_add_ps(acc) + tail
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let full = n / LANES * LANES;
        let av = _mm512_set1_ps(a);
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 16 ≤ full ≤ both lengths.
            unsafe {
                let yp = y.as_mut_ptr().add(i);
                let v =
                    _mm512_fmadd_ps(av, _mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(yp));
                _mm512_storeu_ps(yp, v);
            }
        }
        for (v, x) in y[full..n].iter_mut().zip(&x[full..n]) {
            *v += a * x;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_sub(x: &mut [f32], max: f32) -> f32 {
        let n = x.len();
        let full = n / LANES * LANES;
        let m = _mm512_set1_ps(max);
        let mut acc = _mm512_setzero_ps();
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 16 ≤ full ≤ x.len().
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), m));
                _mm512_storeu_ps(p, e);
                acc = _mm512_add_ps(acc, e);
            }
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if full < n {
            let mut tail = [f32::NEG_INFINITY; LANES];
            tail[..n - full].copy_from_slice(&x[full..]);
            // SAFETY: `tail` holds 16 values.
            let e = exp16(_mm512_sub_ps(unsafe { _mm512_loadu_ps(tail.as_ptr()) }, m));
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(tail.as_mut_ptr(), e) };
            x[full..].copy_from_slice(&tail[..n - full]);
            sum += tail[..n - full].iter().sum::<f32>();
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2+FMA versions of the attention loops (8 lanes; the tails in scalar code).

    use std::arch::x86_64::*;

    use super::Head;
    use crate::fused::simd::avx2::{exp8, hsum};

    const LANES: usize = 8;

    /// [`super::attend_head`]: scores four keys at a time (independent accumulators), `exp`
    /// 8 lanes at a time, and the weighted sum of values with the output in registers
    /// (32 values per pass over the keys).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend_head(
        q: &[f32],
        head: &Head<'_>,
        keys: &[usize],
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let d = head.dim;
        assert!(q.len() >= d && out.len() >= d);
        let full = d / LANES * LANES;
        scores.clear();
        let mut quads = keys.chunks_exact(4);
        for quad in &mut quads {
            let rows = [0, 1, 2, 3].map(|r| &head.keys[quad[r] * d..][..d]);
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in (0..full).step_by(LANES) {
                // SAFETY: c + 8 ≤ full ≤ d ≤ q.len().
                let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(c)) };
                for (a, row) in acc.iter_mut().zip(&rows) {
                    // SAFETY: c + 8 ≤ full ≤ d = row's length.
                    let kv = unsafe { _mm256_loadu_ps(row.as_ptr().add(c)) };
                    *a = _mm256_fmadd_ps(qv, kv, *a);
                }
            }
            for (a, row) in acc.iter().zip(&rows) {
                let tail: f32 = q[full..d]
                    .iter()
                    .zip(&row[full..d])
                    .map(|(x, y)| x * y)
                    .sum();
                scores.push((hsum(*a) + tail) * head.scale);
            }
        }
        for &j in quads.remainder() {
            // SAFETY: avx2 and fma are enabled here.
            scores.push(unsafe { dot(q, &head.keys[j * d..][..d]) } * head.scale);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // SAFETY: as above.
        let inv = 1.0 / unsafe { exp_sub(scores, max) };
        let mut c = 0;
        while c + 4 * LANES <= full {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (&j, &p) in keys.iter().zip(scores.iter()) {
                let (pv, row) = (_mm256_set1_ps(p), &head.values[j * d + c..][..4 * LANES]);
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: r·8 + 8 ≤ 32 = row's length.
                    let x = unsafe { _mm256_loadu_ps(row.as_ptr().add(r * LANES)) };
                    *a = _mm256_fmadd_ps(pv, x, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                let v = _mm256_mul_ps(*a, _mm256_set1_ps(inv));
                // SAFETY: c + 32 ≤ full ≤ d ≤ out.len().
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + r * LANES), v) };
            }
            c += 4 * LANES;
        }
        while c + LANES <= full {
            let mut acc = _mm256_setzero_ps();
            for (&j, &p) in keys.iter().zip(scores.iter()) {
                let row = &head.values[j * d + c..][..LANES];
                // SAFETY: `row` holds 8 floats.
                let x = unsafe { _mm256_loadu_ps(row.as_ptr()) };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(p), x, acc);
            }
            let v = _mm256_mul_ps(acc, _mm256_set1_ps(inv));
            // SAFETY: c + 8 ≤ full ≤ out.len().
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c), v) };
            c += LANES;
        }
        for (i, o) in out.iter_mut().enumerate().take(d).skip(full) {
            let sum: f32 = keys
                .iter()
                .zip(scores.iter())
                .map(|(&j, &p)| p * head.values[j * d + i])
                .sum();
            *o = sum * inv;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / LANES * LANES;
        let mut acc = _mm256_setzero_ps();
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 ≤ full ≤ both lengths.
            let (x, y) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                )
            };
            acc = _mm256_fmadd_ps(x, y, acc);
        }
        let tail: f32 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
        hsum(acc) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let full = n / LANES * LANES;
        let av = _mm256_set1_ps(a);
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 ≤ full ≤ both lengths.
            unsafe {
                let yp = y.as_mut_ptr().add(i);
                let v =
                    _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp));
                _mm256_storeu_ps(yp, v);
            }
        }
        for (v, x) in y[full..n].iter_mut().zip(&x[full..n]) {
            *v += a * x;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub(x: &mut [f32], max: f32) -> f32 {
        let n = x.len();
        let full = n / LANES * LANES;
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        for i in (0..full).step_by(LANES) {
            // SAFETY: i + 8 ≤ full ≤ x.len().
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut sum = hsum(acc);
        if full < n {
            let mut tail = [f32::NEG_INFINITY; LANES];
            tail[..n - full].copy_from_slice(&x[full..]);
            // SAFETY: `tail` holds 8 values.
            let e = exp8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(tail.as_ptr()) }, m));
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), e) };
            x[full..].copy_from_slice(&tail[..n - full]);
            sum += tail[..n - full].iter().sum::<f32>();
        }
        sum
    }
}

#[cfg(test)]
#[path = "host_math_tests.rs"]
mod tests;
