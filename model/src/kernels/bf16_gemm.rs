//! bf16 × bf16 → f32 GEMM for mixed-precision training: `C = A·B` with `A` `[m, k]` f32
//! (activations or incoming gradients, rounded to bf16 as they are packed), `B` `[k, n]` a
//! frozen weight stored in bf16 ([`Bf16Panel`]), `C` `[m, n]` f32. Products of two bf16
//! values are exact in f32 and every sum is kept in f32: only the inputs are rounded.
//!
//! Three kernels compute the same sums ([`Bf16Kernel`], the best one the CPU offers is chosen
//! at run time): AMX tiles (`TDPBF16PS`, [`super::bf16_amx`]) where the CPU has AMX-BF16 and
//! Linux grants the tile state; AVX-512 BF16 (`VDPBF16PS`: 32 bf16 products per instruction,
//! summed in pairs into 16 f32 lanes, twice the f32 FMA rate) where it has that; elsewhere a
//! portable loop that widens both operands to f32. They differ only in the order of the
//! additions and in the hardware's flushing of subnormals to zero.
//!
//! Layout: `B` is cut into column tiles of [`NR`]; a tile stores, for every pair of rows
//! `(2p, 2p+1)` of `B`, its [`NR`] columns as `u32`s holding the two bf16 values (row `2p` in
//! the low half), which is the operand layout of `VDPBF16PS` and AMX's `B` tile layout. The
//! pairs are padded with zeros to a multiple of [`KP`] (one AMX tile step). `A` is packed per
//! block of rows into the same pairs (`[rows][pairs]` `u32`), so one 32-bit broadcast gives a
//! row's pair and 16 rows of it are an AMX `A` tile. Row blocks are spread over rayon's pool.
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

use super::sgemm::MatRef;

/// Output columns per tile of `B` (two 16-lane vectors).
pub const NR: usize = 32;

/// Rows of `A` per micro-kernel call (24 accumulator registers of 32).
pub const MR: usize = 12;

/// Rows of `A` per rayon task for the AVX-512 and portable kernels (a multiple of [`MR`]):
/// its packed rows (`MC·k` bf16) stay in L2 while every tile of `B` passes by.
pub const MC: usize = 96;

/// Rows of `A` per rayon task for the AMX kernel (a multiple of its 32-row block; 64 was the
/// fastest of 32–2048 on a 2048 × 512 × 1376 product).
pub const MC_AMX: usize = 64;

/// Pairs of `k` per AMX tile step (a 64-byte tile row holds 16 pairs of bf16); every panel's
/// pairs are padded to a multiple of it.
pub const KP: usize = 16;

/// A `[k, n]` matrix in bf16, packed in column tiles for [`gemm`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bf16Panel {
    k: usize,
    n: usize,
    /// `k` rounded up to even, halved, rounded up to a multiple of [`KP`] (zero pairs past
    /// `k`).
    pairs: usize,
    /// `[tiles][pairs][NR]`, each `u32` = bf16 of row `2p` (low) and `2p+1` (high).
    data: Vec<u32>,
}

/// bf16 bits of `v`, rounded to nearest even (NaN stays NaN, quieted): `half`'s
/// `bf16::from_f32`, written without branches so that packing loops vectorize.
#[inline]
fn bits(v: f32) -> u32 {
    let x = v.to_bits();
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let quiet_nan = (x >> 16) | 0x40;
    if x & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }
}

