//! Per-example LoRA gradient features (`tributary_model::features`) on the fixture models:
//! the per-example gradients add up to the reference (PyTorch) batch gradient, match a
//! finite difference of the loss, equal a one-example `Trainer::compute_gradients`, the
//! batched ones (one pass over a padded micro-batch, expanded weights) equal the one-example
//! ones and sum to the reference too, the index keeps each example's own features, and the
//! projected index scores like the exact one.
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
use tributary_attribution::score::{Method, scores};
use tributary_attribution::{Projection, metrics};
use tributary_model::decoder::CausalLm;
use tributary_model::features::{CheckpointAdapter, GradientFeaturizer, build_index};
use tributary_model::lora::LoraAdapter;
use tributary_model::peft::peft_key;
use tributary_model::train::{TrainConfig, TrainExample, Trainer};

fn setup(name: &str) -> (CausalLm, LoraAdapter, Vec<TrainExample>) {
    let dev = device();
    let model = CausalLm::load(&model_dir(name), &dev).expect("load model");
    let mut adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
        .expect("load adapter");
    adapter.config.lora_dropout = 0.0;
    (model, adapter, fixture_examples(name))
}

/// The reference's batch-mean gradient, flattened in the features' order.
fn reference_gradient(name: &str, adapter: &LoraAdapter) -> Vec<f32> {
    let r = reference(name);
    let _ = peft_key; // the reference keys follow PEFT's module paths
    let mut out = Vec::new();
    for (layer, t, _) in adapter.iter() {
        for which in ['A', 'B'] {
            let key = format!("grad.{}.lora_{which}.default.weight", t.path(layer));
            out.extend(r.get_f32(&key).expect("grad key").1);
        }
    }
    out
}

#[test]
fn per_example_gradients_sum_to_the_reference_batch_gradient() {
    for name in MODELS {
        let (model, adapter, examples) = setup(name);
        let f = GradientFeaturizer::new(&model, &adapter).expect("featurizer");
        let want = reference_gradient(name, &adapter);
        assert_eq!(f.layout().len(), want.len(), "{name}: layout");
        let mut total = vec![0.0f32; want.len()];
        let mut tokens = 0usize;
        for ex in &examples {
            let g = f.gradient(ex).expect("gradient");
            let n = ex.supervised_tokens();
            for (t, x) in total.iter_mut().zip(&g) {
                *t += x * n as f32;
            }
            tokens += n;
        }
        for t in &mut total {
            *t /= tokens as f32;
        }
        let e = rel_err(&total, &want);
        assert!(e < 1e-4, "{name}: relative error {e} against the reference");
    }
}

/// The reference rows and their shorter cuts (so that a micro-batch pads some rows a lot).
fn with_cuts(examples: &[TrainExample]) -> Vec<(String, TrainExample)> {
    let mut exs: Vec<(String, TrainExample)> = Vec::new();
    for (i, ex) in examples.iter().enumerate() {
        exs.push((format!("full{i}"), ex.clone()));
        let half = ex.input_ids.len() / 2 + 2;
        let cut = TrainExample {
            input_ids: ex.input_ids[..half].to_vec(),
            labels: ex.labels[..half].to_vec(),
        };
        if cut.supervised_tokens() > 0 {
            exs.push((format!("half{i}"), cut));
        }
    }
    exs
}

/// How far a batched per-example gradient may be from the one-example pass (relative L2
/// error): both are f32 with the same operations, only the matrix products add in another
/// order (padded rows, batched LoRA products); measured at most 7e-7 on the fixtures.
const BATCHED_TOLERANCE: f32 = 1e-5;

#[test]
fn batched_per_example_gradients_equal_one_example_passes_and_sum_to_the_reference() {
    for name in MODELS {
        let (model, adapter, examples) = setup(name);
        let f = GradientFeaturizer::new(&model, &adapter).expect("featurizer");
        // The reference batch itself, in one pass: its token-weighted sum is the reference's
        // batch gradient.
        let batched = f.gradients(&examples).expect("batched");
        assert_eq!(batched.len(), examples.len());
        let want = reference_gradient(name, &adapter);
        let mut total = vec![0.0f32; want.len()];
        let mut tokens = 0usize;
        for (ex, g) in examples.iter().zip(&batched) {
            let n = ex.supervised_tokens();
            for (t, x) in total.iter_mut().zip(g) {
                *t += x * n as f32;
            }
            tokens += n;
        }
        for t in &mut total {
            *t /= tokens as f32;
        }
        let e = rel_err(&total, &want);
        assert!(
            e < 1e-4,
            "{name}: batched sum, relative error {e} against the reference"
        );

        // Rows of different lengths in one micro-batch: each row is its own example's
        // gradient, padding or not.
        let mixed: Vec<TrainExample> = with_cuts(&examples).into_iter().map(|(_, e)| e).collect();
        assert!(
            mixed
                .iter()
                .any(|e| e.input_ids.len() != mixed[0].input_ids.len())
        );
        let batched = f.gradients(&mixed).expect("batched");
        let mut worst = 0.0f32;
        for (i, (ex, g)) in mixed.iter().zip(&batched).enumerate() {
            let one = f.gradient(ex).expect("one");
            assert!(
                one.iter().any(|x| *x != 0.0),
                "{name}: row {i} gradient is zero"
            );
            let e = rel_err(g, &one);
            worst = worst.max(e);
            assert!(e < BATCHED_TOLERANCE, "{name}: row {i}: relative error {e}");
        }
        eprintln!("{name}: batched vs one-example, worst relative error {worst:e}");
    }
}

