//! The host decode kernels (`tributary_model::kernels`) against burn's matmul on the same
//! values, both the AVX-512 path (when this CPU has it) and the portable one; the bf16 model
//! against the f32 model and the reference logits on the fixtures; the NF4 fused kernel
//! against the dequantized matrix.

mod common;

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tributary_model::decoder::{CausalLm, Linear, LinearWeight};
use tributary_model::kernels::{PackedMatrix, nf4_fusable, nf4_matmul_with, simd_available};
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
        eprintln!("no AVX-512 on this CPU: only the portable kernels are checked");
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
    let (k, n) = (70, 192);
    let q = Nf4Matrix::quantize(&random(k * n, 3), [k, n]).expect("quantize");
    assert!(nf4_fusable(&q));
    let dense = q.dequantize();
    for m in [1, 4, 5, 11] {
        let x = random(m * k, 20 + m as u64);
        let want = burn_matmul(&x, m, &dense, k, n);
        for simd in simd_modes() {
            let got = nf4_matmul_with(&q, &x, m, simd).expect("fusable");
            let diff = max_abs_diff(&got, &want);
            assert!(diff <= 1e-4, "m={m} simd={simd}: max abs diff {diff}");
        }
    }
    // Blocks that straddle rows of Wᵀ (100 columns) are left to the dequantizing path.
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