impl Bf16Panel {
    /// The `[k, n]` panel whose word for pair `p` of column `c` (elements `(2p, c)` and
    /// `(2p + 1, c)`, bf16 bits, the even row low) is `word(c, p)`; tiles filled in parallel.
    fn from_column_words(k: usize, n: usize, word: impl Fn(usize, usize) -> u32 + Sync) -> Self {
        let pairs = padded_pairs(k);
        let mut data = vec![0u32; n.div_ceil(NR) * pairs * NR];
        data.par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(t, tile)| {
                for j in 0..(n - t * NR).min(NR) {
                    for p in 0..k.div_ceil(2) {
                        tile[p * NR + j] = word(t * NR + j, p);
                    }
                }
            });
        Self { k, n, pairs, data }
    }

    /// Packs `b`, `[k, n]` row-major.
    pub fn from_rows(b: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(b.len(), k * n, "Bf16Panel::from_rows: b is not [k, n]");
        Self::from_view(MatRef::row_major(b, k, n))
    }

    /// Packs the transpose of `bt` (`bt` is `[n, k]` row-major; the panel is `[k, n]`).
    pub fn from_transposed(bt: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(
            bt.len(),
            k * n,
            "Bf16Panel::from_transposed: bt is not [n, k]"
        );
        Self::from_view(MatRef::row_major(bt, n, k).t())
    }

    /// Packs the `[k, n]` matrix `b` views, whatever its strides. Contiguous rows are packed
    /// a tile's two rows at a time and contiguous columns (a transposed matrix) a column's
    /// pairs at a time, so both loops vectorize: the attention products pack a panel per
    /// head from views of `K` and `V`.
    pub fn from_view(b: MatRef<'_>) -> Self {
        let [k, n] = b.dims();
        if k == 0 || n == 0 || b.row(0).is_none() {
            if b.col(0).is_none() {
                return Self::from_column_words(k, n, |c, p| {
                    let hi = if 2 * p + 1 < k {
                        bits(b.at(2 * p + 1, c))
                    } else {
                        0
                    };
                    bits(b.at(2 * p, c)) | (hi << 16)
                });
            }
            // A column's pairs are adjacent values: packed as a row, then spread over the
            // tile's column.
            let pairs = padded_pairs(k);
            let mut data = vec![0u32; n.div_ceil(NR) * pairs * NR];
            let mut words = vec![0u32; k.div_ceil(2)];
            for (t, tile) in data.chunks_exact_mut(pairs * NR).enumerate() {
                for j in 0..(n - t * NR).min(NR) {
                    pack_pairs(b.col(t * NR + j).unwrap_or_default(), &mut words, true);
                    for (row, &w) in tile.chunks_exact_mut(NR).zip(&words) {
                        row[j] = w;
                    }
                }
            }
            return Self { k, n, pairs, data };
        }
        let pairs = padded_pairs(k);
        let tiles = n.div_ceil(NR);
        let mut data = vec![0u32; tiles * pairs * NR];
        for (t, tile) in data.chunks_exact_mut(pairs * NR).enumerate() {
            let (c0, cols) = (t * NR, (n - t * NR).min(NR));
            for (p, dst) in tile.chunks_exact_mut(NR).take(k.div_ceil(2)).enumerate() {
                let dst = &mut dst[..cols];
                let lo = b.row(2 * p).map_or(&[][..], |row| &row[c0..c0 + cols]);
                match b.row(2 * p + 1) {
                    Some(row) => interleave_pairs(lo, &row[c0..c0 + cols], dst),
                    None => {
                        for (d, &l) in dst.iter_mut().zip(lo) {
                            *d = bits(l);
                        }
                    }
                }
            }
        }
        Self { k, n, pairs, data }
    }

    /// The `[n, k]` transpose, packed (the bf16 values moved, not rounded again): elements
    /// `(2p, c)` and `(2p + 1, c)` of the transpose are elements `(c, 2p)` and `(c, 2p + 1)`
    /// here, one half of each of two neighbouring words of one row pair.
    pub fn transposed(&self) -> Self {
        let k = self.n;
        Self::from_column_words(k, self.k, |c, p| {
            let shift = 16 * (c % 2);
            let at = ((2 * p) / NR * self.pairs + c / 2) * NR + (2 * p) % NR;
            let lo = (self.data[at] >> shift) & 0xffff;
            let hi = if 2 * p + 1 < k {
                (self.data[at + 1] >> shift) & 0xffff
            } else {
                0
            };
            lo | (hi << 16)
        })
    }

    /// `[k, n]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.k, self.n]
    }

    /// Element `(row, col)` widened to f32.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        let (t, j, p) = (col / NR, col % NR, row / 2);
        let w = self.data[(t * self.pairs + p) * NR + j];
        let h = if row.is_multiple_of(2) {
            w & 0xffff
        } else {
            w >> 16
        };
        bf16::from_bits(h as u16).to_f32()
    }

    /// The matrix widened to f32, `[k, n]` row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.k * self.n);
        for r in 0..self.k {
            for c in 0..self.n {
                out.push(self.get(r, c));
            }
        }
        out
    }

    /// Bytes held.
    pub fn resident_bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<u32>()
    }

    fn tile(&self, t: usize) -> &[u32] {
        &self.data[t * self.pairs * NR..(t + 1) * self.pairs * NR]
    }
}

