//! Host kernels for the LoRA deltas of a decode step: `y[row] += (x[row]·Aᵀ)·(Bᵀ·scale)` for
//! the rows that use one adapter, added into the base projection's output (a host buffer)
//! before that output becomes a tensor, so a module costs one pass over its factors instead
//! of four burn operations.
//!
//! Each adapted module's factors are packed once ([`LoraFactors::new`]), in bf16 or f32:
//! - the down projection `A` `[r, in]` stays row-major as PEFT stores it (`x·Aᵀ` is `r` dot
//!   products of length `in`), its rank padded to a multiple of [`DOWN_RANKS`] with zero
//!   rows so the kernel works on that many ranks at once;
//! - the up projection `Bᵀ·scale` `[r, out]` is a [`PackedMatrix`] (the tile kernel with
//!   `k = r`).
//!
//! Rows that share an adapter share one pass over its factors ([`LoraFactors::add_delta`]
//! takes the rows of one adapter). One adapter's pass runs on the calling thread (its
//! factors are small); the passes of several adapters in one batch
//! ([`LoraFactors::add_deltas`]) are shared out over the decode pool ([`super::pool`]), one
//! adapter per part, when their factors together are large enough to pay.
//!
//! The down kernel has three paths chosen at run time by [`Isa`] (one dispatch function,
//! `down`): AVX-512F, AVX2+FMA (CPUs without AVX-512), and a portable loop (other CPUs, or
//! `simd = false`); the up projection is the tile kernel of [`PackedMatrix`] with the same
//! choice.
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use half::bf16;

use super::pool::{self, SharedMut};
use super::{Isa, PackedMatrix, Split, simd_available};

/// Ranks of `A` handled together by the down kernel (independent accumulator chains).
pub const DOWN_RANKS: usize = 4;

/// Rows handled together by the down kernel.
const DOWN_ROWS: usize = 4;

/// Lanes of one AVX-512 f32 vector.
const LANES: usize = 16;

/// `A` `[r_pad, in]` row-major.
#[derive(Debug, Clone, PartialEq)]
enum DownData {
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
    /// f32 values.
    F32(Vec<f32>),
}

/// One adapted module's factors, packed for the host kernels.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFactors {
    rank: usize,
    rank_pad: usize,
    in_dim: usize,
    down: DownData,
    /// `Bᵀ·scale`, `[rank_pad, out]` (zero rows past `rank`).
    up: PackedMatrix,
}

impl LoraFactors {
    /// Packs `a` (`lora_A`, `[rank, in]` row-major) and `b` (`lora_B`, `[out, rank]`) with
    /// `scale` folded into `Bᵀ`; `bf16` rounds both factors (nearest even) after scaling.
    pub fn new(
        a: &[f32],
        b: &[f32],
        [rank, in_dim, out_dim]: [usize; 3],
        scale: f32,
        bf16: bool,
    ) -> Self {
        assert_eq!(a.len(), rank * in_dim, "LoraFactors: A is not [r, in]");
        assert_eq!(b.len(), out_dim * rank, "LoraFactors: B is not [out, r]");
        let rank_pad = rank.next_multiple_of(DOWN_RANKS);
        let mut a_pad = a.to_vec();
        a_pad.resize(rank_pad * in_dim, 0.0);
        let mut bt = vec![0.0f32; rank_pad * out_dim];
        for o in 0..out_dim {
            for j in 0..rank {
                bt[j * out_dim + o] = b[o * rank + j] * scale;
            }
        }
        let (down, up) = if bf16 {
            let a16 = a_pad.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            (
                DownData::Bf16(a16),
                PackedMatrix::bf16(&bt, rank_pad, out_dim),
            )
        } else {
            (
                DownData::F32(a_pad),
                PackedMatrix::f32(&bt, rank_pad, out_dim),
            )
        };
        Self {
            rank,
            rank_pad,
            in_dim,
            down,
            up,
        }
    }

    /// `[rank, in, out]`.
    pub fn dims(&self) -> [usize; 3] {
        [self.rank, self.in_dim, self.up.dims()[1]]
    }

