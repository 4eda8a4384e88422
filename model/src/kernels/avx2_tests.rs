//! The AVX2+FMA paths of the host kernels against the portable ones, forced through [`Isa`]
//! (so they run on AVX-512 CPUs too), at sizes with tails; skipped, with a printed reason,
//! where the CPU lacks AVX2 or FMA. The attention loops' test is in
//! `decoder/host_math_tests.rs`.

use super::lora::LoraFactors;
use super::{Isa, PackedMatrix, Split, nf4_matmul_isa};
use crate::fused::simd::{
    exp_into_isa, log_sum_exp_isa, scaled_exp_shifted_isa, softmax_backward_range_isa,
    softmax_range_isa, swiglu_backward_isa, swiglu_isa,
};
use crate::quant::Nf4Matrix;

/// Deterministic values in about [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Whether the AVX2 path runs here (else prints why the test is skipped).
pub(crate) fn avx2_here(test: &str) -> bool {
    let ok = Isa::Avx2Fma.runs_here();
    if !ok {
        eprintln!("{test}: skipped, this CPU lacks AVX2 or FMA");
    }
    ok
}

/// Asserts `|a − b| ≤ tol·(1 + |b|)` elementwise.
pub(crate) fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()) || (x.is_nan() && y.is_nan()) || x == y,
            "{what}: [{i}] {x} vs {y}"
        );
    }
}

#[test]
fn avx2_packed_tiles_match_portable() {
    if !avx2_here("avx2_packed_tiles_match_portable") {
        return;
    }
    // Odd in (no vector multiple), out with a partial last tile, every row count to 9
    // (full-width rows 1–2, half-tile groups of four from 3, a second chunk at 9).
    for (k, n) in [(1, 1), (37, 45), (67, 100), (64, 32)] {
        let w = values(k * n, (k * n) as u64);
        for m in 1..=9 {
            let x = values(m * k, 7 + m as u64);
            for p in [PackedMatrix::f32(&w, k, n), PackedMatrix::bf16(&w, k, n)] {
                let fast = p.matmul_isa(&x, m, Isa::Avx2Fma, Split::Serial);
                let slow = p.matmul_isa(&x, m, Isa::Portable, Split::Serial);
                let what = format!("k={k} n={n} m={m} bf16={}", p.is_bf16());
                close(&fast, &slow, 1e-5 * k as f32, &what);
                let pooled = p.matmul_isa(&x, m, Isa::Avx2Fma, Split::Pool);
                assert_eq!(fast, pooled, "{what}: the pool changes no value");
            }
        }
    }
}

#[test]
fn avx2_nf4_matmul_matches_portable() {
    if !avx2_here("avx2_nf4_matmul_matches_portable") {
        return;
    }
    // n = 96: a last tile of one half, and halves of one tile in different blocks (rows not
    // a multiple of 64 long); n = 128: whole tiles; k odd.
    for (k, n) in [(3, 32), (37, 96), (19, 128)] {
        let q = Nf4Matrix::quantize(&values(k * n, 3 + n as u64), [k, n]).expect("quantize");
        for m in 1..=6 {
            let x = values(m * k, 11 + m as u64);
            let fast = nf4_matmul_isa(&q, &x, m, Isa::Avx2Fma, Split::Serial).expect("fusable");
            let slow = nf4_matmul_isa(&q, &x, m, Isa::Portable, Split::Serial).expect("fusable");
            close(
                &fast,
                &slow,
                1e-5 * k as f32,
                &format!("nf4 k={k} n={n} m={m}"),
            );
        }
    }
}

