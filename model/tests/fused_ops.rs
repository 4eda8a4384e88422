//! The fused training ops (`tributary_model::fused`) against the burn composite ops they
//! replace: forward values and input gradients, with the AVX-512 and the portable kernels,
//! for short and long rows, fully padded rows and extreme inputs; and the vectorized `exp`
//! against f64.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tributary_model::fused::{self, CausalMask, simd::exp_into, with_portable_kernels};

fn random(n: usize, spread: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-spread..spread)).collect()
}

fn ad() -> Device {
    device().autodiff()
}

fn tracked<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape), &ad()).require_grad()
}

/// Runs `check` with the AVX-512 kernels (where the CPU has them) and with the portable ones.
fn both_kernels(check: impl Fn(&str)) {
    check("simd");
    with_portable_kernels(|| check("portable"));
}

#[test]
fn vectorized_exp_matches_f64() {
    let mut x: Vec<f32> = (0..20_000).map(|i| -110.0 + i as f32 * 0.00995).collect();
    x.extend([
        0.0,
        -0.0,
        1e-8,
        -1e-8,
        88.7,
        -87.3,
        -103.0,
        -200.0,
        f32::MIN,
        -1e30,
    ]);
    for simd in [true, false] {
        let mut out = vec![0.0f32; x.len()];
        exp_into(&x, &mut out, simd);
        for (&v, &got) in x.iter().zip(&out) {
            let want = f64::from(v).exp();
            if want > f64::from(f32::MAX) {
                assert_eq!(got, f32::INFINITY, "exp({v}) overflows");
            } else if want < f64::from(f32::MIN_POSITIVE) {
                // Denormal or zero results: absolute error below the smallest normal.
                assert!(
                    (f64::from(got) - want).abs() < 2e-38,
                    "exp({v}) = {got}, want {want}"
                );
            } else {
                let rel = ((f64::from(got) - want) / want).abs();
                assert!(
                    rel < 4e-7,
                    "simd {simd}: exp({v}) = {got}, want {want} (rel {rel})"
                );
            }
        }
    }
    let mut nan = [0.0f32; 3];
    exp_into(&[f32::NAN, 1.0, f32::NAN], &mut nan, true);
    assert!(nan[0].is_nan() && nan[2].is_nan() && (nan[1] - 1.0f32.exp()).abs() < 1e-6);
}

/// Key validity for left padding `pads` (plus `past` cached keys, all real) and `seq` queries.
fn key_valid(pads: &[usize], past: usize, seq: usize) -> Vec<Vec<bool>> {
    pads.iter()
        .map(|&p| (0..past + seq).map(|j| j < past || j >= past + p).collect())
        .collect()
}

#[test]
fn causal_softmax_matches_the_composite_with_padding() {
    // Short rows (under one 16-lane vector), long rows with a tail, a row that is all
    // padding, and queries after cached keys.
    for (seq, past, pads) in [
        (5, 0, vec![0, 2, 5]),
        (40, 0, vec![0, 17, 40]),
        (33, 0, vec![1, 0, 32]),
        (7, 3, vec![0, 4, 7]),
    ] {
        let (b, heads, total) = (pads.len(), 3, past + seq);
        let valid = key_valid(&pads, past, seq);
        // With cached keys all real, a row padded in this call has a hole: only `past == 0`
        // or unpadded rows make one run; build those cases without holes.
        let valid: Vec<Vec<bool>> = if past > 0 {
            pads.iter()
                .map(|&p| (0..total).map(|j| j >= p).collect())
                .collect()
        } else {
            valid
        };
        let mask = CausalMask::from_key_valid(&valid, past, seq).expect("one run per row");
        let additive = mask.additive(&ad());
        let n = b * heads * seq * total;
        let scores = random(n, 6.0, seq as u64);
        let upstream = random(n, 1.0, 99);
        let shape = [b, heads, seq, total];
        let scale = 0.25;
        both_kernels(|kind| {
            let s1 = tracked(&scores, shape);
            let s2 = tracked(&scores, shape);
            let up = Tensor::<4>::from_data(TensorData::new(upstream.clone(), shape), &ad());
            let p1 = fused::causal_softmax(&s1, scale, &mask).expect("fused path taken");
            let p2 = fused::causal_softmax_composite(s2.clone(), scale, &additive);
            let (v1, v2) = (values(&p1), values(&p2));
            let d = max_abs_diff(&v1, &v2);
            assert!(d < 1e-6, "{kind} seq {seq}: probabilities differ by {d}");
            // The fully padded row is uniform, as the composite makes it.
            let g1 = p1.mul(up.clone()).sum().backward();
            let g2 = p2.mul(up).sum().backward();
            let (d1, d2) = (
                values(&s1.grad(&g1).expect("grad")),
                values(&s2.grad(&g2).expect("grad")),
            );
            let e = max_abs_diff(&d1, &d2);
            assert!(e < 1e-6, "{kind} seq {seq}: score gradients differ by {e}");
            assert!(
                d1.iter().any(|&g| g.abs() > 1e-3),
                "gradient is not trivially zero"
            );
        });
    }
    // Keys that are not one run per row are left to the composite path.
    assert!(CausalMask::from_key_valid(&[vec![true, false, true]], 0, 3).is_none());
}

