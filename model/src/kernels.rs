//! Host-side matmul kernels for decoding: `y = x·Wᵀ` with few rows of `x` (a decode step
//! has one row per sequence), where the cost is reading the weights once, not arithmetic.
//!
//! Two weight stores are served:
//! - [`PackedMatrix`]: `Wᵀ` in bf16 (or f32), packed in column tiles of [`TILE`] so one
//!   call streams the matrix front to back; values are widened to f32 in registers and
//!   accumulated in f32 (no bf16 arithmetic, so `x` keeps full precision).
//! - [`Nf4Matrix`]: the 4-bit codes are decoded inside the dot product (a 16-entry
//!   register lookup per nibble), instead of writing a dequantized f32 matrix first.
//!
//! Both split the output columns (by tiles) over the calling thread and the persistent
//! decode pool's helper ([`pool`]) for matrices of at least [`SERIAL_MAX_WEIGHTS`] weights and
//! run smaller ones on the calling thread; every output column is computed by one tile kernel
//! call either way, so the split changes no value.
//!
//! Each kernel has three paths, chosen at run time by [`Isa`] (one dispatch function per
//! kernel): AVX-512F (16-lane FMA), AVX2+FMA (8-lane FMA, hand-written in `avx2.rs`, for CPUs
//! without AVX-512), and a portable loop for every other CPU
//! (or when a caller passes `simd = false`). All compute the same sums in the same order over
//! `in`; the SIMD paths round each multiply-add once (FMA), the portable one twice ([`lora`]'s
//! down kernel sums in lanes, so its order differs between the paths). The packed
//! kernels read the weight stream with a non-temporal hint (weights are read once per step and
//! should not evict what is reused: LoRA factors, the KV cache), and can prefetch memory the
//! caller reads next ([`PackedMatrix::matmul_prefetching`]). [`matmul_many`] multiplies one
//! `x` by several matrices (q, k, v; gate, up) in one pool dispatch. [`lora`] adds LoRA
//! deltas on the host.
//! The decoder checks these against burn's matmul on the dense matrix (`tests/kernels.rs`).
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use crate::quant::{NF4_BLOCK, NF4_CODE, Nf4Matrix};
use half::bf16;

pub mod bf16_gemm;
pub mod buffers;
pub mod int8;
pub mod lora;
pub mod pool;
pub mod sgemm;

pub use lora::LoraFactors;

/// Output columns per packed tile (two 16-lane f32 vectors).
pub const TILE: usize = 32;

/// Row chunk of `x` handled by one pass over a weight tile.
const MR: usize = 8;

/// How one kernel call uses the decode pool ([`pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The pool for matrices of at least [`SERIAL_MAX_WEIGHTS`] weights, else this thread.
    Auto,
    /// This thread only.
    Serial,
    /// The pool whatever the size (tests compare it with [`Split::Serial`]).
    Pool,
}

impl Split {
    /// Whether a product over `weights` weights goes to the pool.
    fn pooled(self, weights: usize) -> bool {
        match self {
            Split::Auto => weights >= SERIAL_MAX_WEIGHTS,
            Split::Serial => false,
            Split::Pool => true,
        }
    }
}

/// Element type of a [`PackedMatrix`].
#[derive(Debug, Clone, PartialEq)]
enum PackedData {
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
    /// f32 values.
    F32(Vec<f32>),
}

/// `Wᵀ` `[in, out]` stored as `[out/TILE][in][TILE]` (the last tile zero-padded), so a
/// kernel reads each tile's `in × TILE` block contiguously.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    in_dim: usize,
    out_dim: usize,
    data: PackedData,
}

impl PackedMatrix {
    /// Packs `wt` (`[in, out]` row-major, `in·out` values) rounded to bf16 (nearest even).
    pub fn bf16(wt: &[f32], in_dim: usize, out_dim: usize) -> Self {
        let packed = pack(wt, in_dim, out_dim, |v| bf16::from_f32(v).to_bits());
        Self {
            in_dim,
            out_dim,
            data: PackedData::Bf16(packed),
        }
    }