#[test]
fn index_rows_are_each_examples_own_features() {
    // build_index batches examples by length, out of their order: each row of the exact
    // index must still be its own example's one-example gradient.
    let name = "tiny-llama";
    let (model, adapter, examples) = setup(name);
    let exs = with_cuts(&examples);
    let ck = vec![CheckpointAdapter {
        step: 1,
        lr: 1e-3,
        adapter: adapter.clone(),
    }];
    let (index, cost) = build_index(
        &model,
        &ck,
        &exs,
        Projection::Exact,
        serde_json::Value::Null,
    )
    .expect("index");
    assert_eq!(cost.gradients, exs.len());
    let f = GradientFeaturizer::new(&model, &adapter).expect("featurizer");
    for (i, (id, ex)) in exs.iter().enumerate() {
        assert_eq!(&index.header.example_ids[i], id);
        let row = index.feature(0, i);
        let one = f.gradient(ex).expect("one");
        let e = rel_err(row, &one);
        assert!(e < BATCHED_TOLERANCE, "{id}: relative error {e}");
    }
    // An example without completion tokens is refused, naming it.
    let mut bad = exs.clone();
    bad.push((
        "no-completion".into(),
        TrainExample {
            input_ids: vec![1, 2, 3],
            labels: vec![-100, -100, -100],
        },
    ));
    let err = build_index(
        &model,
        &ck,
        &bad,
        Projection::Exact,
        serde_json::Value::Null,
    )
    .expect_err("no supervised tokens");
    assert!(err.to_string().contains("no-completion"), "{err}");
}

#[test]
fn one_example_gradient_equals_compute_gradients_and_a_finite_difference() {
    let name = "tiny-llama";
    let (model, adapter, examples) = setup(name);
    let ex = &examples[0];
    let f = GradientFeaturizer::new(&model, &adapter).expect("featurizer");
    let g = f.gradient(ex).expect("gradient");

    let cfg = TrainConfig {
        batch_size: 1,
        ..TrainConfig::default()
    };
    let trainer = Trainer::from_adapter(&model, adapter.clone(), cfg).expect("trainer");
    let batch = trainer
        .compute_gradients(std::slice::from_ref(ex), 0)
        .expect("grads");
    let mut flat = Vec::new();
    for [a, b] in &batch.grads {
        flat.extend(values(a).into_iter().map(|x| x / batch.tokens as f32));
        flat.extend(values(b).into_iter().map(|x| x / batch.tokens as f32));
    }
    assert_eq!(g, flat, "one-example batch must give the same bits");

    // Central differences on the largest A and B entries of the first module.
    let first = adapter.iter().next().expect("a module").2.clone();
    let na = first.a.shape().num_elements();
    let nb = first.b.shape().num_elements();
    let argmax_abs = |s: &[f32]| {
        (0..s.len())
            .max_by(|&i, &j| s[i].abs().total_cmp(&s[j].abs()))
            .expect("nonempty")
    };
    let ia = argmax_abs(&g[..na]);
    let ib = argmax_abs(&g[na..na + nb]);
    for (which, i, analytic) in [('A', ia, g[ia]), ('B', ib, g[na + ib])] {
        let eps = 1e-2f32;
        let loss_with = |delta: f32| {
            let mut ad = adapter.clone();
            let (l, t, _) = {
                let (l, t, m) = ad.iter().next().expect("module");
                (l, t, m.clone())
            };
            let m = ad.module_mut(l, t).expect("module");
            let tensor = if which == 'A' { &mut m.a } else { &mut m.b };
            let mut v = values(tensor);
            v[i] += delta;
            let dims = tensor.dims();
            *tensor =
                burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v, dims), &device());
            GradientFeaturizer::new(&model, &ad)
                .expect("featurizer")
                .loss(ex)
                .expect("loss")
        };
        let numeric = (loss_with(eps) - loss_with(-eps)) / (2.0 * eps);
        let err = (numeric - analytic).abs() / analytic.abs().max(1e-6);
        assert!(
            err < 0.05,
            "{which}[{i}]: finite difference {numeric} vs gradient {analytic}"
        );
    }
}

