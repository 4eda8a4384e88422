//! Double quantization of NF4's absmax scales: the round trip's error bound (half an 8-bit
//! step of each block of 256 scales) and the bits per weight it brings NF4 down to.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use burn::tensor::{Distribution, Tensor};
use common::{ids_tensor, input_rows, model_dir, values};
use tributary_model::device::cpu_device;
use tributary_model::quant::{NF4_BLOCK, Nf4Matrix};
use tributary_model::quant_double::{DoubleQuantScales, SCALE_BLOCK};

fn nf4_of_random(rows: usize, cols: usize) -> Nf4Matrix {
    let w: Tensor<2> = Tensor::random([rows, cols], Distribution::Normal(0.0, 0.02), &cpu_device());
    Nf4Matrix::from_tensor(&w, "w").expect("quantize")
}

#[test]
fn scales_round_trip_within_half_a_step_per_block() {
    // 256×640 values → 2560 scales: ten blocks of 256.
    let q = nf4_of_random(256, 640);
    let scales = q.scales();
    let d = DoubleQuantScales::quantize(scales).expect("double quantize");
    assert_eq!(d.len(), scales.len());
    assert_eq!(d.steps().len(), scales.len().div_ceil(SCALE_BLOCK));
    let back = d.dequantize();
    let mean = scales.iter().map(|&s| f64::from(s)).sum::<f64>() / scales.len() as f64;
    let mut worst = 0.0f32;
    for ((block, got), &step) in scales
        .chunks(SCALE_BLOCK)
        .zip(back.chunks(SCALE_BLOCK))
        .zip(d.steps())
    {
        let absmax = block
            .iter()
            .fold(0.0f64, |m, &s| m.max((f64::from(s) - mean).abs()));
        assert!(
            (f64::from(step) - absmax / 127.0).abs() <= 1e-6 * absmax,
            "step of a block"
        );
        for (&s, &g) in block.iter().zip(got) {
            let err = (s - g).abs();
            worst = worst.max(err / s);
            assert!(
                err <= 0.5 * step + 1e-6 * s,
                "{s} came back as {g} (step {step})"
            );
        }
    }
    assert!(back != scales, "quantization changed nothing");
    eprintln!("worst relative scale error {worst:e}");
}

#[test]
fn double_quantization_takes_nf4_from_4_5_to_about_4_127_bits_per_weight() {
    let (rows, cols) = (512, 1024);
    let q = nf4_of_random(rows, cols);
    let n = (rows * cols) as f64;
    let nf4_bits = q.resident_bytes() as f64 * 8.0 / n;
    let d = DoubleQuantScales::quantize(q.scales()).expect("double quantize");
    let dq_bits = (q.packed().len() + d.resident_bytes()) as f64 * 8.0 / n;
    eprintln!("NF4 {nf4_bits:.4} bits/weight, with double quantization {dq_bits:.4}");
    assert!((nf4_bits - (4.0 + 32.0 / NF4_BLOCK as f64)).abs() < 1e-9);
    let want = 4.0 + 8.0 / NF4_BLOCK as f64 + 32.0 / (NF4_BLOCK * SCALE_BLOCK) as f64;
    assert!((dq_bits - want).abs() < 1e-3, "{dq_bits} vs {want}");
}

#[test]
fn a_non_finite_scale_is_refused() {
    let err = DoubleQuantScales::quantize(&[1.0, f32::NAN]).expect_err("NaN scale");
    assert!(err.to_string().contains("scale"), "{err}");
}

#[test]
fn the_fused_kernel_and_dequantize_use_the_decoded_scales() {
    use tributary_model::kernels::nf4_matmul_with;
    let q = nf4_of_random(128, 192);
    let dq = q.double_quantize().expect("double quantize");
    assert!(dq.is_double_quantized() && !q.is_double_quantized());
    assert!(dq.resident_bytes() < q.resident_bytes());
    // The dequantized matrix is the NF4 codes times the decoded scales.
    let scales = DoubleQuantScales::quantize(q.scales())
        .expect("scales")
        .dequantize();
    let want: Vec<f32> = (0..128 * 192)
        .map(|i| tributary_model::quant::NF4_CODE[usize::from(q.code(i))] * scales[i / NF4_BLOCK])
        .collect();
    let got = dq.dequantize();
    assert_eq!(got, want);
    assert_ne!(got, q.dequantize(), "the scales' rounding shows");
    // The fused kernel (both paths) agrees with x·(dequantized Wᵀ).
    let m = 3;
    let x: Vec<f32> = (0..m * 128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut reference = vec![0.0f64; m * 192];
    for r in 0..m {
        for k in 0..128 {
            for c in 0..192 {
                reference[r * 192 + c] += f64::from(x[r * 128 + k]) * f64::from(want[k * 192 + c]);
            }
        }
    }
    for simd in [false, true] {
        let y = nf4_matmul_with(&dq, &x, m, simd).expect("fusable");
        let worst = y
            .iter()
            .zip(&reference)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "simd {simd}: {worst}");
    }
}

#[test]
fn a_double_quantized_model_stays_close_to_nf4_and_needs_an_nf4_base() {
    use tributary_model::decoder::CausalLm;
    use tributary_model::quant_double::double_quantize_model;
    let dir = model_dir("tiny-llama");
    let dev = cpu_device();
    let mut dense = CausalLm::load(&dir, &dev).expect("load");
    let err = double_quantize_model(&mut dense).expect_err("f32 base");
    assert!(err.to_string().contains("NF4"), "{err}");
    let nf4 = CausalLm::load_nf4(&dir, &dev).expect("load_nf4");
    let mut dq = nf4.clone();
    double_quantize_model(&mut dq).expect("double quantize");
    let ratio = dq.linear_weight_bytes() as f64 / nf4.linear_weight_bytes() as f64;
    assert!(ratio < 0.95, "{ratio}");
    let rows = input_rows("tiny-llama");
    let a = values(&nf4.forward(ids_tensor(&rows, &dev), &[], None, None));
    let b = values(&dq.forward(ids_tensor(&rows, &dev), &[], None, None));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    eprintln!("double-quantized vs NF4 logits: max abs diff {diff:e}, bytes {ratio:.4}×");
    assert!(diff > 0.0 && diff < 0.05, "{diff}");
}