    /// Packs `wt` (`[in, out]` row-major) as f32.
    pub fn f32(wt: &[f32], in_dim: usize, out_dim: usize) -> Self {
        let packed = pack(wt, in_dim, out_dim, |v| v);
        Self {
            in_dim,
            out_dim,
            data: PackedData::F32(packed),
        }
    }

    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.in_dim, self.out_dim]
    }

    /// Whether the values are bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.data, PackedData::Bf16(_))
    }

    /// Bytes of the stored values (padding included).
    pub fn resident_bytes(&self) -> usize {
        match &self.data {
            PackedData::Bf16(v) => v.len() * 2,
            PackedData::F32(v) => v.len() * 4,
        }
    }

    /// The stored values as f32, `[in, out]` row-major (bf16 widened exactly).
    pub fn to_f32(&self) -> Vec<f32> {
        let (k, n) = (self.in_dim, self.out_dim);
        let mut out = vec![0.0f32; k * n];
        for (t, c0) in (0..n).step_by(TILE).enumerate() {
            let w = (n - c0).min(TILE);
            for i in 0..k {
                let src = (t * k + i) * TILE;
                for j in 0..w {
                    out[i * n + c0 + j] = match &self.data {
                        PackedData::Bf16(v) => bf16::from_bits(v[src + j]).to_f32(),
                        PackedData::F32(v) => v[src + j],
                    };
                }
            }
        }
        out
    }

    /// `x` `[m, in]` row-major times this matrix: `[m, out]` row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.matmul_with(x, m, simd_available())
    }

    /// [`PackedMatrix::matmul`] choosing the SIMD path or the portable one (tests use both).
    pub fn matmul_with(&self, x: &[f32], m: usize, simd: bool) -> Vec<f32> {
        self.matmul_prefetching(x, m, simd, &[])
    }

    /// The stored values as `(address, bytes)`, for [`PackedMatrix::matmul_prefetching`].
    pub(crate) fn memory(&self) -> (*const u8, usize) {
        match &self.data {
            PackedData::Bf16(v) => (v.as_ptr().cast(), v.len() * 2),
            PackedData::F32(v) => (v.as_ptr().cast(), v.len() * 4),
        }
    }

    /// [`PackedMatrix::matmul_with`] that also asks the CPU to fetch the memory `prefetch`
    /// (`(address, bytes)` ranges the caller reads next, e.g. LoRA factors) into L2 cache,
    /// spread evenly over the tiles, so those reads overlap with this product instead of
    /// following it.
    pub(crate) fn matmul_prefetching(
        &self,
        x: &[f32],
        m: usize,
        simd: bool,
        prefetch: &[(*const u8, usize)],
    ) -> Vec<f32> {
        self.matmul_split_prefetching(x, m, Isa::select(simd), Split::Auto, prefetch)
    }

    /// [`PackedMatrix::matmul_with`] with the pool use chosen by `split` (every choice gives
    /// the same values, bit for bit).
    pub fn matmul_split(&self, x: &[f32], m: usize, simd: bool, split: Split) -> Vec<f32> {
        self.matmul_split_prefetching(x, m, Isa::select(simd), split, &[])
    }

    /// [`PackedMatrix::matmul_split`] on the path `isa` (tests compare the paths; a path this
    /// CPU lacks runs the portable loop instead, see [`Isa::or_portable`]).
    pub fn matmul_isa(&self, x: &[f32], m: usize, isa: Isa, split: Split) -> Vec<f32> {
        self.matmul_split_prefetching(x, m, isa, split, &[])
    }

    fn matmul_split_prefetching(
        &self,
        x: &[f32],
        m: usize,
        isa: Isa,
        split: Split,
        prefetch: &[(*const u8, usize)],
    ) -> Vec<f32> {
        let (k, n) = (self.in_dim, self.out_dim);
        assert_eq!(x.len(), m * k, "PackedMatrix::matmul: x is not [m, in]");
        let tiles = n.div_ceil(TILE);
        // Tile-major result [tile][m][TILE]: each part owns whole tiles.
        let mut ytiles = vec![0.0f32; tiles * m * TILE];
        let ahead = Prefetcher::new(prefetch, tiles);
        let tile = |t: usize, yt: &mut [f32]| {
            ahead.tile(t);
            self.tile_into(t, x, m, isa, yt);
        };
        for_each_tile(&mut ytiles, m * TILE, split.pooled(k * n), &tile);
        untile(&ytiles, m, n, TILE)
    }

    /// Column tile `t` of `x·Wᵀ` into `yt` (`[m][TILE]`).
    fn tile_into(&self, t: usize, x: &[f32], m: usize, isa: Isa, yt: &mut [f32]) {
        let k = self.in_dim;
        for r0 in (0..m).step_by(MR) {
            let mr = (m - r0).min(MR);
            let xs = &x[r0 * k..(r0 + mr) * k];
            let ys = &mut yt[r0 * TILE..(r0 + mr) * TILE];
            match &self.data {
                PackedData::Bf16(v) => {
                    tile_bf16(&v[t * k * TILE..(t + 1) * k * TILE], xs, k, mr, ys, isa)
                }
                PackedData::F32(v) => {
                    tile_f32(&v[t * k * TILE..(t + 1) * k * TILE], xs, k, mr, ys, isa)
                }
            }
        }
    }
}