    /// Whether the factors are stored in bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.down, DownData::Bf16(_))
    }

    /// Bytes of the stored factors (padding included).
    pub fn resident_bytes(&self) -> usize {
        let down = match &self.down {
            DownData::Bf16(v) => v.len() * 2,
            DownData::F32(v) => v.len() * 4,
        };
        down + self.up.resident_bytes()
    }

    /// The packed factors as `(address, bytes)` ranges, in the order
    /// [`LoraFactors::add_delta`] reads them (for prefetching).
    pub(crate) fn memory(&self) -> [(*const u8, usize); 2] {
        let down = match &self.down {
            DownData::Bf16(v) => (v.as_ptr().cast(), v.len() * 2),
            DownData::F32(v) => (v.as_ptr().cast(), v.len() * 4),
        };
        [down, self.up.memory()]
    }

    /// Adds the delta of the rows `rows` of `x` (`[m, in]` row-major) into the same rows of
    /// `y` (`[m, out]`): `y[row] += (x[row]·Aᵀ)·(Bᵀ·scale)`.
    pub fn add_delta(&self, x: &[f32], y: &mut [f32], rows: &[usize]) {
        self.add_delta_with(x, y, rows, simd_available());
    }

    /// [`LoraFactors::add_delta`] choosing the SIMD path or the portable one (tests use both).
    pub fn add_delta_with(&self, x: &[f32], y: &mut [f32], rows: &[usize], simd: bool) {
        self.add_delta_isa(x, y, rows, Isa::select(simd));
    }

    /// [`LoraFactors::add_delta`] on the path `isa` (tests compare the paths; a path this CPU
    /// lacks runs the portable loop instead, see [`Isa::or_portable`]).
    pub fn add_delta_isa(&self, x: &[f32], y: &mut [f32], rows: &[usize], isa: Isa) {
        let [_, k, n] = self.dims();
        if rows.is_empty() {
            return;
        }
        check_rows(x, y, k, n, rows);
        let d = self.delta(x, rows, isa);
        for (i, &r) in rows.iter().enumerate() {
            for (yv, dv) in y[r * n..(r + 1) * n].iter_mut().zip(&d[i * n..(i + 1) * n]) {
                *yv += dv;
            }
        }
    }

    /// The delta `(x[row]·Aᵀ)·(Bᵀ·scale)` of the rows `rows`, `[rows.len(), out]`.
    fn delta(&self, x: &[f32], rows: &[usize], isa: Isa) -> Vec<f32> {
        let k = self.in_dim;
        let g = rows.len();
        // The group's rows contiguous: a slice of x when they already are, else a copy.
        let gathered: Vec<f32>;
        let first = rows.first().copied().unwrap_or(0);
        let xs: &[f32] = if rows.iter().enumerate().all(|(i, &r)| r == first + i) {
            &x[first * k..(first + g) * k]
        } else {
            gathered = rows
                .iter()
                .flat_map(|&r| x[r * k..(r + 1) * k].iter().copied())
                .collect();
            &gathered
        };
        let rp = self.rank_pad;
        let mut t = vec![0.0f32; g * rp];
        for j0 in (0..rp).step_by(DOWN_RANKS) {
            for r0 in (0..g).step_by(DOWN_ROWS) {
                let mr = (g - r0).min(DOWN_ROWS);
                let xr = &xs[r0 * k..(r0 + mr) * k];
                let tr = &mut t[r0 * rp..(r0 + mr) * rp];
                down(&self.down, xr, k, mr, rp, j0, tr, isa);
            }
        }
        self.up.matmul_isa(&t, g, isa, Split::Serial)
    }

    /// The deltas of several adapters in one batch: for each `(factors, rows)` of `groups`,
    /// [`LoraFactors::add_delta`] of those rows. The groups share out over the decode pool
    /// (one group per part) when no row is in two groups and their factors hold at least
    /// [`super::SERIAL_MAX_WEIGHTS`] values together; the values are the same either way.
    pub fn add_deltas(groups: &[(&LoraFactors, &[usize])], x: &[f32], y: &mut [f32]) {
        Self::add_deltas_split(groups, x, y, simd_available(), Split::Auto);
    }

    /// [`LoraFactors::add_deltas`] choosing SIMD and the pool use (tests compare them).
    pub fn add_deltas_split(
        groups: &[(&LoraFactors, &[usize])],
        x: &[f32],
        y: &mut [f32],
        simd: bool,
        split: Split,
    ) {
        for (f, rows) in groups {
            let [_, k, n] = f.dims();
            check_rows(x, y, k, n, rows);
        }
        let isa = Isa::select(simd);
        let weights: usize = groups.iter().map(|(f, _)| f.weights()).sum();
        let m = groups.first().map_or(0, |(f, _)| x.len() / f.in_dim);
        if groups.len() < 2 || !split.pooled(weights) || !rows_disjoint(groups, m) {
            for (f, rows) in groups {
                f.add_delta_isa(x, y, rows, isa);
            }
            return;
        }
        let out = SharedMut::new(y.as_mut_ptr());
        pool::run(groups.len(), &|p| {
            let (f, rows) = groups[p];
            if rows.is_empty() {
                return;
            }
            let n = f.dims()[2];
            let d = f.delta(x, rows, isa);
            for (i, &r) in rows.iter().enumerate() {
                // SAFETY: `check_rows` put row r inside `y`, and `rows_disjoint` gave each
                // row to one group, i.e. to one part of this run; `y` outlives the run.
                let yr = unsafe { std::slice::from_raw_parts_mut(out.get().add(r * n), n) };
                for (yv, dv) in yr.iter_mut().zip(&d[i * n..(i + 1) * n]) {
                    *yv += dv;
                }
            }
        });
    }

    /// Stored values of both factors (padding included).
    fn weights(&self) -> usize {
        let [_, k, n] = self.dims();
        self.rank_pad * (k + n)
    }
}