/// `k` rounded up to even, halved, rounded up to a multiple of [`KP`].
fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(KP) * KP
}

/// Which kernel computes [`gemm`]'s products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// Widen to f32 and multiply-add (any CPU).
    Portable,
    /// AVX-512 BF16 `VDPBF16PS`.
    Avx512Bf16,
    /// AMX `TDPBF16PS` tiles.
    Amx,
}

impl Bf16Kernel {
    /// Every kernel, slowest first.
    pub const ALL: [Bf16Kernel; 3] = [
        Bf16Kernel::Portable,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Amx,
    ];

    /// The fastest kernel this process may run (each answer is detected once and kept: the
    /// CPU features by `std`, the AMX grant by [`super::bf16_amx::available`]).
    pub fn best() -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|k| k.available())
            .unwrap_or(Bf16Kernel::Portable)
    }

    /// Whether this CPU (and, for AMX, the OS) can run it.
    pub fn available(self) -> bool {
        match self {
            Bf16Kernel::Portable => true,
            Bf16Kernel::Avx512Bf16 => bf16_dot_available(),
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Amx => super::bf16_amx::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Kernel::Amx => false,
        }
    }

    /// The name benchmarks report: `portable`, `avx512bf16`, `amx`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Portable => "portable",
            Bf16Kernel::Avx512Bf16 => "avx512bf16",
            Bf16Kernel::Amx => "amx",
        }
    }
}

/// Whether the CPU has AVX-512 BF16 (`VDPBF16PS`).
pub fn bf16_dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `A·B`: `a` is `[m, k]` row-major f32 (rounded to bf16 here), the result `[m, n]` row-major.
pub fn gemm(a: &[f32], m: usize, b: &Bf16Panel) -> Vec<f32> {
    gemm_with(a, m, b, Bf16Kernel::best())
}

/// [`gemm`] on the given kernel (tests compare them); a kernel the CPU lacks falls back to
/// the portable loop. Row blocks on rayon's pool.
pub fn gemm_with(a: &[f32], m: usize, b: &Bf16Panel, kernel: Bf16Kernel) -> Vec<f32> {
    let (k, n) = (b.k, b.n);
    assert_eq!(a.len(), m * k, "bf16 gemm: a is not [m, k]");
    let kernel = usable(kernel);
    // The output is written by the tasks that compute it, never zero-filled up front: for
    // the lm_head's product that was 64 MiB of memset on one thread while the pool waited.
    let mut c = uninit(m * n);
    if m > 0 && n > 0 {
        let rows_per_task = rows_per_task(kernel);
        let block = |(i, c_rows): (usize, &mut [Slot])| {
            let (r0, rows) = (i * rows_per_task, c_rows.len() / n);
            let rows_a = MatRef::row_major(&a[r0 * k..(r0 + rows) * k], rows, k);
            product(rows_a, b, c_rows, kernel);
        };
        if m <= rows_per_task {
            block((0, &mut c));
        } else {
            c.par_chunks_mut(rows_per_task * n)
                .enumerate()
                .for_each(block);
        }
    }
    // SAFETY: each task's product wrote every element of its chunk of `c`.
    unsafe { assume_written(c) }
}

/// Rows of `A` per rayon task for `kernel`.
fn rows_per_task(kernel: Bf16Kernel) -> usize {
    if kernel == Bf16Kernel::Amx {
        MC_AMX
    } else {
        MC
    }
}

/// A rank-`r` update riding on a frozen product ([`gemm_low_rank`]): `down` `[k, r]`,
/// `up` `[r, n]`, and the scale of their product.
#[derive(Debug, Clone, Copy)]
pub struct LowRank<'a> {
    pub down: &'a Bf16Panel,
    pub up: &'a Bf16Panel,
    pub scale: f32,
}

