//! NF4 (QLoRA) storage of the frozen base: the code book against the paper, block absmax
//! scaling, packed size, the logits' deviation from f32 on the fixtures, and training on
//! an NF4 base.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use common::*;
use tributary_model::decoder::{CausalLm, LinearWeight};
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};
use tributary_model::quant::{NF4_BLOCK, NF4_CODE, Nf4Matrix, nf4_index};
use tributary_model::train::{TrainConfig, TrainExample, Trainer};

/// The NF4 data type as printed in the QLoRA paper (Dettmers et al. 2023, Appendix E).
#[allow(clippy::excessive_precision)]
const PAPER_NF4: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

#[test]
fn code_book_is_the_papers_and_round_trips_exactly() {
    assert_eq!(NF4_CODE, PAPER_NF4);
    // One block holding every code value (times 1, then times 3.5): each comes back exactly,
    // with its own index.
    for scale in [1.0f32, 3.5] {
        let mut values: Vec<f32> = PAPER_NF4.iter().map(|c| c * scale).collect();
        values.extend(PAPER_NF4.iter().rev().map(|c| c * scale));
        let q = Nf4Matrix::quantize(&values, [2, 16]).expect("quantize");
        assert_eq!(q.scales(), &[scale]);
        assert_eq!(q.dequantize(), values, "scale {scale}");
        for i in 0..16 {
            assert_eq!(usize::from(q.code(i)), i);
            assert_eq!(usize::from(q.code(31 - i)), i);
        }
    }
    // Nearest level: just either side of the midpoint between two levels.
    for i in 0..15 {
        let mid = 0.5 * (PAPER_NF4[i] + PAPER_NF4[i + 1]);
        assert_eq!(usize::from(nf4_index(mid - 1e-4)), i);
        assert_eq!(usize::from(nf4_index(mid + 1e-4)), i + 1);
    }
}

#[test]
fn each_block_has_its_own_absmax() {
    // Three blocks: small values, large values with a negative maximum, all zeros; plus a
    // short last block (the matrix is not a multiple of 64 long).
    let n = 3 * NF4_BLOCK + 5;
    let mut values = vec![0.0f32; n];
    for (i, v) in values.iter_mut().enumerate().take(NF4_BLOCK) {
        *v = ((i as f32) * 0.37).sin() * 0.01;
    }
    for (i, v) in values
        .iter_mut()
        .enumerate()
        .skip(NF4_BLOCK)
        .take(NF4_BLOCK)
    {
        *v = ((i as f32) * 0.91).cos() * 4.0;
    }
    values[NF4_BLOCK + 7] = -9.0;
    for (i, v) in values.iter_mut().enumerate().skip(3 * NF4_BLOCK) {
        *v = i as f32 - 192.0;
    }
    let q = Nf4Matrix::quantize(&values, [1, n]).expect("quantize");
    let absmax = |r: std::ops::Range<usize>| values[r].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_eq!(q.scales().len(), 4);
    assert_eq!(q.scales()[0], absmax(0..NF4_BLOCK));
    assert_eq!(q.scales()[1], 9.0);
    assert_eq!(q.scales()[2], 0.0);
    assert_eq!(q.scales()[3], 4.0);
    let back = q.dequantize();
    assert_eq!(back.len(), n);
    assert_eq!(back[NF4_BLOCK + 7], -9.0, "the block maximum is exact");
    assert!(back[2 * NF4_BLOCK..3 * NF4_BLOCK].iter().all(|&v| v == 0.0));
    // Every value is within half the widest gap of the code book, times its block's scale.
    let half_gap = PAPER_NF4
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f32, f32::max)
        / 2.0;
    for (i, (a, b)) in values.iter().zip(&back).enumerate() {
        let scale = q.scales()[i / NF4_BLOCK];
        assert!(
            (a - b).abs() <= half_gap * scale * 1.0001,
            "value {i}: {a} came back as {b}"
        );
    }
    // The small block is not crushed by the large one.
    assert!(back[..NF4_BLOCK].iter().any(|&v| v != 0.0));
    assert!(Nf4Matrix::quantize(&[f32::NAN; 4], [2, 2]).is_err());
    assert!(Nf4Matrix::quantize(&[0.0; 3], [2, 2]).is_err());
}