/// Panics unless `x` is `[m, k]`, `y` is `[m, n]` and every row is below `m`.
fn check_rows(x: &[f32], y: &[f32], k: usize, n: usize, rows: &[usize]) {
    assert!(
        k > 0 && x.len().is_multiple_of(k) && y.len() == x.len() / k * n,
        "LoraFactors::add_delta: x is not [m, in] or y not [m, out]"
    );
    let m = x.len() / k;
    assert!(
        rows.iter().all(|&r| r < m),
        "LoraFactors::add_delta: row out of range"
    );
}

/// Whether no row index (each below `m`) appears twice across `groups`.
fn rows_disjoint(groups: &[(&LoraFactors, &[usize])], m: usize) -> bool {
    let mut seen = vec![false; m];
    for (_, rows) in groups {
        for &r in rows.iter() {
            match seen.get_mut(r) {
                Some(s) if !*s => *s = true,
                _ => return false,
            }
        }
    }
    true
}

/// `t[row][j0 + q] = Σ_i x[row][i] · a[j0 + q][i]` for `q < DOWN_RANKS` and `row < mr`,
/// where `a` is the stored `A` `[r_pad, k]` (bf16 or f32), `x` is `[mr][k]` and `t`
/// `[mr][rp]`.
#[allow(clippy::too_many_arguments)]
fn down(
    a: &DownData,
    x: &[f32],
    k: usize,
    mr: usize,
    rp: usize,
    j0: usize,
    t: &mut [f32],
    isa: Isa,
) {
    match (isa.or_portable(), a) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected (or_portable); slice lengths are checked inside.
        (Isa::Avx512, DownData::Bf16(a)) => unsafe {
            avx512::down_bf16(&a[j0 * k..], x, k, mr, rp, j0, t)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx512, DownData::F32(a)) => unsafe {
            avx512::down_f32(&a[j0 * k..], x, k, mr, rp, j0, t)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected (or_portable); slice lengths are checked inside.
        (Isa::Avx2Fma, DownData::Bf16(a)) => unsafe {
            avx2::down_bf16(&a[j0 * k..], x, k, mr, rp, j0, t)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2Fma, DownData::F32(a)) => unsafe {
            avx2::down_f32(&a[j0 * k..], x, k, mr, rp, j0, t)
        },
        _ => down_portable_any(a, x, k, mr, rp, j0, t),
    }
}

