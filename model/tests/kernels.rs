//! The host decode kernels (`tributary_model::kernels`) against burn's matmul on the same
//! values, both the AVX-512 path (when this CPU has it) and the portable one; the bf16 model
//! against the f32 model and the reference logits on the fixtures; the NF4 fused kernel
//! against the dequantized matrix.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tributary_model::decoder::{CausalLm, Linear, LinearWeight};
use tributary_model::kernels::{
    LoraFactors, PackedMatrix, nf4_fusable, nf4_matmul_with, simd_available,
};
use tributary_model::lora::{LoraAdapter, TargetModule};
use tributary_model::quant::Nf4Matrix;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `x` `[m, k]` · `w` `[k, n]` through burn on the CPU.
fn burn_matmul(x: &[f32], m: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let dev = device();
    let xt: Tensor<2> = Tensor::from_data(TensorData::new(x.to_vec(), [m, k]), &dev);
    let wt: Tensor<2> = Tensor::from_data(TensorData::new(w.to_vec(), [k, n]), &dev);
    values(&xt.matmul(wt))
}

fn simd_modes() -> Vec<bool> {
    if simd_available() {
        vec![true, false]
    } else {
        eprintln!(
            "no SIMD path (AVX-512 or AVX2+FMA) on this CPU: only the portable kernels are checked"
        );
        vec![false]
    }
}

#[test]
fn bf16_packing_rounds_to_nearest_and_unpacks_in_place() {
    // 70×100: the last column tile is partly padding.
    let (k, n) = (70, 100);
    let w = random(k * n, 1);
    let p = PackedMatrix::bf16(&w, k, n);
    assert!(p.is_bf16());
    assert_eq!(p.dims(), [k, n]);
    let back = p.to_f32();
    for (a, b) in w.iter().zip(&back) {
        assert_eq!(*b, half::bf16::from_f32(*a).to_f32());
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
    }
    assert_eq!(PackedMatrix::f32(&w, k, n).to_f32(), w);
    // 4 tiles of 70×32 bf16 values.
    assert_eq!(p.resident_bytes(), 4 * k * 32 * 2);
}

#[test]
fn packed_matmul_matches_burn_for_every_row_count() {
    let (k, n) = (70, 100);
    let w = random(k * n, 2);
    for packed in [PackedMatrix::bf16(&w, k, n), PackedMatrix::f32(&w, k, n)] {
        let dense = packed.to_f32();
        // 1 row (decode), a partial row chunk, exactly one chunk, and several chunks.
        for m in [1, 3, 8, 9, 20] {
            let x = random(m * k, 10 + m as u64);
            let want = burn_matmul(&x, m, &dense, k, n);
            for simd in simd_modes() {
                let got = packed.matmul_with(&x, m, simd);
                let diff = max_abs_diff(&got, &want);
                assert!(
                    diff <= 1e-4,
                    "bf16={} m={m} simd={simd}: max abs diff {diff}",
                    packed.is_bf16()
                );
            }
        }
    }
}

/// A matrix above `SERIAL_MAX_WEIGHTS` is split over the thread pool; same sums.
#[test]
fn packed_matmul_of_a_large_matrix_matches_burn() {
    let (k, n) = (1024, 1100);
    assert!(k * n >= tributary_model::kernels::SERIAL_MAX_WEIGHTS);
    let w = random(k * n, 30);
    let packed = PackedMatrix::bf16(&w, k, n);
    let dense = packed.to_f32();
    for m in [1, 3] {
        let x = random(m * k, 31 + m as u64);
        let want = burn_matmul(&x, m, &dense, k, n);
        let got = packed.matmul(&x, m);
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-3, "m={m}: max abs diff {diff}");
    }
}

#[test]
fn fused_nf4_matmul_matches_the_dequantized_matrix() {
    // Whole tiles (192), and rows of 2.5 and 1.5 tiles whose blocks straddle rows of Wᵀ
    // (each 32-column half tile still within one block) with a half tile at the end.
    for (k, n, seed) in [(70, 192, 3), (70, 160, 30), (37, 96, 31)] {
        let q = Nf4Matrix::quantize(&random(k * n, seed), [k, n]).expect("quantize");
        assert!(nf4_fusable(&q));
        let dense = q.dequantize();
        for m in [1, 4, 5, 11] {
            let x = random(m * k, 20 + m as u64);
            let want = burn_matmul(&x, m, &dense, k, n);
            for simd in simd_modes() {
                let got = nf4_matmul_with(&q, &x, m, simd).expect("fusable");
                let diff = max_abs_diff(&got, &want);
                assert!(diff <= 1e-4, "n={n} m={m} simd={simd}: max abs diff {diff}");
            }
        }
    }
    // Half tiles that would straddle two blocks (rows of 100 columns) are left to the
    // dequantizing path.
    let odd = Nf4Matrix::quantize(&random(70 * 100, 4), [70, 100]).expect("quantize");
    assert!(!nf4_fusable(&odd));
    assert!(nf4_matmul_with(&odd, &random(70, 5), 1, false).is_none());
}

