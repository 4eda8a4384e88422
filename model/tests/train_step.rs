//! The training step against the reference: loss, every adapter gradient, every adapter
//! tensor after one AdamW step; plus accumulation, save/resume and schedule behaviour.
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
use tributary_model::decoder::CausalLm;
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};
use tributary_model::precision::Precision;
use tributary_model::train::{Schedule, TrainConfig, TrainExample, Trainer};

fn setup(name: &str) -> (CausalLm, LoraAdapter, Vec<TrainExample>) {
    let dev = device();
    let model = CausalLm::load(&model_dir(name), &dev).expect("load model");
    let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
        .expect("load adapter");
    (model, adapter, fixture_examples(name))
}

/// ‖grad − reference‖ / ‖reference‖ per adapter tensor.
const GRAD_TOL: f32 = 1e-4;

fn fixture_config() -> TrainConfig {
    fixture_train_config(Precision::F32)
}

#[test]
fn loss_gradients_and_adamw_step_match_reference() {
    for name in MODELS {
        let (model, adapter, examples) = setup(name);
        let reference = reference(name);
        let want_loss = reference_json(name)["train_step"]["loss"]
            .as_f64()
            .expect("loss") as f32;
        let mut trainer =
            Trainer::from_adapter(&model, adapter.clone(), fixture_config()).expect("trainer");

        let grads = trainer.compute_gradients(&examples, 0).expect("gradients");
        let loss = (grads.loss_sum / grads.tokens as f64) as f32;
        assert!(
            (loss - want_loss).abs() < 1e-4,
            "{name}: loss {loss} vs {want_loss}"
        );
        let mean = grads.mean_as_adapter(&adapter);
        let (worst, got_grads) = check_gradients(name, &mean, &reference, GRAD_TOL);
        eprintln!("{name}: loss {loss} (ref {want_loss}), worst gradient rel err {worst:e}");

        let stats = trainer.apply_gradients(grads).expect("step");
        assert_eq!(stats.step, 1);
        assert!((stats.loss - want_loss).abs() < 1e-4);
        let (worst, worst_unexplained) =
            check_after_first_step(name, &trainer.adapter(), &reference, &got_grads);
        eprintln!(
            "{name}: worst after-step abs diff {worst:e}, {worst_unexplained:e} beyond what the \
             gradient differences explain"
        );
    }
}

#[test]
fn train_step_equals_compute_then_apply() {
    let (model, adapter, examples) = setup("tiny-llama");
    let mut a = Trainer::from_adapter(&model, adapter.clone(), fixture_config()).expect("trainer");
    let mut b = Trainer::from_adapter(&model, adapter, fixture_config()).expect("trainer");
    let sa = a.train_step(std::slice::from_ref(&examples)).expect("step");
    let g = b.compute_gradients(&examples, 0).expect("grads");
    let sb = b.apply_gradients(g).expect("apply");
    assert_eq!(sa, sb);
    for ((_, _, ma), (_, _, mb)) in a.adapter().iter().zip(b.adapter().iter()) {
        assert_eq!(values(&ma.a), values(&mb.a));
        assert_eq!(values(&ma.b), values(&mb.b));
    }
}

#[test]
fn accumulating_two_micro_batches_equals_one_batch() {
    for name in MODELS {
        let (model, adapter, examples) = setup(name);
        let mut cfg = fixture_config();
        cfg.max_grad_norm = Some(1.0);
        cfg.weight_decay = 0.01;
        let mut one = Trainer::from_adapter(&model, adapter.clone(), cfg.clone()).expect("trainer");
        let mut two = Trainer::from_adapter(&model, adapter, cfg).expect("trainer");
        // Uneven lengths make the per-micro-batch token counts differ.
        let mut ex = examples.clone();
        ex[0].input_ids.truncate(9);
        ex[0].labels.truncate(9);
        for _ in 0..2 {
            let s1 = one.train_step(&[ex.clone()]).expect("one batch");
            let s2 = two
                .train_step(&[vec![ex[0].clone()], vec![ex[1].clone()]])
                .expect("two micro-batches");
            assert_eq!(s1.tokens, s2.tokens);
            assert!(
                (s1.loss - s2.loss).abs() < 1e-5,
                "{name}: loss {} vs {}",
                s1.loss,
                s2.loss
            );
            assert!((s1.grad_norm - s2.grad_norm).abs() < 1e-4 * s1.grad_norm.max(1.0));
        }
        for ((_, _, m1), (_, _, m2)) in one.adapter().iter().zip(two.adapter().iter()) {
            assert!(
                max_abs_diff(&values(&m1.a), &values(&m2.a)) < 1e-5,
                "{name}: A differs"
            );
            assert!(
                max_abs_diff(&values(&m1.b), &values(&m2.b)) < 1e-5,
                "{name}: B differs"
            );
        }
    }
}