/// `(a·b + s·(a·down)·up, a·down)` for `a` `[m, k]` row-major: a LoRA projection forward
/// (`down` = `Aᵀ`, `up` = `Bᵀ`) or its input gradient (`down` = `B`, `up` = `A`), in one pass
/// over `a`. Each task packs its rows of `a` once, multiplies them by `down` (the `[rows, r]`
/// result kept in f32 and returned), rounds `s·(a·down)` to bf16 and adds its product with
/// `up` in the frozen product's accumulator tiles. PyTorch's autocast runs both LoRA
/// products in bf16 too.
pub fn gemm_low_rank(a: &[f32], m: usize, b: &Bf16Panel, lr: LowRank<'_>) -> (Vec<f32>, Vec<f32>) {
    gemm_low_rank_with(a, m, b, lr, Bf16Kernel::best())
}

/// [`gemm_low_rank`] on the given kernel (tests compare them); a kernel the CPU lacks falls
/// back to the portable loop.
pub fn gemm_low_rank_with(
    a: &[f32],
    m: usize,
    b: &Bf16Panel,
    lr: LowRank<'_>,
    kernel: Bf16Kernel,
) -> (Vec<f32>, Vec<f32>) {
    let (k, n, r) = (b.k, b.n, lr.down.n);
    assert_eq!(a.len(), m * k, "bf16 gemm_low_rank: a is not [m, k]");
    assert_eq!(lr.down.k, k, "bf16 gemm_low_rank: down is not [k, r]");
    assert_eq!(
        [lr.up.k, lr.up.n],
        [r, n],
        "bf16 gemm_low_rank: up is not [r, n]"
    );
    let kernel = usable(kernel);
    let (mut c, mut ad) = (uninit(m * n), uninit(m * r));
    if m > 0 && n > 0 && r > 0 {
        let rows_per_task = rows_per_task(kernel);
        let simd = kernel != Bf16Kernel::Portable;
        let block = |(i, (c_rows, ad_rows)): (usize, (&mut [Slot], &mut [Slot]))| {
            let r0 = i * rows_per_task;
            let rows = c_rows.len() / n;
            let padded = rows.div_ceil(ROW_BLOCK) * ROW_BLOCK;
            let rows_a = MatRef::row_major(&a[r0 * k..(r0 + rows) * k], rows, k);
            let packed_a = pack_lhs(rows_a, padded, b.pairs, simd);
            product_packed(&[(&packed_a, lr.down)], rows, ad_rows, kernel);
            // SAFETY: `product_packed` wrote every element; MaybeUninit<f32> has f32's layout.
            let ad_rows = unsafe { &*(std::ptr::from_ref(ad_rows) as *const [f32]) };
            let scaled: Vec<f32> = ad_rows.iter().map(|v| lr.scale * v).collect();
            let packed_ad = pack_lhs(
                MatRef::row_major(&scaled, rows, r),
                padded,
                lr.up.pairs,
                simd,
            );
            product_packed(&[(&packed_a, b), (&packed_ad, lr.up)], rows, c_rows, kernel);
        };
        if m <= rows_per_task {
            block((0, (&mut c, &mut ad)));
        } else {
            c.par_chunks_mut(rows_per_task * n)
                .zip(ad.par_chunks_mut(rows_per_task * r))
                .enumerate()
                .for_each(block);
        }
    }
    // SAFETY: each task's products wrote every element of its chunks of `c` and `ad`.
    unsafe { (assume_written(c), assume_written(ad)) }
}

/// One f32 of an output that its product writes before anything reads it.
pub type Slot = MaybeUninit<f32>;

/// An output buffer of `len` values that its products will write (nothing zero-fills it).
pub fn uninit(len: usize) -> Vec<Slot> {
    let mut v = Vec::with_capacity(len);
    v.resize_with(len, MaybeUninit::uninit);
    v
}

