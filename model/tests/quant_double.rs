//! Double quantization of NF4's absmax scales: the round trip's error bound (half an 8-bit
//! step of each block of 256 scales) and the bits per weight it brings NF4 down to.

use burn::tensor::{Distribution, Tensor};
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