/// The portable down kernel for either factor type.
fn down_portable_any(
    a: &DownData,
    x: &[f32],
    k: usize,
    mr: usize,
    rp: usize,
    j0: usize,
    t: &mut [f32],
) {
    match a {
        DownData::Bf16(a) => {
            let a = &a[j0 * k..];
            down_portable(|idx| bf16::from_bits(a[idx]).to_f32(), x, k, mr, rp, j0, t)
        }
        DownData::F32(a) => {
            let a = &a[j0 * k..];
            down_portable(|idx| a[idx], x, k, mr, rp, j0, t)
        }
    }
}

fn down_portable(
    a: impl Fn(usize) -> f32,
    x: &[f32],
    k: usize,
    mr: usize,
    rp: usize,
    j0: usize,
    t: &mut [f32],
) {
    for r in 0..mr {
        for q in 0..DOWN_RANKS {
            let s: f32 = (0..k).map(|i| x[r * k + i] * a(q * k + i)).sum();
            t[r * rp + j0 + q] = s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The AVX-512F bodies of the down kernel (callers check the CPU feature first).

    use std::arch::x86_64::*;

    use super::{DOWN_RANKS, DOWN_ROWS, LANES};

    /// Generates the entry point and the constant-row-count body for one factor type.
    macro_rules! down_kernel {
        ($entry:ident, $rows:ident, $elem:ty, $load:ident, $scalar:expr) => {
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $entry(
                a: &[$elem],
                x: &[f32],
                k: usize,
                mr: usize,
                rp: usize,
                j0: usize,
                t: &mut [f32],
            ) {
                assert!(mr <= DOWN_ROWS && j0 + DOWN_RANKS <= rp);
                match mr {
                    1 => $rows::<1>(a, x, k, rp, j0, t),
                    2 => $rows::<2>(a, x, k, rp, j0, t),
                    3 => $rows::<3>(a, x, k, rp, j0, t),
                    _ => $rows::<DOWN_ROWS>(a, x, k, rp, j0, t),
                }
            }

            #[target_feature(enable = "avx512f")]
            fn $rows<const R: usize>(
                a: &[$elem],
                x: &[f32],
                k: usize,
                rp: usize,
                j0: usize,
                t: &mut [f32],
            ) {
                assert!(a.len() >= DOWN_RANKS * k && x.len() >= R * k && t.len() >= R * rp);
                let full = k / LANES * LANES;
                let mut acc = [[_mm512_setzero_ps(); R]; DOWN_RANKS];
                let (ap, xp) = (a.as_ptr(), x.as_ptr());
                for i in (0..full).step_by(LANES) {
                    // SAFETY: q·k + i + 16 ≤ DOWN_RANKS·k ≤ a.len(), r·k + i + 16 ≤ R·k ≤ x.len().
                    unsafe {
                        let av = [
                            $load(ap.add(i)),
                            $load(ap.add(k + i)),
                            $load(ap.add(2 * k + i)),
                            $load(ap.add(3 * k + i)),
                        ];
                        for r in 0..R {
                            let xv = _mm512_loadu_ps(xp.add(r * k + i));
                            for q in 0..DOWN_RANKS {
                                acc[q][r] = _mm512_fmadd_ps(xv, av[q], acc[q][r]);
                            }
                        }
                    }
                }
                for (q, accq) in acc.iter().enumerate() {
                    for (r, v) in accq.iter().enumerate() {
                        let mut s = _mm512_reduce_add_ps(*v);
                        for i in full..k {
                            s += x[r * k + i] * $scalar(a[q * k + i]);
                        }
                        t[r * rp + j0 + q] = s;
                    }
                }
            }
        };
    }

    /// 16 f32 values.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        // SAFETY: the caller guarantees 16 readable floats at p.
        unsafe { _mm512_loadu_ps(p) }
    }

    /// 16 bf16 values widened to f32 (a 16-bit left shift).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable u16 at p.
        let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    }

    fn bf16_to_f32(v: u16) -> f32 {
        f32::from_bits(u32::from(v) << 16)
    }

    down_kernel!(down_f32, down_f32_rows, f32, load_f32, |v: f32| v);
    down_kernel!(down_bf16, down_bf16_rows, u16, load_bf16, bf16_to_f32);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2+FMA bodies of the down kernel (8 lanes; callers check the CPU features first).
    //! Two rows at a time: 4 ranks × 2 rows = 8 accumulators fit the 16 vector registers with
    //! the 4 factor vectors (rows 3 and 4 read `A` again, from cache).

    use std::arch::x86_64::*;

    use super::{DOWN_RANKS, DOWN_ROWS};

    /// f32 lanes of one AVX2 vector.
    const LANES: usize = 8;

    /// Rows per pass over `A`.
    const PASS_ROWS: usize = 2;

    /// Sum of the 8 lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Generates the entry point and the constant-row-count body for one factor type.
    macro_rules! down_kernel {
        ($entry:ident, $rows:ident, $elem:ty, $load:ident, $scalar:expr) => {
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $entry(
                a: &[$elem],
                x: &[f32],
                k: usize,
                mr: usize,
                rp: usize,
                j0: usize,
                t: &mut [f32],
            ) {
                assert!(mr <= DOWN_ROWS && j0 + DOWN_RANKS <= rp && x.len() >= mr * k);
                for r0 in (0..mr).step_by(PASS_ROWS) {
                    let (xs, ts) = (&x[r0 * k..], &mut t[r0 * rp..]);
                    if mr - r0 == 1 {
                        $rows::<1>(a, xs, k, rp, j0, ts);
                    } else {
                        $rows::<PASS_ROWS>(a, xs, k, rp, j0, ts);
                    }
                }
            }

            #[target_feature(enable = "avx2,fma")]
            fn $rows<const R: usize>(
                a: &[$elem],
                x: &[f32],
                k: usize,
                rp: usize,
                j0: usize,
                t: &mut [f32],
            ) {
                assert!(a.len() >= DOWN_RANKS * k && x.len() >= R * k);
                assert!(t.len() >= (R - 1) * rp + j0 + DOWN_RANKS);
                let full = k / LANES * LANES;
                let mut acc = [[_mm256_setzero_ps(); R]; DOWN_RANKS];
                let (ap, xp) = (a.as_ptr(), x.as_ptr());
                for i in (0..full).step_by(LANES) {
                    // SAFETY: q·k + i + 8 ≤ DOWN_RANKS·k ≤ a.len(), r·k + i + 8 ≤ R·k ≤ x.len().
                    unsafe {
                        let av = [
                            $load(ap.add(i)),
                            $load(ap.add(k + i)),
                            $load(ap.add(2 * k + i)),
                            $load(ap.add(3 * k + i)),
                        ];
                        for r in 0..R {
                            let xv = _mm256_loadu_ps(xp.add(r * k + i));
                            for q in 0..DOWN_RANKS {
                                acc[q][r] = _mm256_fmadd_ps(xv, av[q], acc[q][r]);
                            }
                        }
                    }
                }
                for (q, accq) in acc.iter().enumerate() {
                    for (r, v) in accq.iter().enumerate() {
                        let mut s = hsum(*v);
                        for i in full..k {
                            s += x[r * k + i] * $scalar(a[q * k + i]);
                        }
                        t[r * rp + j0 + q] = s;
                    }
                }
            }
        };
    }

    /// 8 f32 values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable floats at p.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// 8 bf16 values widened to f32 (a 16-bit left shift).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16(p: *const u16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable u16 at p.
        let v = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
    }

    fn bf16_to_f32(v: u16) -> f32 {
        f32::from_bits(u32::from(v) << 16)
    }

    down_kernel!(down_f32, down_f32_rows, f32, load_f32, |v: f32| v);
    down_kernel!(down_bf16, down_bf16_rows, u16, load_bf16, bf16_to_f32);
}
