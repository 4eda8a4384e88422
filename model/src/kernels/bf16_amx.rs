//! The AMX bodies of [`super::bf16_gemm`]: `TDPBF16PS` on tiles of 16 rows × 32 bf16 (16
//! pairs), f32 accumulation in 16 × 16 tiles. Where the CPU has AMX-BF16 (Intel Xeon from
//! Sapphire Rapids on) a tile product does 8 192 multiply-adds; one core reaches ~520
//! GFLOP/s here against ~220 for the AVX-512 BF16 micro-kernel (docs/benchmarks.md).
//!
//! Operands are the layouts [`super::bf16_gemm`] already packs: `A` as `[rows][pairs]` `u32`
//! (a row's pair of bf16 per `u32`), which is AMX's row-major `A` tile; `B` as a column tile of
//! [`NR`] = 32 columns, `[pairs][32]` `u32`, which is AMX's pair-interleaved ("VNNI") `B`
//! layout for two 16-column tiles side by side (row stride 128 bytes). Each call computes
//! a 32 × 32 block of `C` with four accumulator tiles (2 × 2), two `A` tiles and two `B` tiles:
//! all eight tile registers, one configuration (every tile 16 rows × 64 bytes).
//!
//! Linux hands out AMX state per process on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`); [`available`] asks once, and a refusal (old kernel, a seccomp
//! filter) leaves the AVX-512 kernel in charge. Rust has no stable AMX intrinsics, so the
//! instructions are written with `asm!`; the compiler never allocates tile registers, so
//! their contents survive between the statements of one kernel call.
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::arch::asm;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::bf16_gemm::{KP, NR};

/// Rows of `C` per kernel call (two 16-row tiles).
pub const ROWS: usize = 32;

/// Whether AMX-BF16 can run in this process: the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7)
/// and Linux granted the tile data state. Asked once; later calls read the answer.
pub fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx_bf16() && request_tile_permission())
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID is always available on x86_64 (safe since Rust 1.87); leaf 7 exists when the max
    // leaf is ≥ 7.
    let max_leaf = std::arch::x86_64::__cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let amx_bf16 = edx & (1 << 22) != 0;
    let amx_tile = edx & (1 << 24) != 0;
    amx_bf16 && amx_tile
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which XSAVE features this process
    // may use; the syscall clobbers rcx and r11, declared here.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// The palette-1 tile configuration: eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_full() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1; // palette 1
        for tile in 0..8 {
            bytes[16 + 2 * tile] = 64; // bytes per row (u16, little-endian)
            bytes[48 + tile] = 16; // rows
        }
        Self(bytes)
    }
}

/// One `A·B` term of a block product: `a` `[padded_rows][pairs]` packed rows (`padded_rows`
/// = the block's rows rounded up to [`ROWS`], the extra rows zero; `pairs` a multiple of
/// [`KP`], zero past `k`), `b` a panel's data (`n.div_ceil(NR)` tiles of `[pairs][NR]`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Term<'a> {
    pub a: &'a [u32],
    pub pairs: usize,
    pub b: &'a [u32],
}

/// `C[rows, n] = Σ A·B` over `terms` for one block of rows on this thread (the sums of all
/// terms stay in the accumulator tiles: a LoRA delta `(x·Aᵀ)·Bᵀ` rides on the frozen
/// product's tiles as 16 more pairs of `k`); `c` `[rows, n]` row-major, every element written
/// (it may start uninitialized: nothing in it is read).
///
/// # Safety
/// [`available`] must have returned true.
pub(super) unsafe fn block(terms: &[Term<'_>], rows: usize, n: usize, c: &mut [MaybeUninit<f32>]) {
    let padded_rows = rows.div_ceil(ROWS) * ROWS;
    let tiles = n.div_ceil(NR);
    for term in terms {
        assert!(term.pairs.is_multiple_of(KP) && term.a.len() >= padded_rows * term.pairs);
        assert!(term.b.len() >= tiles * term.pairs * NR);
    }
    assert!(c.len() >= rows * n);
    let config = TileConfig::all_full();
    // SAFETY: AMX is available (caller); the configuration is 64 aligned bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack)) };
    let mut spill = [0.0f32; ROWS * NR];
    for t in 0..tiles {
        let cols = (n - t * NR).min(NR);
        for r0 in (0..rows).step_by(ROWS) {
            let full = r0 + ROWS <= rows && cols == NR;
            let (dst, ldc) = if full {
                // SAFETY: rows r0..r0+32 and columns t·32..t·32+32 lie inside `c` (`full`).
                (
                    unsafe { c.as_mut_ptr().add(r0 * n + t * NR).cast::<f32>() },
                    n,
                )
            } else {
                (spill.as_mut_ptr(), NR)
            };
            // SAFETY: tiles configured above; each term's rows r0..r0+32 and tile t lie inside
            // its slices (asserted); `dst` holds 32 rows of 32 floats at stride `ldc`.
            unsafe {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack)
                );
                for term in terms {
                    let pairs = term.pairs;
                    accumulate_32x32(
                        &term.a[r0 * pairs..(r0 + ROWS) * pairs],
                        pairs,
                        &term.b[t * pairs * NR..(t + 1) * pairs * NR],
                    );
                }
                store_32x32(dst, ldc);
            }
            if !full {
                for r in 0..(rows - r0).min(ROWS) {
                    let at = (r0 + r) * n + t * NR;
                    for (d, &v) in c[at..at + cols].iter_mut().zip(&spill[r * NR..]) {
                        d.write(v);
                    }
                }
            }
        }
    }
    // SAFETY: releases this thread's tile state (configured above).
    unsafe { asm!("tilerelease", options(nostack)) };
}

/// Adds 32 packed rows `a` (`[32][pairs]`) times one panel tile `b` (`[pairs][32]`) into the
/// accumulator tiles `tmm0..tmm3` (a 32 × 32 block of `C`).
///
/// # Safety
/// The tiles are configured ([`TileConfig::all_full`]).
#[inline]
unsafe fn accumulate_32x32(a: &[u32], pairs: usize, b: &[u32]) {
    debug_assert!(a.len() >= ROWS * pairs && b.len() >= pairs * NR);
    let a_stride = pairs * 4;
    let b_stride = NR * 4;
    let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
    let mut kk = 0;
    while kk < pairs {
        // SAFETY: every load reads 16 rows of 64 bytes inside `a` or `b` (kk + 16 ≤ pairs;
        // row 31 of `a` ends at 32·pairs; pair row kk + 15 of `b` ends at pairs·NR).
        unsafe {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a_ptr.add(kk),
                a1 = in(reg) a_ptr.add(16 * pairs + kk),
                b0 = in(reg) b_ptr.add(kk * NR),
                b1 = in(reg) b_ptr.add(kk * NR + 16),
                sa = in(reg) a_stride,
                sb = in(reg) b_stride,
                options(nostack),
            );
        }
        kk += KP;
    }
}

/// Stores the accumulator tiles `tmm0..tmm3` as a 32 × 32 block at `c` (row stride `ldc`).
///
/// # Safety
/// The tiles are configured; `c` is valid for 32 rows of 32 floats at stride `ldc`.
#[inline]
unsafe fn store_32x32(c: *mut f32, ldc: usize) {
    // SAFETY: the caller's contract: each store writes 16 rows of 64 bytes inside the block.
    unsafe {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * ldc),
            c3 = in(reg) c.add(16 * ldc + 16),
            s = in(reg) ldc * 4,
            options(nostack),
        );
    }
}