/// `x` `[m, in]` times each of `matrices` (all with the same `in`), in one pass over the
/// decode pool (one dispatch for the tiles of all of them: q, k and v, or gate and up, of a
/// layer): the products `[m, out_i]`, bit for bit what [`PackedMatrix::matmul`] gives for
/// each.
pub fn matmul_many(matrices: &[&PackedMatrix], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    matmul_many_split(matrices, x, m, simd_available(), Split::Auto)
}

/// [`matmul_many`] choosing SIMD and the pool use (`Auto`: the pool when the matrices hold
/// at least [`SERIAL_MAX_WEIGHTS`] weights together).
pub fn matmul_many_split(
    matrices: &[&PackedMatrix],
    x: &[f32],
    m: usize,
    simd: bool,
    split: Split,
) -> Vec<Vec<f32>> {
    let Some(first) = matrices.first() else {
        return Vec::new();
    };
    let k = first.in_dim;
    assert!(
        matrices.iter().all(|p| p.in_dim == k) && x.len() == m * k,
        "matmul_many: the matrices' in differ or x is not [m, in]"
    );
    // The tiles of all matrices in one buffer: matrix i owns tiles starting[i]..starting[i+1].
    let mut starting = Vec::with_capacity(matrices.len() + 1);
    starting.push(0);
    for p in matrices {
        starting.push(starting[starting.len() - 1] + p.out_dim.div_ceil(TILE));
    }
    let tiles = starting[matrices.len()];
    let isa = Isa::select(simd);
    let weights: usize = matrices.iter().map(|p| k * p.out_dim).sum();
    let mut ytiles = vec![0.0f32; tiles * m * TILE];
    let tile = |t: usize, yt: &mut [f32]| {
        let i = starting.partition_point(|&s| s <= t) - 1;
        matrices[i].tile_into(t - starting[i], x, m, isa, yt);
    };
    for_each_tile(&mut ytiles, m * TILE, split.pooled(weights), &tile);
    matrices
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let region = &ytiles[starting[i] * m * TILE..starting[i + 1] * m * TILE];
            untile(region, m, p.out_dim, TILE)
        })
        .collect()
}

/// Calls `tile(t, ytiles[t])` for every tile slot of `ytiles` (`slot` values each): on this
/// thread, or over the pool in parts of whole tiles (one part at a time per thread).
fn for_each_tile(
    ytiles: &mut [f32],
    slot: usize,
    pooled: bool,
    tile: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let tiles = ytiles.len() / slot.max(1);
    if !pooled || tiles < 2 {
        for (t, yt) in ytiles.chunks_mut(slot.max(1)).enumerate() {
            tile(t, yt);
        }
        return;
    }
    let per_part = tiles_per_part(tiles);
    pool::for_each_chunk_mut(ytiles, per_part * slot, &|p, part| {
        for (j, yt) in part.chunks_mut(slot).enumerate() {
            tile(p * per_part + j, yt);
        }
    });
}

/// Tiles per pool part: parts are claimed one at a time (an atomic operation each), so a
/// part should be a few µs of work; about 4 parts per thread balance a late helper.
fn tiles_per_part(tiles: usize) -> usize {
    tiles.div_ceil(pool::threads() * 4).max(1)
}

