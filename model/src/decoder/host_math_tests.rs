//! The host step's attention loops: AVX-512 against the portable loops, and attention over
//! a host store against a direct f64 computation with the mask.

use super::*;
use crate::decoder::cache::{Plan, scratch_store};
use crate::kernels::Isa;

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

#[test]
fn simd_loops_match_portable_loops() {
    if !crate::kernels::simd_available() {
        eprintln!("no SIMD path (AVX-512 or AVX2+FMA) on this CPU: only the portable loops run");
    }
    // Lengths with and without a tail past the last full 16 lanes.
    for n in [1, 15, 16, 33, 64, 130, 1000] {
        let a = values(n, 1 + n as u64);
        let b = values(n, 2 + n as u64);
        let (fast, slow) = (dot(&a, &b, true), dot(&a, &b, false));
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(fast) - exact).abs() < 1e-4, "dot n={n}");
        assert!((f64::from(slow) - exact).abs() < 1e-4, "dot n={n}");

        let (mut y1, mut y2) = (b.clone(), b.clone());
        axpy(&mut y1, 0.37, &a, true);
        axpy(&mut y2, 0.37, &a, false);
        for (p, q) in y1.iter().zip(&y2) {
            assert!((p - q).abs() < 1e-6, "axpy n={n}");
        }

        // Scores spread over [-40, 40]: exp of differences down to -80.
        let scores: Vec<f32> = a.iter().map(|v| v * 40.0).collect();
        let (mut e1, mut e2) = (scores.clone(), scores.clone());
        let (s1, s2) = (exp_normalise(&mut e1, true), exp_normalise(&mut e2, false));
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for ((p, q), x) in e1.iter().zip(&e2).zip(&scores) {
            // The argument as both paths form it (one f32 subtraction).
            let exact = f64::from(*x - max).exp();
            assert!(
                (f64::from(*p) - exact).abs() <= 2e-7 * exact + 1e-38,
                "exp n={n}"
            );
            assert!(
                (f64::from(*q) - exact).abs() <= 2e-7 * exact + 1e-38,
                "exp n={n}"
            );
        }
        assert!((s1 - s2).abs() <= 1e-5 * s2, "exp sum n={n}");
    }
}

/// Attention with padding (row 1 starts with 2 padding keys), a cached prefix of 3 and 2
/// new queries per row, 4 query heads over 2 key/value heads, against f64 computed from
/// the mask directly; SIMD and portable; head widths that exercise the SIMD path's 64-wide
/// and 16-wide passes and its scalar tail.
#[test]
fn attention_skips_masked_keys_and_matches_f64() {
    for dim in [20, 64, 88] {
        check_attention(dim);
    }
}