#[test]
fn projected_index_ranks_like_the_exact_one() {
    let name = "tiny-qwen2";
    let (model, adapter, examples) = setup(name);
    // More examples: the reference rows and their halves.
    let exs = with_cuts(&examples);
    let ck = vec![CheckpointAdapter {
        step: 1,
        lr: 1e-3,
        adapter: adapter.clone(),
    }];
    let meta = serde_json::Value::Null;
    let (exact, _) =
        build_index(&model, &ck, &exs, Projection::Exact, meta.clone()).expect("exact");
    // a quarter of each layer's block
    let k = exact
        .header
        .gradient_layout
        .blocks
        .iter()
        .map(|b| b.1)
        .min()
        .expect("blocks")
        / 4;
    let (proj, cost) = build_index(
        &model,
        &ck,
        &exs,
        Projection::CountSketch { k, seed: 3 },
        meta,
    )
    .expect("proj");
    assert_eq!(cost.gradients, exs.len());
    assert!(proj.dims() < exact.dims());
    let q = exs[0].1.clone();
    let qe = tributary_model::features::query_features(&model, &[&adapter], &q, &exact).expect("q");
    let qp = tributary_model::features::query_features(&model, &[&adapter], &q, &proj).expect("q");
    let se = scores(&exact, &qe, Method::Tracin).expect("scores");
    let sp = scores(&proj, &qp, Method::Tracin).expect("scores");
    let rho = metrics::spearman(&se, &sp).expect("spearman");
    assert!(rho > 0.8, "rank correlation {rho}: {se:?} vs {sp:?}");
    // the query is example 0 itself: by cosine it is its own best match
    let cos = scores(&exact, &qe, Method::TracinCos).expect("scores");
    let best = (0..cos.len())
        .max_by(|&a, &b| cos[a].total_cmp(&cos[b]))
        .expect("some");
    assert_eq!(best, 0, "{cos:?}");
    assert!((cos[0] - 1e-3).abs() < 1e-6, "{}", cos[0]);
}

/// What one batched featurization pass costs against a training micro-batch of the same
/// examples, and against one-example passes, on SmolLM2-135M (ignored: needs the GGUF from
/// `scripts/fetch-smollm2.sh` and a minute; run with `--ignored --nocapture`). The demo's
/// adapter: r 8 on all seven projections, 8 chat-sized examples.
#[test]
#[ignore]
fn smollm2_batched_features_cost_about_a_training_micro_batch() {
    use std::time::Instant;
    use tributary_model::lora::{LoraConfig, TargetModule};
    let path = std::env::var("TRIBUTARY_SMOLLM2").map_or_else(
        |_| {
            std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/tributary/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        std::path::PathBuf::from,
    );
    let model = CausalLm::load(&path, &device()).expect("load SmolLM2");
    let cfg = TrainConfig {
        batch_size: 8,
        ..TrainConfig::default()
    };
    let lora = LoraConfig::new(8, 16.0, &TargetModule::ALL);
    let trainer = Trainer::new(&model, lora, cfg).expect("trainer");
    let adapter = trainer.adapter();
    // 8 examples of 40-64 tokens, the last 12 supervised (the demo's chats are this size).
    let examples: Vec<TrainExample> = (0..8)
        .map(|i| {
            let n = 40 + 3 * i;
            let ids: Vec<u32> = (0..n)
                .map(|t| ((t * 7919 + i * 104_729) % 40_000) as u32 + 100)
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(t, &x)| if t + 12 >= n { i64::from(x) } else { -100 })
                .collect();
            TrainExample {
                input_ids: ids,
                labels,
            }
        })
        .collect();
    let f = GradientFeaturizer::new(&model, &adapter).expect("featurizer");
    let time = |what: &str, run: &dyn Fn()| {
        run(); // warm-up
        let t0 = Instant::now();
        for _ in 0..3 {
            run();
        }
        let s = t0.elapsed().as_secs_f64() / 3.0;
        eprintln!("{what}: {:.3} s", s);
        s
    };
    let train = time("training micro-batch of 8 (compute_gradients)", &|| {
        trainer.compute_gradients(&examples, 0).expect("grads");
    });
    let batched = time("batched per-example gradients of 8", &|| {
        f.gradients(&examples).expect("batched");
    });
    let single = time("8 one-example passes", &|| {
        for ex in &examples {
            f.gradient(ex).expect("one");
        }
    });
    eprintln!(
        "batched / training = {:.2}, one-example / batched = {:.2}, load average {:?}",
        batched / train,
        single / batched,
        tributary_model::bench::load_average()
    );
}