/// Matrices with fewer weights than this run on the calling thread alone; larger ones are
/// split over the persistent decode pool ([`pool`]), which costs an atomic store and a spin
/// per call, not a thread wake-up. (With rayon the hand-off cost more than the second core
/// gave below 2²⁰ weights; see docs/benchmarks.md, speed work 3 and 5.)
pub const SERIAL_MAX_WEIGHTS: usize = 1 << 16;

/// Cache lines assumed by [`Prefetcher`].
const LINE: usize = 64;

/// Spreads `(address, bytes)` ranges over `steps` steps, asking at step `t` for the `t`-th
/// share of their cache lines to be prefetched into L2 (a hint: nothing is read or checked).
struct Prefetcher<'a> {
    ranges: &'a [(*const u8, usize)],
    per_step: usize,
}

// SAFETY: the addresses are only handed to prefetch instructions, never dereferenced.
unsafe impl Sync for Prefetcher<'_> {}

impl<'a> Prefetcher<'a> {
    fn new(ranges: &'a [(*const u8, usize)], steps: usize) -> Self {
        let lines: usize = ranges.iter().map(|(_, len)| len.div_ceil(LINE)).sum();
        Self {
            ranges,
            per_step: lines.div_ceil(steps.max(1)),
        }
    }

    /// Prefetches the lines of step `t`.
    fn tile(&self, t: usize) {
        if self.per_step == 0 {
            return;
        }
        // Find the range and offset of line t·per_step.
        let mut skip = t * self.per_step;
        let mut range = 0;
        while let Some(&(_, len)) = self.ranges.get(range) {
            let lines = len.div_ceil(LINE);
            if skip < lines {
                break;
            }
            skip -= lines;
            range += 1;
        }
        let mut offset = skip * LINE;
        for _ in 0..self.per_step {
            let Some(&(base, len)) = self.ranges.get(range) else {
                return;
            };
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
                // wrapping_add: the address is only a hint, never dereferenced here.
                let p = base.wrapping_add(offset).cast::<i8>();
                // SAFETY: a prefetch never faults and reads nothing into the program.
                #[allow(unused_unsafe)]
                unsafe {
                    _mm_prefetch::<_MM_HINT_T1>(p)
                };
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = base;
            offset += LINE;
            if offset >= len {
                range += 1;
                offset = 0;
            }
        }
    }
}

fn pack<T: Copy + Default>(wt: &[f32], k: usize, n: usize, f: impl Fn(f32) -> T) -> Vec<T> {
    assert_eq!(wt.len(), k * n, "pack: values are not [in, out]");
    let tiles = n.div_ceil(TILE);
    let mut out = vec![T::default(); tiles * k * TILE];
    for t in 0..tiles {
        let c0 = t * TILE;
        let w = (n - c0).min(TILE);
        for i in 0..k {
            let dst = (t * k + i) * TILE;
            for j in 0..w {
                out[dst + j] = f(wt[i * n + c0 + j]);
            }
        }
    }
    out
}

/// `[tiles][m][tile]` → `[m, n]`.
fn untile(ytiles: &[f32], m: usize, n: usize, tile: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for (t, yt) in ytiles.chunks(m * tile).enumerate() {
        let c0 = t * tile;
        let w = (n - c0).min(tile);
        for r in 0..m {
            y[r * n + c0..r * n + c0 + w].copy_from_slice(&yt[r * tile..r * tile + w]);
        }
    }
    y
}

/// Whether a SIMD path of the kernels (AVX-512F, or AVX2 with FMA) can run on this CPU: the
/// default of the kernels' `simd` knobs.
pub fn simd_available() -> bool {
    Isa::best() != Isa::Portable
}

/// Which implementation of a host kernel runs: every kernel of this crate with SIMD paths
/// dispatches on one of these, got from [`Isa::select`] (or forced by tests, where
/// [`Isa::or_portable`] keeps a path the CPU lacks from running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16 f32 lanes.
    Avx512,
    /// AVX2 with FMA: 8 f32 lanes (CPUs without AVX-512).
    Avx2Fma,
    /// Plain Rust for baseline x86-64 (SSE2) or any other target.
    Portable,
}