fn check_attention(dim: usize) {
    let (b, past, s) = (2, 3, 2);
    let heads = Heads {
        query: 4,
        kv: 2,
        dim,
    };
    let total = past + s;
    let valid = vec![vec![true; total], vec![false, false, true, true, true]];
    let plan = Plan {
        positions: vec![0; b * s],
        key_valid: valid.clone(),
        past,
        next_pos: vec![0; b],
    };
    let mut kv = scratch_store(b, 1, heads.kv, heads.dim, total);
    let keys = values(b * heads.kv * total * heads.dim, 7);
    let vals = values(b * heads.kv * total * heads.dim, 8);
    let at = |i: usize, h: usize, j: usize| ((i * heads.kv + h) * total + j) * heads.dim;
    for i in 0..b {
        for h in 0..heads.kv {
            for j in 0..total {
                let r = at(i, h, j)..at(i, h, j) + heads.dim;
                kv.write(0, i, h, j, &keys[r.clone()], &vals[r]);
            }
        }
    }
    let q = values(b * s * heads.query * heads.dim, 9);
    let scale = 1.0 / (heads.dim as f64).sqrt();
    for simd in [true, false] {
        let out = attend(&q, &kv, 0, &plan, s, heads, simd);
        for i in 0..b {
            for t in 0..s {
                for h in 0..heads.query {
                    let kh = h / 2;
                    let qv = &q[((i * s + t) * heads.query + h) * heads.dim..][..heads.dim];
                    let seen: Vec<usize> = (0..=past + t).filter(|&j| valid[i][j]).collect();
                    let sc: Vec<f64> = seen
                        .iter()
                        .map(|&j| {
                            let kj = &keys[at(i, kh, j)..][..heads.dim];
                            let d: f64 = qv
                                .iter()
                                .zip(kj)
                                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                .sum();
                            d * scale
                        })
                        .collect();
                    let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..heads.dim {
                        let want: f64 = seen
                            .iter()
                            .zip(&e)
                            .map(|(&j, w)| w / z * f64::from(vals[at(i, kh, j) + c]))
                            .sum();
                        let got = out[((i * s + t) * heads.query + h) * heads.dim + c];
                        assert!(
                            (f64::from(got) - want).abs() < 1e-5,
                            "dim {dim} row {i} query {t} head {h} col {c} simd {simd}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn rms_norm_and_rope_follow_their_formulas() {
    let x = values(2 * 8, 3);
    let w = values(8, 4);
    let y = rms_norm(&x, &w, 1e-5);
    for (row, got) in x.chunks(8).zip(y.chunks(8)) {
        let ms: f64 = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / 8.0;
        for ((w, x), g) in w.iter().zip(row).zip(got) {
            let want = f64::from(*w) * f64::from(*x) / (ms + 1e-5).sqrt();
            assert!((f64::from(*g) - want).abs() < 1e-5);
        }
    }
    // One row, two heads of 4: rotation of (x[i], x[i+2]) by the angle whose cos/sin are given.
    let mut h = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 2.0, -3.0];
    let orig = h.clone();
    let (cos, sin) = ([0.6f32, 0.0], [0.8f32, 1.0]);
    rope(&mut h, 4, &cos, &sin);
    for (got, old) in h.chunks(4).zip(orig.chunks(4)) {
        for (i, (c, s)) in cos.iter().zip(&sin).enumerate() {
            let (a, b) = (old[i], old[i + 2]);
            assert!((got[i] - (a * c - b * s)).abs() < 1e-6);
            assert!((got[i + 2] - (b * c + a * s)).abs() < 1e-6);
        }
    }
}

#[test]
fn avx2_attention_loops_match_portable() {
    if !crate::kernels::avx2_tests::avx2_here("avx2_attention_loops_match_portable") {
        return;
    }
    for n in [1, 7, 8, 9, 33, 100] {
        let a = values(n, 1 + n as u64);
        let b = values(n, 2 + n as u64);
        let (d1, d2) = (
            dot_isa(&a, &b, Isa::Avx2Fma),
            dot_isa(&a, &b, Isa::Portable),
        );
        crate::kernels::avx2_tests::close(&[d1], &[d2], 1e-5, &format!("dot n={n}"));

        let (mut y1, mut y2) = (b.clone(), b.clone());
        axpy_isa(&mut y1, 0.37, &a, Isa::Avx2Fma);
        axpy_isa(&mut y2, 0.37, &a, Isa::Portable);
        crate::kernels::avx2_tests::close(&y1, &y2, 1e-6, &format!("axpy n={n}"));

        let scores: Vec<f32> = a.iter().map(|v| v * 40.0).collect();
        let (mut e1, mut e2) = (scores.clone(), scores.clone());
        let s1 = exp_normalise_isa(&mut e1, Isa::Avx2Fma);
        let s2 = exp_normalise_isa(&mut e2, Isa::Portable);
        crate::kernels::avx2_tests::close(&e1, &e2, 1e-6, &format!("exp_normalise n={n}"));
        crate::kernels::avx2_tests::close(&[s1], &[s2], 1e-5, &format!("exp_normalise sum n={n}"));
    }
    // Head dims with and without 32- and 8-lane tails; key counts with and without a
    // remainder after groups of four, and a gap (a masked key).
    for dim in [4, 8, 36, 64, 75] {
        let cap = 11;
        let keys_buf = values(cap * dim, dim as u64);
        let values_buf = values(cap * dim, 5 + dim as u64);
        let head = Head {
            keys: &keys_buf,
            values: &values_buf,
            dim,
            scale: 0.3,
        };
        let q = values(dim, 9 + dim as u64);
        for keys in [vec![0], vec![0, 1, 2, 3], vec![0, 2, 3, 4, 5, 6, 7, 9, 10]] {
            let (mut o1, mut o2) = (vec![0.0; dim], vec![0.0; dim]);
            let mut scratch = Vec::new();
            attend_head_isa(&q, &head, &keys, &mut scratch, &mut o1, Isa::Avx2Fma);
            attend_head_isa(&q, &head, &keys, &mut scratch, &mut o2, Isa::Portable);
            crate::kernels::avx2_tests::close(
                &o1,
                &o2,
                1e-5,
                &format!("attend dim={dim} keys={keys:?}"),
            );
        }
    }
}