#[test]
fn save_and_resume_continue_bit_identically() {
    let (model, _, examples) = setup("tiny-qwen2");
    let mut lora = LoraConfig::new(4, 8.0, &TargetModule::ALL);
    lora.lora_dropout = 0.1;
    let cfg = TrainConfig {
        lr: 5e-3,
        warmup_steps: 2,
        schedule: Schedule::Cosine,
        total_steps: 6,
        max_grad_norm: Some(0.5),
        weight_decay: 0.01,
        seed: 7,
        ..TrainConfig::default()
    };
    let mut straight = Trainer::new(&model, lora, cfg).expect("trainer");
    let batches = [vec![examples[0].clone()], vec![examples[1].clone()]];
    for _ in 0..2 {
        straight.train_step(&batches).expect("step");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    straight.save_checkpoint(&ckpt).expect("save");
    let mut resumed = Trainer::resume(&ckpt, &model).expect("resume");
    assert_eq!(resumed.step(), 2);
    for _ in 0..3 {
        let a = straight.train_step(&batches).expect("step");
        let b = resumed.train_step(&batches).expect("step");
        assert_eq!(a, b, "stats diverge after resume");
    }
    for ((_, _, m1), (_, _, m2)) in straight.adapter().iter().zip(resumed.adapter().iter()) {
        assert_eq!(values(&m1.a), values(&m2.a));
        assert_eq!(values(&m1.b), values(&m2.b));
    }
    // Resuming on another base is refused.
    let other = CausalLm::load(&model_dir("tiny-llama"), &device()).expect("other base");
    let e = Trainer::resume(&ckpt, &other)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("another base model"), "{e}");
    // Evaluation uses the trained adapter and gives a finite loss.
    let eval = resumed.eval_loss(&examples).expect("eval");
    assert!(eval.is_finite());
}

#[test]
fn training_lowers_the_loss() {
    let (model, _, examples) = setup("tiny-llama");
    let lora = LoraConfig::new(8, 16.0, &TargetModule::ALL);
    let cfg = TrainConfig {
        lr: 1e-2,
        schedule: Schedule::Constant,
        max_grad_norm: Some(1.0),
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(&model, lora, cfg).expect("trainer");
    let before = t.eval_loss(&examples).expect("eval");
    for _ in 0..15 {
        t.train_step(std::slice::from_ref(&examples)).expect("step");
    }
    let after = t.eval_loss(&examples).expect("eval");
    assert!(after < before - 0.5, "loss went from {before} to {after}");
}

#[test]
fn dropout_masks_do_not_depend_on_batching_or_padding() {
    let (model, mut adapter, examples) = setup("tiny-llama");
    adapter.config.lora_dropout = 0.2;
    let mut ex = examples;
    ex[0].input_ids.truncate(8);
    ex[0].labels.truncate(8);
    let t = Trainer::from_adapter(&model, adapter.clone(), fixture_config()).expect("trainer");
    let mut whole = t.compute_gradients(&ex, 0).expect("one batch");
    let mut split = t.compute_gradients(&ex[..1], 0).expect("first");
    split
        .accumulate(&t.compute_gradients(&ex[1..], 1).expect("second"))
        .expect("add");
    assert!((whole.loss_sum - split.loss_sum).abs() < 1e-4 * whole.loss_sum.abs());
    let a = whole.mean_as_adapter(&adapter);
    let b = split.mean_as_adapter(&adapter);
    for ((_, _, ma), (_, _, mb)) in a.iter().zip(b.iter()) {
        assert!(rel_err(&values(&ma.a), &values(&mb.a)) < 1e-4);
        assert!(rel_err(&values(&ma.b), &values(&mb.b)) < 1e-4);
    }
    // Dropout is really applied: without it the loss differs.
    adapter.config.lora_dropout = 0.0;
    let t0 = Trainer::from_adapter(&model, adapter, fixture_config()).expect("trainer");
    let plain = t0.compute_gradients(&ex, 0).expect("no dropout");
    assert!((plain.loss_sum - whole.loss_sum).abs() > 1e-3);
    // Another example index gives another mask.
    whole = t.compute_gradients(&ex, 5).expect("shifted");
    assert!((whole.loss_sum - split.loss_sum).abs() > 1e-4);
}

#[test]
fn schedule_and_grad_norm_are_reported() {
    let (model, adapter, examples) = setup("tiny-llama");
    let cfg = TrainConfig {
        lr: 1e-2,
        warmup_steps: 2,
        total_steps: 4,
        schedule: Schedule::Linear,
        max_grad_norm: Some(1e-3),
        ..fixture_config()
    };
    let mut t = Trainer::from_adapter(&model, adapter.clone(), cfg).expect("trainer");
    let g = t.compute_gradients(&examples, 0).expect("grads");
    let mean = g.mean_as_adapter(&adapter);
    let want: f64 = mean
        .iter()
        .flat_map(|(_, _, m)| [values(&m.a), values(&m.b)])
        .flatten()
        .map(|v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt();
    let lrs: Vec<f64> = (0..5)
        .map(|_| {
            let s = t.train_step(std::slice::from_ref(&examples)).expect("step");
            if s.step == 1 {
                assert!(
                    (f64::from(s.grad_norm) - want).abs() < 1e-4 * want,
                    "grad norm {} vs {want}",
                    s.grad_norm
                );
            }
            s.lr
        })
        .collect();
    assert_eq!(lrs, vec![0.0, 5e-3, 1e-2, 5e-3, 0.0]);
}