impl Isa {
    /// The fastest path this CPU runs.
    pub fn best() -> Isa {
        if Isa::Avx512.runs_here() {
            Isa::Avx512
        } else if Isa::Avx2Fma.runs_here() {
            Isa::Avx2Fma
        } else {
            Isa::Portable
        }
    }

    /// [`Isa::best`] when `simd` is asked for, else [`Isa::Portable`] (the `simd: bool` knob
    /// of the kernels' `…_with` functions).
    pub fn select(simd: bool) -> Isa {
        if simd { Isa::best() } else { Isa::Portable }
    }

    /// Whether this CPU has the features of this path (checked at run time; the answer is
    /// cached by the standard library).
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2Fma => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// `self` where this CPU runs it, else [`Isa::Portable`]: every dispatch goes through
    /// this, so a forced path never runs without its features.
    pub fn or_portable(self) -> Isa {
        if self.runs_here() {
            self
        } else {
            Isa::Portable
        }
    }
}

/// One tile of bf16 weights on the path `isa`.
fn tile_bf16(w: &[u16], x: &[f32], k: usize, mr: usize, y: &mut [f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected (or_portable); slice lengths are checked inside.
        Isa::Avx512 => unsafe { avx512::tile_bf16(w, x, k, mr, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected; slice lengths are checked inside.
        Isa::Avx2Fma => unsafe { avx2::tile_bf16(w, x, k, mr, y) },
        _ => tile_portable(|idx| bf16::from_bits(w[idx]).to_f32(), x, k, mr, y),
    }
}

/// One tile of f32 weights on the path `isa`.
fn tile_f32(w: &[f32], x: &[f32], k: usize, mr: usize, y: &mut [f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected (or_portable); slice lengths are checked inside.
        Isa::Avx512 => unsafe { avx512::tile_f32(w, x, k, mr, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected; slice lengths are checked inside.
        Isa::Avx2Fma => unsafe { avx2::tile_f32(w, x, k, mr, y) },
        _ => tile_portable(|idx| w[idx], x, k, mr, y),
    }
}

/// `y[r][j] = Σ_i x[r][i] · w(i·TILE + j)` for one tile, in plain Rust.
fn tile_portable(w: impl Fn(usize) -> f32, x: &[f32], k: usize, mr: usize, y: &mut [f32]) {
    let mut acc = [[0.0f32; TILE]; MR];
    for i in 0..k {
        let mut row = [0.0f32; TILE];
        for (j, v) in row.iter_mut().enumerate() {
            *v = w(i * TILE + j);
        }
        for r in 0..mr {
            let xv = x[r * k + i];
            for (a, v) in acc[r].iter_mut().zip(&row) {
                *a += xv * v;
            }
        }
    }
    for r in 0..mr {
        y[r * TILE..(r + 1) * TILE].copy_from_slice(&acc[r]);
    }
}

/// Columns per NF4 tile: one quantization block's length. Each 32-column half of a tile lies
/// within one block; the halves share a block when `Wᵀ`'s rows are a multiple of 64 long.
const NF4_TILE: usize = NF4_BLOCK;

/// Row chunk for the NF4 kernel (four accumulators per row).
const NF4_MR: usize = 4;

/// Whether [`nf4_matmul`] can serve `q`: every 32-column half tile of `Wᵀ` must lie within
/// one quantization block, i.e. `out` a multiple of 32 (blocks are 64 values of the
/// row-major `Wᵀ`, so every row then starts at a multiple of 32). True for the projections of
/// Llama-style models (e.g. 1376 = 43·32), not for odd widths such as 100.
pub fn nf4_fusable(q: &Nf4Matrix) -> bool {
    q.shape()[1].is_multiple_of(NF4_TILE / 2)
}

/// `x` `[m, in]` times the NF4 matrix `q` (`Wᵀ`, `[in, out]`), decoding the codes inside the
/// dot products: `[m, out]`. `None` when a half tile of `q` would straddle two blocks
/// ([`nf4_fusable`]).
pub fn nf4_matmul(q: &Nf4Matrix, x: &[f32], m: usize) -> Option<Vec<f32>> {
    nf4_matmul_with(q, x, m, simd_available())
}

/// [`nf4_matmul`] choosing the SIMD path or the portable one (tests use both).
pub fn nf4_matmul_with(q: &Nf4Matrix, x: &[f32], m: usize, simd: bool) -> Option<Vec<f32>> {
    nf4_matmul_split(q, x, m, simd, Split::Auto)
}

/// [`nf4_matmul_with`] with the pool use chosen by `split` (same values for every choice).
pub fn nf4_matmul_split(
    q: &Nf4Matrix,
    x: &[f32],
    m: usize,
    simd: bool,
    split: Split,
) -> Option<Vec<f32>> {
    nf4_matmul_isa(q, x, m, Isa::select(simd), split)
}

/// [`nf4_matmul_split`] on the path `isa` (tests compare the paths; a path this CPU lacks runs
/// the portable loop instead, see [`Isa::or_portable`]).
pub fn nf4_matmul_isa(
    q: &Nf4Matrix,
    x: &[f32],
    m: usize,
    isa: Isa,
    split: Split,
) -> Option<Vec<f32>> {
    let q_f32 = q.with_f32_scales(); // double-quantized scales decoded once per product
    let q: &Nf4Matrix = &q_f32;
    if !nf4_fusable(q) {
        return None;
    }
    let [k, n] = q.shape();
    assert_eq!(x.len(), m * k, "nf4_matmul: x is not [m, in]");
    let tiles = n.div_ceil(NF4_TILE);
    let mut ytiles = vec![0.0f32; tiles * m * NF4_TILE];
    let tile = |t: usize, yt: &mut [f32]| {
        for r0 in (0..m).step_by(NF4_MR) {
            let mr = (m - r0).min(NF4_MR);
            let xs = &x[r0 * k..(r0 + mr) * k];
            let ys = &mut yt[r0 * NF4_TILE..(r0 + mr) * NF4_TILE];
            nf4_tile(q, t * NF4_TILE, xs, mr, ys, isa);
        }
    };
    for_each_tile(&mut ytiles, m * NF4_TILE, split.pooled(k * n), &tile);
    Some(untile(&ytiles, m, n, NF4_TILE))
}

/// One NF4 tile on the path `isa`.
fn nf4_tile(q: &Nf4Matrix, c0: usize, x: &[f32], mr: usize, y: &mut [f32], isa: Isa) {
    match isa.or_portable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected; every index is checked against the slices inside.
        Isa::Avx512 => unsafe { avx512::nf4_tile(q, c0, x, mr, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 and fma were detected; every index is checked against the slices inside.
        Isa::Avx2Fma => unsafe { avx2::nf4_tile(q, c0, x, mr, y) },
        _ => nf4_tile_portable(q, c0, x, mr, y),
    }
}

fn nf4_tile_portable(q: &Nf4Matrix, c0: usize, x: &[f32], mr: usize, y: &mut [f32]) {
    let [k, n] = q.shape();
    let (packed, scales) = (q.packed(), q.scales());
    // The last tile of a row may hold one 32-column half; each half has one block's scale.
    let cols = (n - c0).min(NF4_TILE);
    let mut acc = [[0.0f32; NF4_TILE]; NF4_MR];
    for i in 0..k {
        let start = i * n + c0;
        let bytes = &packed[start / 2..(start + cols) / 2];
        for (h, half) in bytes.chunks(NF4_TILE / 4).enumerate() {
            let scale = scales[(start + h * NF4_TILE / 2) / NF4_BLOCK];
            for r in 0..mr {
                let xs = x[r * k + i] * scale;
                for (j, &b) in half.iter().enumerate() {
                    let c = h * NF4_TILE / 2 + 2 * j;
                    acc[r][c] += xs * NF4_CODE[usize::from(b & 0x0f)];
                    acc[r][c + 1] += xs * NF4_CODE[usize::from(b >> 4)];
                }
            }
        }
    }
    for r in 0..mr {
        y[r * NF4_TILE..(r + 1) * NF4_TILE].copy_from_slice(&acc[r]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod bf16_amx;
#[cfg(target_arch = "x86_64")]
mod bf16_avx512;
#[cfg(target_arch = "x86_64")]
mod int8_avx512;

#[cfg(test)]
#[path = "kernels/avx2_tests.rs"]
pub(crate) mod avx2_tests;