#[test]
fn nf4_base_is_small_and_its_logits_stay_close() {
    for name in MODELS {
        let dev = device();
        let model = CausalLm::load(&model_dir(name), &dev).expect("load");
        let mut q = model.clone();
        q.quantize_nf4().expect("quantize");
        assert!(
            q.layers
                .iter()
                .flat_map(|l| TargetModule::ALL.map(|t| l.linear(t).weight_t.clone()))
                .all(|w| matches!(w, LinearWeight::Nf4(_)))
        );
        let ratio = q.linear_weight_bytes() as f64 / model.linear_weight_bytes() as f64;
        eprintln!("{name}: NF4 base linears take {ratio:.4}× their f32 bytes");
        assert!(ratio <= 0.3, "{name}: {ratio}");

        let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
            .expect("adapter");
        let rows = input_rows(name);
        for lora in [None, Some(&adapter)] {
            let want = values(&model.forward(ids_tensor(&rows, &dev), &[], lora, None));
            let got = values(&q.forward(ids_tensor(&rows, &dev), &[], lora, None));
            let diff = max_abs_diff(&got, &want);
            let rel = rel_err(&got, &want);
            let v = model.config().vocab_size;
            let agree = want
                .chunks(v)
                .zip(got.chunks(v))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count() as f64
                / (want.len() / v) as f64;
            eprintln!(
                "{name} lora={}: max abs diff {diff:e}, rel {rel:.4}, top-1 agreement {agree:.3}",
                lora.is_some()
            );
            assert!(diff > 0.0, "quantization changed nothing");
            // NF4's RMS error on N(0,1) weights is about 10% of their scale per matmul;
            // eight of them in a row leave the logits well within 25% relative error.
            assert!(rel < 0.25, "{name}: relative logits error {rel}");
            assert!(agree >= 0.5, "{name}: top-1 agreement {agree}");
        }
    }
}

#[test]
fn loading_into_nf4_equals_quantizing_after_loading() {
    for name in MODELS {
        let dev = device();
        let mut after = CausalLm::load(&model_dir(name), &dev).expect("load");
        after.quantize_nf4().expect("quantize");
        let direct = CausalLm::load_nf4(&model_dir(name), &dev).expect("load_nf4");
        assert_eq!(direct.linear_weight_bytes(), after.linear_weight_bytes());
        for (la, lb) in direct.layers.iter().zip(&after.layers) {
            for t in TargetModule::ALL {
                match (&la.linear(t).weight_t, &lb.linear(t).weight_t) {
                    (LinearWeight::Nf4(a), LinearWeight::Nf4(b)) => {
                        assert_eq!(a, b, "{name} {t:?}")
                    }
                    _ => panic!("{name} {t:?} is not NF4"),
                }
            }
        }
    }
}

#[test]
fn training_on_an_nf4_base_lowers_the_loss() {
    let name = "tiny-llama";
    let dev = device();
    let mut model = CausalLm::load(&model_dir(name), &dev).expect("load");
    model.quantize_nf4().expect("quantize");
    let examples: Vec<TrainExample> = input_rows(name)
        .into_iter()
        .map(TrainExample::causal)
        .collect();
    let cfg = TrainConfig {
        lr: 1e-2,
        total_steps: 20,
        batch_size: examples.len(),
        max_grad_norm: None,
        ..TrainConfig::default()
    };
    let lora = LoraConfig::new(8, 16.0, &TargetModule::ALL);
    let mut trainer = Trainer::new(&model, lora, cfg).expect("trainer");
    let before = trainer.eval_loss(&examples).expect("eval");
    for _ in 0..10 {
        trainer
            .train_step(std::slice::from_ref(&examples))
            .expect("step");
    }
    let after = trainer.eval_loss(&examples).expect("eval");
    eprintln!("NF4 base: loss {before} -> {after}");
    assert!(
        after.is_finite() && after < 0.9 * before,
        "{before} -> {after}"
    );
}
