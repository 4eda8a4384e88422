//! Training with activation recomputation (`TrainConfig::recompute`, `decoder/recompute.rs`)
//! gives the loss and LoRA gradients of training without it, and the lm_head + loss taken in
//! blocks of positions (`train::chunked_nll`) gives the loss and hidden-state gradient of
//! one block: both on the fixtures, f32 and NF4 bases, with and without LoRA dropout.
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
use common::*;
use tributary_model::decoder::CausalLm;
use tributary_model::lora::LoraAdapter;
use tributary_model::train::{
    TrainConfig, TrainExample, Trainer, chunked_nll, collate, loss_chunk_rows,
};

/// Mean loss and mean-loss gradients of one micro-batch of the fixture's examples.
fn gradients(
    model: &CausalLm,
    adapter: &LoraAdapter,
    examples: &[TrainExample],
    recompute: bool,
) -> (f64, LoraAdapter) {
    let cfg = TrainConfig {
        batch_size: examples.len(),
        max_grad_norm: None,
        recompute,
        seed: 3,
        ..TrainConfig::default()
    };
    let tr = Trainer::from_adapter(model, adapter.clone(), cfg).expect("trainer");
    let g = tr.compute_gradients(examples, 0).expect("gradients");
    (g.loss_sum / g.tokens as f64, g.mean_as_adapter(adapter))
}

#[test]
fn recomputation_gives_the_same_loss_and_gradients() {
    for name in MODELS {
        let dev = device();
        let f32_model = CausalLm::load(&model_dir(name), &dev).expect("load");
        let mut nf4 = f32_model.clone();
        nf4.quantize_nf4().expect("quantize");
        let examples = fixture_examples(name);
        for (base, model) in [("f32", &f32_model), ("nf4", &nf4)] {
            for dropout in [0.0, 0.2] {
                let mut adapter =
                    LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
                        .expect("adapter");
                adapter.config.lora_dropout = dropout;
                let (loss_kept, kept) = gradients(model, &adapter, &examples, false);
                let (loss_re, re) = gradients(model, &adapter, &examples, true);
                let what = format!("{name}, {base} base, dropout {dropout}");
                assert!(
                    (loss_kept - loss_re).abs() <= 1e-6 * loss_kept.abs(),
                    "{what}: loss {loss_kept} vs {loss_re}"
                );
                let mut worst = 0.0f32;
                let mut modules = 0;
                for ((l, t, a), (_, _, b)) in kept.iter().zip(re.iter()) {
                    for (x, y) in [(&a.a, &b.a), (&a.b, &b.b)] {
                        let (x, y) = (values(x), values(y));
                        assert!(y.iter().any(|v| *v != 0.0), "{what}: layer {l} {t:?} zero");
                        let e = rel_err(&y, &x);
                        worst = worst.max(e);
                        assert!(e <= 1e-5, "{what}: layer {l} {t:?} grad rel err {e}");
                    }
                    modules += 1;
                }
                assert_eq!(modules, adapter.iter().count(), "{what}");
                eprintln!("{what}: loss {loss_kept:.7}, worst gradient rel err {worst:.2e}");
            }
        }
    }
}

#[test]
fn the_loss_in_blocks_of_positions_equals_one_block() {
    for name in MODELS {
        let dev = device();
        let model = CausalLm::load(&model_dir(name), &dev).expect("load");
        let ad = model.to_autodiff();
        let examples = fixture_examples(name);
        let vocab = model.config().vocab_size;
        let c = collate(&examples, 0, vocab).expect("collate");
        let n = c.tokens();
        // The fixtures' vocabulary is small: every position fits one block by default.
        assert!(loss_chunk_rows(vocab) >= n);
        let [b, s] = [c.input_ids.len(), c.input_ids[0].len()];
        let h = model.config().hidden_size;
        let hidden: Tensor<3> = Tensor::random([b, s, h], Distribution::Normal(0.0, 1.0), &dev);
        let run = |rows: usize| {
            let leaf = hidden.clone().autodiff().require_grad();
            let (loss, scalar) = chunked_nll(&ad, leaf.clone(), &c, rows, true).expect("loss");
            let grads = scalar.backward();
            let g = leaf.grad(&grads).expect("hidden gradient");
            let (untracked, _) =
                chunked_nll(&model, hidden.clone(), &c, rows, false).expect("eval");
            assert!(
                (loss - untracked).abs() <= 1e-6 * loss.abs(),
                "{name}: eval loss"
            );
            (loss, values(&g))
        };
        let (loss_one, g_one) = run(n);
        for rows in [1, 3, n - 1] {
            let (loss, g) = run(rows);
            assert!(
                (loss - loss_one).abs() <= 1e-6 * loss_one.abs(),
                "{name}, {rows} rows: {loss} vs {loss_one}"
            );
            let e = rel_err(&g, &g_one);
            assert!(e <= 1e-6, "{name}, {rows} rows: gradient rel err {e}");
        }
        // Positions that are not supervised get no gradient.
        assert!(g_one.iter().any(|v| *v != 0.0));
    }
}