#[test]
fn causal_softmax_declines_without_autodiff() {
    let mask = CausalMask::from_key_valid(&key_valid(&[0], 0, 4), 0, 4).expect("mask");
    let plain =
        Tensor::<4>::from_data(TensorData::new(random(16, 1.0, 1), [1, 1, 4, 4]), &device());
    assert!(fused::causal_softmax(&plain, 1.0, &mask).is_none());
    let wrong_shape = tracked(&random(20, 1.0, 1), [1, 1, 4, 5]);
    assert!(fused::causal_softmax(&wrong_shape, 1.0, &mask).is_none());
}

#[test]
fn swiglu_matches_the_composite() {
    for (rows, cols) in [(3, 7), (37, 300)] {
        let n = rows * cols;
        let mut gate = random(n, 8.0, 5);
        // Saturated gates: σ at both ends.
        gate[0] = 95.0;
        gate[1] = -95.0;
        gate[2] = -30.0;
        let up = random(n, 2.0, 6);
        let upstream = random(n, 1.0, 7);
        both_kernels(|kind| {
            let (g1, u1) = (tracked(&gate, [rows, cols]), tracked(&up, [rows, cols]));
            let (g2, u2) = (tracked(&gate, [rows, cols]), tracked(&up, [rows, cols]));
            let c = Tensor::<2>::from_data(TensorData::new(upstream.clone(), [rows, cols]), &ad());
            let h1 = fused::swiglu(&g1, &u1).expect("fused path taken");
            let h2 = fused::swiglu_composite(g2.clone(), u2.clone());
            let d = rel_err(&values(&h1), &values(&h2));
            assert!(d < 1e-6, "{kind} {rows}x{cols}: forward rel err {d}");
            let gr1 = h1.mul(c.clone()).sum().backward();
            let gr2 = h2.mul(c).sum().backward();
            for (name, a, b) in [("gate", &g1, &g2), ("up", &u1, &u2)] {
                let (x, y) = (
                    values(&a.grad(&gr1).expect("grad")),
                    values(&b.grad(&gr2).expect("grad")),
                );
                let e = rel_err(&x, &y);
                assert!(e < 1e-6, "{kind} {rows}x{cols}: d{name} rel err {e}");
            }
        });
    }
}

#[test]
fn rms_norm_matches_the_composite() {
    for (rows, h) in [(1, 8), (50, 200)] {
        let x = random(rows * h, 3.0, 11);
        let w = random(h, 1.5, 12);
        let upstream = random(rows * h, 1.0, 13);
        let eps = 1e-5;
        let weight = Tensor::<1>::from_data(TensorData::new(w.clone(), [h]), &ad());
        let x1 = tracked(&x, [rows, h]);
        let x2 = tracked(&x, [rows, h]);
        let c = Tensor::<2>::from_data(TensorData::new(upstream, [rows, h]), &ad());
        let y1 = fused::rms_norm(&x1, &weight, eps).expect("fused path taken");
        let y2 = fused::rms_norm_composite(x2.clone(), &weight, eps);
        let d = rel_err(&values(&y1), &values(&y2));
        assert!(d < 1e-6, "{rows}x{h}: forward rel err {d}");
        let g1 = y1.mul(c.clone()).sum().backward();
        let g2 = y2.mul(c).sum().backward();
        let e = rel_err(
            &values(&x1.grad(&g1).expect("grad")),
            &values(&x2.grad(&g2).expect("grad")),
        );
        assert!(e < 1e-5, "{rows}x{h}: input gradient rel err {e}");
    }
    // A weight that is trained itself needs its gradient: left to the composite.
    let x = tracked(&random(16, 1.0, 1), [2, 8]);
    let w = tracked(&random(8, 1.0, 2), [8]);
    assert!(fused::rms_norm(&x, &w, 1e-5).is_none());
}