/// A projection's few-row (host kernel) and many-row (burn on the dense matrix) paths give
/// the same rows.
#[test]
fn linear_host_path_equals_dense_path_for_bf16_and_nf4() {
    let dev = device();
    let (k, n) = (64, 128);
    let w = random(k * n, 6);
    let weights = [
        LinearWeight::Packed(Arc::new(PackedMatrix::bf16(&w, k, n))),
        LinearWeight::Nf4(Arc::new(Nf4Matrix::quantize(&w, [k, n]).expect("quantize"))),
    ];
    let bias: Tensor<1> = Tensor::from_data(TensorData::new(random(n, 7), [n]), &dev);
    for weight_t in weights {
        let lin = Linear {
            weight_t,
            bias: Some(bias.clone()),
        };
        let rows = 300; // above HOST_KERNEL_MAX_ROWS: burn's GEMM path
        let x: Tensor<2> = Tensor::from_data(TensorData::new(random(rows * k, 8), [rows, k]), &dev);
        let full = values(&lin.forward(x.clone()));
        let few = values(&lin.forward(x.slice([0..5, 0..k])));
        let diff = max_abs_diff(&few, &full[..5 * n]);
        assert!(
            diff <= 1e-4,
            "{:?}: max abs diff {diff}",
            lin.weight_t.dims()
        );
    }
}

#[test]
fn bf16_model_logits_stay_close_to_f32_and_the_reference() {
    for name in MODELS {
        let dev = device();
        let model = CausalLm::load(&model_dir(name), &dev).expect("load");
        let mut half = model.clone();
        half.to_bf16().expect("to_bf16");
        assert!(
            half.layers
                .iter()
                .flat_map(|l| TargetModule::ALL.map(|t| l.linear(t).weight_t.clone()))
                .all(|w| matches!(&w, LinearWeight::Packed(p) if p.is_bf16()))
        );
        let ratio = half.linear_weight_bytes() as f64 / model.linear_weight_bytes() as f64;
        assert!(
            ratio <= 0.6,
            "{name}: bf16 projections take {ratio}× their f32 bytes"
        );
        let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
            .expect("adapter");
        let reference = reference(name);
        let rows = input_rows(name);
        for (key, lora) in [("base_logits", None), ("lora_logits", Some(&adapter))] {
            let f32_logits = values(&model.forward(ids_tensor(&rows, &dev), &[], lora, None));
            let got = values(&half.forward(ids_tensor(&rows, &dev), &[], lora, None));
            let (_, want) = reference.get_f32(key).expect(key);
            let diff = max_abs_diff(&got, &want);
            let rel = rel_err(&got, &want);
            let v = model.config().vocab_size;
            let agree = f32_logits
                .chunks(v)
                .zip(got.chunks(v))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count() as f64
                / (got.len() / v) as f64;
            eprintln!(
                "{name} {key} bf16: max abs diff {diff:e} vs reference, rel {rel:.5}, top-1 agreement with f32 {agree:.3}"
            );
            assert!(
                max_abs_diff(&got, &f32_logits) > 0.0,
                "bf16 changed nothing"
            );
            // bf16 keeps 8 significant bits (relative rounding ≤ 2^-9 per weight); with
            // f32 accumulation the logits stay within 2% of the f32 reference.
            assert!(rel < 0.02, "{name} {key}: relative logits error {rel}");
            assert!(agree >= 0.9, "{name} {key}: top-1 agreement {agree}");
        }
    }
}

/// Decoding one token at a time (host kernels, KV cache) gives the logits that one forward
/// over the whole sequence gives on the same bf16 model.
#[test]
fn bf16_cached_decoding_matches_a_full_forward() {
    let name = MODELS[0];
    let dev = device();
    let mut model = CausalLm::load(&model_dir(name), &dev).expect("load");
    model.to_bf16().expect("to_bf16");
    let row = input_rows(name).remove(0);
    let full = values(&model.forward(
        ids_tensor(std::slice::from_ref(&row), &dev),
        &[],
        None,
        None,
    ));
    let v = model.config().vocab_size;
    let mut cache = model.new_cache(1);
    for (t, &tok) in row.iter().enumerate() {
        let step = model
            .forward_last(ids_tensor(&[vec![tok]], &dev), &[], None, Some(&mut cache))
            .expect("step");
        let diff = max_abs_diff(&values(&step), &full[t * v..(t + 1) * v]);
        assert!(diff <= 1e-4, "{name} position {t}: max abs diff {diff}");
    }
}