#[test]
fn avx2_lora_deltas_match_portable() {
    if !avx2_here("avx2_lora_deltas_match_portable") {
        return;
    }
    for (r, k, n) in [(3, 37, 45), (8, 70, 33), (1, 5, 7)] {
        for bf16 in [false, true] {
            let a = values(r * k, 1 + k as u64);
            let b = values(n * r, 2 + n as u64);
            let f = LoraFactors::new(&a, &b, [r, k, n], 0.5, bf16);
            for rows in [vec![0], vec![0, 1, 2], vec![4, 0, 2, 1, 3]] {
                let m = 5;
                let x = values(m * k, 9);
                let y0 = values(m * n, 10);
                let (mut fast, mut slow) = (y0.clone(), y0.clone());
                f.add_delta_isa(&x, &mut fast, &rows, Isa::Avx2Fma);
                f.add_delta_isa(&x, &mut slow, &rows, Isa::Portable);
                let what = format!("lora r={r} k={k} n={n} bf16={bf16} rows={rows:?}");
                close(&fast, &slow, 1e-5 * k as f32, &what);
            }
        }
    }
}

#[test]
fn avx2_row_kernels_match_portable() {
    if !avx2_here("avx2_row_kernels_match_portable") {
        return;
    }
    for n in [1, 7, 8, 9, 17, 100] {
        let g: Vec<f32> = values(n, n as u64).iter().map(|v| v * 12.0).collect();
        let u = values(n, 2 * n as u64);
        let mut x: Vec<f32> = values(n, 3 * n as u64).iter().map(|v| v * 90.0).collect();
        x[0] = -120.0;
        let what = |k: &str| format!("{k} n={n}");

        let (mut e1, mut e2) = (vec![0.0; n], vec![0.0; n]);
        exp_into_isa(&x, &mut e1, Isa::Avx2Fma);
        exp_into_isa(&x, &mut e2, Isa::Portable);
        for (p, q) in e1.iter().zip(&e2) {
            assert!(
                p == q || (p - q).abs() <= 4e-7 * q + 2e-38,
                "{}: {p} vs {q}",
                what("exp")
            );
        }

        let (mut o1, mut o2) = (vec![0.0; n], vec![0.0; n]);
        swiglu_isa(&g, &u, &mut o1, Isa::Avx2Fma);
        swiglu_isa(&g, &u, &mut o2, Isa::Portable);
        close(&o1, &o2, 1e-6, &what("swiglu"));

        let (mut dh1, mut du1) = (u.clone(), vec![0.0; n]);
        let (mut dh2, mut du2) = (u.clone(), vec![0.0; n]);
        swiglu_backward_isa(&g, &u, &mut dh1, &mut du1, Isa::Avx2Fma);
        swiglu_backward_isa(&g, &u, &mut dh2, &mut du2, Isa::Portable);
        close(&dh1, &dh2, 1e-6, &what("swiglu dh"));
        close(&du1, &du2, 1e-6, &what("swiglu du"));

        let (lo, hi) = (n / 3, n);
        let (mut s1, mut s2) = (vec![1.0; n], vec![1.0; n]);
        softmax_range_isa(&g, &mut s1, lo, hi, 0.7, Isa::Avx2Fma);
        softmax_range_isa(&g, &mut s2, lo, hi, 0.7, Isa::Portable);
        close(&s1, &s2, 1e-6, &what("softmax"));

        let (mut b1, mut b2) = (u.clone(), u.clone());
        softmax_backward_range_isa(&s2, &mut b1, lo, hi, 0.7, Isa::Avx2Fma);
        softmax_backward_range_isa(&s2, &mut b2, lo, hi, 0.7, Isa::Portable);
        close(&b1, &b2, 1e-6, &what("softmax backward"));

        let (l1, l2) = (
            log_sum_exp_isa(&g, Isa::Avx2Fma),
            log_sum_exp_isa(&g, Isa::Portable),
        );
        close(&[l1], &[l2], 1e-6, &what("log_sum_exp"));

        let (mut c1, mut c2) = (vec![0.0; n], vec![0.0; n]);
        scaled_exp_shifted_isa(&g, l2, 0.3, &mut c1, Isa::Avx2Fma);
        scaled_exp_shifted_isa(&g, l2, 0.3, &mut c2, Isa::Portable);
        close(&c1, &c2, 1e-6, &what("scaled_exp_shifted"));
    }
}