#[test]
fn token_nll_matches_the_composite() {
    for (n, vocab) in [(1, 5), (9, 1000)] {
        let logits = random(n * vocab, 12.0, 21);
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        let targets: Vec<i64> = (0..n).map(|_| rng.random_range(0..vocab as i64)).collect();
        both_kernels(|kind| {
            let z1 = tracked(&logits, [n, vocab]);
            let z2 = tracked(&logits, [n, vocab]);
            let l1 = fused::token_nll_sum(&z1, &targets).expect("fused path taken");
            let l2 = fused::token_nll_sum_composite(z2.clone(), &targets);
            let (a, b) = (values(&l1)[0], values(&l2)[0]);
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{kind} {n}x{vocab}: loss {a} vs {b}"
            );
            let g1 = l1.mul_scalar(0.5).backward();
            let g2 = l2.mul_scalar(0.5).backward();
            let e = rel_err(
                &values(&z1.grad(&g1).expect("grad")),
                &values(&z2.grad(&g2).expect("grad")),
            );
            assert!(e < 1e-5, "{kind} {n}x{vocab}: logit gradient rel err {e}");
        });
    }
    let z = tracked(&random(10, 1.0, 1), [2, 5]);
    assert!(
        fused::token_nll_sum(&z, &[0, 5]).is_none(),
        "target outside the vocabulary"
    );
    assert!(
        fused::token_nll_sum(&z, &[0]).is_none(),
        "one target for two rows"
    );
}

#[test]
fn padded_batch_under_autodiff_gives_the_plain_forward_logits() {
    // The autodiff forward takes every fused op (mask from the batch's padding); the plain
    // forward takes burn's composite ops. Row 0 is left-padded by 4, row 1 not at all.
    for name in MODELS {
        let dev = device();
        let model = tributary_model::decoder::CausalLm::load(&model_dir(name), &dev).expect("load");
        let rows = input_rows(name);
        let pads = [4, 0];
        let mut padded = rows.clone();
        padded[0] = std::iter::repeat_n(0, 4)
            .chain(rows[0][4..].iter().copied())
            .collect();
        let plain = model.forward(ids_tensor(&padded, &dev), &pads, None, None);
        let ad_model = model.to_autodiff();
        let tracked = ad_model.forward(ids_tensor(&padded, ad_model.device()), &pads, None, None);
        assert!(tracked.is_autodiff());
        let [b, s, v] = plain.dims();
        let (p, t) = (values(&plain), values(&tracked));
        // Padding positions' outputs are not compared (nothing reads them).
        for row in 0..b {
            let from = pads[row] * v;
            let (p, t) = (
                &p[row * s * v + from..(row + 1) * s * v],
                &t[row * s * v + from..(row + 1) * s * v],
            );
            let d = max_abs_diff(p, t);
            assert!(d < 1e-4, "{name} row {row}: logits differ by {d}");
        }
    }
}

#[test]
fn rope_heads_match_the_composite() {
    for (b, s, heads, d) in [(2, 3, 2, 4), (3, 20, 4, 16)] {
        let n = b * s * heads * d;
        let x = random(n, 2.0, 31);
        // Tables as the decoder makes them: both halves of a head share one angle.
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        for p in 0..b * s {
            for _half in 0..2 {
                for i in 0..d / 2 {
                    let a = (p % s) as f32 * 10f32.powf(-((2 * i) as f32) / d as f32);
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        // Distinct halves too, so a swapped table half would show.
        sin[1] += 0.25;
        let tables = fused::RopeTables::new(cos.clone(), sin.clone(), b, s, d).expect("tables");
        let cos_t = Tensor::<4>::from_data(TensorData::new(cos, [b, 1, s, d]), &ad());
        let sin_t = Tensor::<4>::from_data(TensorData::new(sin, [b, 1, s, d]), &ad());
        let upstream = random(n, 1.0, 32);
        let x1 = tracked(&x, [b * s, heads * d]);
        let x2 = tracked(&x, [b * s, heads * d]);
        let c = Tensor::<4>::from_data(TensorData::new(upstream, [b, heads, s, d]), &ad());
        let y1 = fused::rope_heads(&x1, &tables).expect("fused path taken");
        let y2 = fused::rope_heads_composite(x2.clone(), &cos_t, &sin_t, heads);
        assert_eq!(y1.dims(), [b, heads, s, d]);
        let e = max_abs_diff(&values(&y1), &values(&y2));
        assert!(e < 1e-6, "{b}x{s}x{heads}x{d}: forward differs by {e}");
        let g1 = y1.mul(c.clone()).sum().backward();
        let g2 = y2.mul(c).sum().backward();
        let (a, w) = (
            values(&x1.grad(&g1).expect("grad")),
            values(&x2.grad(&g2).expect("grad")),
        );
        let e = max_abs_diff(&a, &w);
        assert!(
            e < 1e-6,
            "{b}x{s}x{heads}x{d}: input gradient differs by {e}"
        );
    }
    let x = tracked(&random(12, 1.0, 1), [3, 4]);
    let tables = fused::RopeTables::new(vec![1.0; 8], vec![0.0; 8], 1, 2, 4).expect("tables");
    assert!(
        fused::rope_heads(&x, &tables).is_none(),
        "rows do not fit the tables"
    );
    assert!(
        fused::RopeTables::new(vec![1.0; 6], vec![0.0; 6], 1, 2, 3).is_none(),
        "odd head size"
    );
}