/// A buffer every element of which has been written, as plain values.
///
/// # Safety
/// Every element of `v` is initialized (here: each task's product covers its chunk, and
/// [`product_packed`] writes all of its block).
pub unsafe fn assume_written(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: every element is initialized (the caller's contract); MaybeUninit<f32> has
    // f32's size and alignment, so the allocation is a Vec<f32>'s.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// `c = a·b` on this thread for `a` `[m, k]` with any strides (a transposed operand is
/// packed as it is read, never copied first), `c` `[m, n]` row-major with every element
/// written: many small products in parallel (the attention heads) call this, one per task.
///
/// `c` may start uninitialized (a batch's block of a fresh output: nothing zero-fills it).
pub fn gemm_view_into(
    a: MatRef<'_>,
    b: &Bf16Panel,
    c: &mut [MaybeUninit<f32>],
    kernel: Bf16Kernel,
) {
    let [m, k] = a.dims();
    assert_eq!(k, b.k, "bf16 gemm: a has {k} columns, b {} rows", b.k);
    assert_eq!(c.len(), m * b.n, "bf16 gemm: c is not [m, n]");
    if m == 0 || b.n == 0 {
        return;
    }
    product(a, b, c, usable(kernel));
}

/// `kernel`, or the portable loop where the CPU lacks it.
fn usable(kernel: Bf16Kernel) -> Bf16Kernel {
    if kernel.available() {
        kernel
    } else {
        Bf16Kernel::Portable
    }
}

/// `c = a·b` on this thread (`a` `[rows, k]`, `c` `[rows, n]`, every element written; it may
/// start uninitialized) on an available `kernel`.
fn product(a: MatRef<'_>, b: &Bf16Panel, c: &mut [Slot], kernel: Bf16Kernel) {
    let rows = a.dims()[0];
    let padded = rows.div_ceil(ROW_BLOCK) * ROW_BLOCK;
    let packed = pack_lhs(a, padded, b.pairs, kernel != Bf16Kernel::Portable);
    product_packed(&[(&packed, b)], rows, c, kernel);
}

/// Rows of the left operand are packed in multiples of this (an AMX block's rows; the
/// other kernels ignore the zero rows past the end).
const ROW_BLOCK: usize = 32;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(ROW_BLOCK == super::bf16_amx::ROWS);

/// [`product`] on operands already packed (`[rows rounded up to ROW_BLOCK][pairs]` each).
fn product_packed(
    terms: &[(&[u32], &Bf16Panel)],
    rows: usize,
    c: &mut [MaybeUninit<f32>],
    kernel: Bf16Kernel,
) {
    let Some(&(_, first_panel)) = terms.first() else {
        return;
    };
    let n = first_panel.n;
    #[cfg(target_arch = "x86_64")]
    if kernel == Bf16Kernel::Amx {
        let amx_terms: Vec<super::bf16_amx::Term<'_>> = terms
            .iter()
            .map(|&(a, b)| super::bf16_amx::Term {
                a,
                pairs: b.pairs,
                b: &b.data,
            })
            .collect();
        // SAFETY: AMX is available (the caller resolved `kernel`); each packed operand is
        // `[rows rounded up to 32][pairs]` for its panel, `c` `[rows, n]`.
        unsafe { super::bf16_amx::block(&amx_terms, rows, n, c) };
        return;
    }
    // The other kernels write through `&mut [f32]`: zeros first make that sound.
    for v in c.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just written; MaybeUninit<f32> has f32's layout.
    let c = unsafe { &mut *(std::ptr::from_mut(c) as *mut [f32]) };
    let simd = kernel != Bf16Kernel::Portable;
    let mut extra = Vec::new();
    for (i, &(packed, b)) in terms.iter().enumerate() {
        // The first term writes `c`; later ones are computed apart and added.
        let out: &mut [f32] = if i == 0 {
            &mut *c
        } else {
            extra.resize(rows * n, 0.0);
            &mut extra
        };
        for t in 0..n.div_ceil(NR) {
            let cols = (n - t * NR).min(NR);
            let bt = b.tile(t);
            for r0 in (0..rows).step_by(MR) {
                let mr = (rows - r0).min(MR);
                let ap = &packed[r0 * b.pairs..(r0 + mr) * b.pairs];
                micro(
                    ap,
                    b.pairs,
                    bt,
                    mr,
                    &mut out[r0 * n + t * NR..],
                    n,
                    cols,
                    simd,
                );
            }
        }
        if i > 0 {
            for (c, &e) in c.iter_mut().zip(&extra) {
                *c += e;
            }
        }
    }
}

/// The rows of `a` (`[rows, k]`, any strides) as bf16 pairs, `[out_rows][pairs]` (zero past
/// `k` and past `rows`; `out_rows ≥ rows`). Contiguous rows go through `VCVTNE2PS2BF16`
/// where the CPU has it (`simd`); contiguous columns (a transposed operand) are read two
/// columns at a time.
fn pack_lhs(a: MatRef<'_>, out_rows: usize, pairs: usize, simd: bool) -> Vec<u32> {
    let [rows, k] = a.dims();
    let mut out = vec![0u32; out_rows * pairs];
    if rows == 0 || k == 0 {
        return out;
    }
    if a.row(0).is_some() {
        for (r, dst) in out.chunks_exact_mut(pairs).take(rows).enumerate() {
            pack_pairs(a.row(r).unwrap_or_default(), dst, simd);
        }
    } else if a.col(0).is_some() {
        // Two columns make one word per row: built for all rows at once (the loop vectorizes),
        // then spread down the packed rows.
        let mut words = vec![0u32; rows];
        for p in 0..k.div_ceil(2) {
            let lo = a.col(2 * p).unwrap_or_default();
            match a.col(2 * p + 1) {
                Some(hi) => interleave_pairs(lo, hi, &mut words),
                None => {
                    for (w, &l) in words.iter_mut().zip(lo) {
                        *w = bits(l);
                    }
                }
            }
            for (row, &w) in out.chunks_exact_mut(pairs).zip(&words) {
                row[p] = w;
            }
        }
    } else {
        for (r, dst) in out.chunks_exact_mut(pairs).take(rows).enumerate() {
            for (p, d) in dst.iter_mut().take(k.div_ceil(2)).enumerate() {
                let hi = if 2 * p + 1 < k {
                    bits(a.at(r, 2 * p + 1))
                } else {
                    0
                };
                *d = bits(a.at(r, 2 * p)) | (hi << 16);
            }
        }
    }
    out
}

/// `dst[i]` = the bf16 pair word of `lo[i]` (low half) and `hi[i]` (high half), for every
/// `i < dst.len()` (`lo` and `hi` at least as long).
fn interleave_pairs(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if bf16_dot_available() {
        // SAFETY: avx512f and avx512bf16 were detected.
        unsafe { super::bf16_avx512::interleave_pairs(lo, hi, dst) };
        return;
    }
    for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
        *d = bits(l) | (bits(h) << 16);
    }
}

/// `src`'s values in pairs, rounded to bf16: word `p` holds `src[2p]` (low half) and
/// `src[2p + 1]` (high, zero past the end); `dst` holds at least `src.len().div_ceil(2)` words.
/// Through `VCVTNE2PS2BF16` where `simd` allows it and the CPU has it.
fn pack_pairs(src: &[f32], dst: &mut [u32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd && src.len().is_multiple_of(2) && bf16_dot_available() {
        // SAFETY: avx512f and avx512bf16 were detected; `src` has an even number of values,
        // `dst` at least half as many words.
        unsafe { super::bf16_avx512::pack_row(src, dst) };
        return;
    }
    let _ = simd;
    for (d, pair) in dst.iter_mut().zip(src.chunks(2)) {
        let hi = pair.get(1).map_or(0, |&v| bits(v));
        *d = bits(pair[0]) | (hi << 16);
    }
}

/// `mr` rows of packed `A` times one tile of `B`, written into `c` (row stride `ldc`, the
/// first `cols` columns).
#[allow(clippy::too_many_arguments)]
fn micro(
    a: &[u32],
    pairs: usize,
    b: &[u32],
    mr: usize,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
    simd: bool,
) {
    assert!(a.len() >= mr * pairs && b.len() >= pairs * NR && mr <= MR && cols <= NR);
    assert!(mr == 0 || c.len() >= (mr - 1) * ldc + cols);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the features were detected (`simd`); bounds are asserted above.
        unsafe { super::bf16_avx512::micro(a, pairs, b, mr, c, ldc, cols) };
        return;
    }
    let _ = simd;
    let widen = |h: u32| f32::from_bits(h << 16);
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..pairs {
        let bp = &b[p * NR..(p + 1) * NR];
        for r in 0..mr {
            let av = a[r * pairs + p];
            let (a0, a1) = (widen(av & 0xffff), widen(av >> 16));
            for (acc, &bv) in acc[r].iter_mut().zip(bp) {
                *acc += a0 * widen(bv & 0xffff) + a1 * widen(bv >> 16);
            }
        }
    }
    for r in 0..mr {
        c[r * ldc..r * ldc + cols].copy_from_slice(&acc[r][..cols]);
    }
}