/// The f32 weights moved into the host kernels' layout give the reference logits (the
/// same tolerance as the burn path in `fixtures_numerics.rs`).
#[test]
fn packed_f32_model_matches_the_reference_logits() {
    for name in MODELS {
        let dev = device();
        let mut model = CausalLm::load(&model_dir(name), &dev).expect("load");
        let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
            .expect("adapter");
        model.to_packed_f32().expect("pack");
        assert!(
            model
                .layers
                .iter()
                .flat_map(|l| TargetModule::ALL.map(|t| l.linear(t).weight_t.clone()))
                .all(|w| matches!(&w, LinearWeight::Packed(p) if !p.is_bf16()))
        );
        let reference = reference(name);
        let rows = input_rows(name);
        for (key, lora) in [("base_logits", None), ("lora_logits", Some(&adapter))] {
            let got = values(&model.forward(ids_tensor(&rows, &dev), &[], lora, None));
            let (_, want) = reference.get_f32(key).expect(key);
            let diff = max_abs_diff(&got, &want);
            assert!(diff <= 1e-4, "{name} {key}: max abs diff {diff} > 1e-4");
        }
    }
}

/// `y + (x·Aᵀ)·(Bᵀ·scale)` on the rows `rows` of `y`, through burn, from the factors'
/// values as the kernel stores them (rounded to bf16 first when `bf16`).
#[allow(clippy::too_many_arguments)]
fn burn_lora(
    x: &[f32],
    y: &[f32],
    rows: &[usize],
    a: &[f32],
    b: &[f32],
    [r, k, n]: [usize; 3],
    scale: f32,
    bf16: bool,
) -> Vec<f32> {
    let round = |v: f32| {
        if bf16 {
            half::bf16::from_f32(v).to_f32()
        } else {
            v
        }
    };
    let at: Vec<f32> = (0..k * r).map(|i| round(a[(i % r) * k + i / r])).collect();
    let bt: Vec<f32> = (0..r * n)
        .map(|i| round(b[(i % n) * r + i / n] * scale))
        .collect();
    let xs: Vec<f32> = rows
        .iter()
        .flat_map(|&row| x[row * k..(row + 1) * k].to_vec())
        .collect();
    let t = burn_matmul(&xs, rows.len(), &at, k, r);
    let d = burn_matmul(&t, rows.len(), &bt, r, n);
    let mut want = y.to_vec();
    for (i, &row) in rows.iter().enumerate() {
        for j in 0..n {
            want[row * n + j] += d[i * n + j];
        }
    }
    want
}

/// The host LoRA kernel adds `(x·Aᵀ)·(Bᵀ·scale)` into exactly the given rows, as burn's two
/// matmuls compute it: ranks that need padding, `in` with a tail past the 16-lane chunks,
/// 1–20 rows taken contiguously or scattered, f32 and bf16 factors, SIMD and portable.
#[test]
fn lora_factors_add_the_delta_burn_computes() {
    let (k, n, m) = (70, 100, 20);
    for r in [1, 4, 6, 16] {
        let a = random(r * k, 40 + r as u64);
        let b = random(n * r, 50 + r as u64);
        let scale = 1.5;
        let x = random(m * k, 60);
        let y0 = random(m * n, 61);
        let row_sets: Vec<Vec<usize>> = vec![
            vec![0],
            vec![7],
            (0..3).collect(),
            (2..10).collect(),
            (0..m).collect(),
            vec![1, 4, 5, 11, 19],
            vec![18, 3],
        ];
        for bf16 in [false, true] {
            let f = LoraFactors::new(&a, &b, [r, k, n], scale, bf16);
            assert_eq!(f.dims(), [r, k, n]);
            assert_eq!(f.is_bf16(), bf16);
            for rows in &row_sets {
                let want = burn_lora(&x, &y0, rows, &a, &b, [r, k, n], scale, bf16);
                for simd in simd_modes() {
                    let mut got = y0.clone();
                    f.add_delta_with(&x, &mut got, rows, simd);
                    let diff = max_abs_diff(&got, &want);
                    assert!(
                        diff <= 1e-4,
                        "r={r} bf16={bf16} rows={rows:?} simd={simd}: max abs diff {diff}"
                    );
                    // Rows outside the group are untouched.
                    for row in (0..m).filter(|row| !rows.contains(row)) {
                        assert_eq!(got[row * n..(row + 1) * n], y0[row * n..(row + 1) * n]);
                    }
                }
            }
        }
    }
}

/// bf16 factors take half the bytes of f32 ones and round them.
#[test]
fn bf16_lora_factors_are_half_the_size() {
    let (r, k, n) = (16, 64, 96);
    let (a, b) = (random(r * k, 70), random(n * r, 71));
    let f32s = LoraFactors::new(&a, &b, [r, k, n], 2.0, false);
    let bf16s = LoraFactors::new(&a, &b, [r, k, n], 2.0, true);
    assert_eq!(f32s.resident_bytes(), (r * k + r * n) * 4);
    assert_eq!(bf16s.resident_bytes() * 2, f32s.resident_bytes());
    let x = random(k, 72);
    let (mut y32, mut y16) = (vec![0.0; n], vec![0.0; n]);
    f32s.add_delta(&x, &mut y32, &[0]);
    bf16s.add_delta(&x, &mut y16, &[0]);
    let diff = max_abs_diff(&y32, &y16);
    assert!(diff > 0.0 && diff < 0.05 * y32.iter().fold(0f32, |a, v| a.max(v.abs())));
}
