//! A batch whose rows use different adapters computes, row by row, what each row computes
//! alone with its own adapter (prefill and cached decoding).
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
use tributary_model::decoder::{CausalLm, MixedLora};
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};

/// An adapter of rank `r` on `targets` with random `A` and `B`.
fn random_adapter(model: &CausalLm, r: usize, targets: &[TargetModule], seed: u64) -> LoraAdapter {
    let cfg = LoraConfig::new(r, 2.0 * r as f64, targets);
    let mut a = LoraAdapter::init(cfg, model.config(), seed, model.device()).expect("init");
    for (_, _, m) in a.iter_mut() {
        m.b = Tensor::random(m.b.dims(), Distribution::Normal(0.0, 0.5), model.device());
    }
    a
}

fn second_adapter(model: &CausalLm) -> LoraAdapter {
    random_adapter(model, 4, &[TargetModule::Q, TargetModule::Down], 3)
}

/// Greedy steps for rows `rows` with per-row adapters: the last-position logits of the
/// prefill and of `steps` cached decode calls, each `[rows, vocab]` flattened.
fn run_mixed(
    model: &CausalLm,
    lora: &MixedLora<'_>,
    rows: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(rows.len());
    let mut out = Vec::new();
    let mut ids = rows.to_vec();
    for _ in 0..=steps {
        let logits = model
            .forward_last_mixed(
                ids_tensor(&ids, model.device()),
                &[],
                lora,
                Some(&mut cache),
            )
            .expect("mixed forward");
        let v = values(&logits);
        ids = v
            .chunks(model.config().vocab_size)
            .map(|r| vec![argmax(r) as u32])
            .collect();
        out.push(v);
    }
    out
}

fn run_single(
    model: &CausalLm,
    lora: Option<&LoraAdapter>,
    row: &[u32],
    steps: usize,
) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(1);
    let mut out = Vec::new();
    let mut ids = vec![row.to_vec()];
    for _ in 0..=steps {
        let logits = model
            .forward_last(
                ids_tensor(&ids, model.device()),
                &[],
                lora,
                Some(&mut cache),
            )
            .expect("forward");
        let v = values(&logits);
        ids = vec![vec![argmax(&v) as u32]];
        out.push(v);
    }
    out
}

/// The fixture adapter (rank 4 everywhere) and a rank-4 one on q and down: every module
/// takes the row-stacked path.
#[test]
fn mixed_batch_of_one_rank_matches_each_row_alone() {
    let dev = device();
    let model = CausalLm::load(&model_dir("tiny-llama"), &dev).expect("load");
    let first = LoraAdapter::load(
        &model_dir("tiny-llama").join("adapter"),
        model.config(),
        &dev,
    )
    .expect("adapter");
    check_rows_alone(&model, vec![first, second_adapter(&model)]);
}

/// Ranks 4 and 8 on q and down: those modules take the per-adapter row groups, the others
/// (adapted by the rank-8 one only) the row-stacked path.
#[test]
fn mixed_batch_of_different_ranks_matches_each_row_alone() {
    let dev = device();
    let model = CausalLm::load(&model_dir("tiny-llama"), &dev).expect("load");
    let wide = random_adapter(&model, 8, &TargetModule::ALL, 5);
    check_rows_alone(&model, vec![wide, second_adapter(&model)]);
}

fn check_rows_alone(model: &CausalLm, adapters: Vec<LoraAdapter>) {
    let row_adapter = [Some(1), None, Some(0), Some(1)];
    let lora = MixedLora::new(&adapters, &row_adapter).expect("mixed");
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..6).map(|i| ((i * 5 + r * 11) % 60 + 3) as u32).collect())
        .collect();
    let steps = 3;
    let mixed = run_mixed(model, &lora, &rows, steps);
    let v = model.config().vocab_size;
    for (r, (row, a)) in rows.iter().zip(row_adapter).enumerate() {
        let alone = run_single(model, a.map(|k| &adapters[k]), row, steps);
        for (step, (m, s)) in mixed.iter().zip(&alone).enumerate() {
            let diff = max_abs_diff(&m[r * v..(r + 1) * v], s);
            assert!(diff < 1e-4, "row {r} step {step}: {diff}");
        }
    }
    // The adapters really differ: row 0 (second adapter) alone without it is different.
    for r in [0, 2] {
        let plain = run_single(model, None, &rows[r], 0);
        assert!(max_abs_diff(&mixed[0][r * v..(r + 1) * v], &plain[0]) > 1e-3);
    }
}

#[test]
fn mixed_batch_rejects_bad_assignments() {
    let dev = device();
    let model = CausalLm::load(&model_dir("tiny-llama"), &dev).expect("load");
    let adapters = vec![second_adapter(&model)];
    assert!(MixedLora::new(&adapters, &[Some(0), Some(1)]).is_err());
    let two = [Some(0), None];
    let lora = MixedLora::new(&adapters, &two).expect("mixed");
    let three = vec![vec![5u32, 6]; 3];
    assert!(
        model
            .forward_last_mixed(ids_tensor(&three, &dev), &[], &lora, None)
            .is_err()
    );
}

/// Which adapters a batch uses: one for every row, or one per row.
#[derive(Clone, Copy)]
enum Adapters<'a> {
    One(&'a LoraAdapter),
    Mixed(&'a MixedLora<'a>),
}

/// The last-position logits of a prefill over `rows` and of `steps` cached decode calls
/// fed fixed tokens (the same for every model, so two models see the same inputs).
fn run_fixed(model: &CausalLm, lora: Adapters<'_>, rows: &[Vec<u32>], steps: usize) -> Vec<f32> {
    let dev = model.device();
    let mut cache = model.new_cache(rows.len());
    let mut out = Vec::new();
    let mut ids = rows.to_vec();
    for step in 0..=steps {
        let logits = match lora {
            Adapters::One(a) => {
                model.forward_last(ids_tensor(&ids, dev), &[], Some(a), Some(&mut cache))
            }
            Adapters::Mixed(m) => {
                model.forward_last_mixed(ids_tensor(&ids, dev), &[], m, Some(&mut cache))
            }
        };
        out.extend(values(&logits.expect("forward")));
        ids = (0..rows.len())
            .map(|r| vec![((step * 7 + r * 3) % 60 + 3) as u32])
            .collect();
    }
    out
}

/// The host LoRA path (f32-packed base: projections and deltas on the host kernels) gives
/// what burn's path gives on the dense model, for 1–20 rows: one adapter on every row, and
/// mixed batches with different ranks and rows without an adapter (prefill and cached steps).
#[test]
fn host_lora_path_matches_burn_path() {
    let dev = device();
    let dense = CausalLm::load(&model_dir("tiny-llama"), &dev).expect("load");
    let mut packed = dense.clone();
    packed.to_packed_f32().expect("pack");
    let fixture = LoraAdapter::load(
        &model_dir("tiny-llama").join("adapter"),
        dense.config(),
        &dev,
    )
    .expect("adapter");
    let adapters = vec![
        fixture,
        random_adapter(&dense, 8, &TargetModule::ALL, 5),
        second_adapter(&dense),
    ];
    let pattern = [Some(0), None, Some(1), Some(2), Some(1)];
    for batch in [1, 2, 5, 9, 20] {
        let rows: Vec<Vec<u32>> = (0..batch)
            .map(|r| (0..6).map(|i| ((i * 5 + r * 11) % 60 + 3) as u32).collect())
            .collect();
        let row_adapter: Vec<Option<usize>> = (0..batch).map(|i| pattern[i % 5]).collect();
        let mixed = MixedLora::new(&adapters, &row_adapter).expect("mixed");
        let cases = [
            ("mixed", Adapters::Mixed(&mixed)),
            ("one", Adapters::One(&adapters[1])),
        ];
        for (what, lora) in cases {
            let want = run_fixed(&dense, lora, &rows, 2);
            let got = run_fixed(&packed, lora, &rows, 2);
            let diff = max_abs_diff(&got, &want);
            assert!(diff < 1e-4, "{what}, {batch} rows: max abs diff {diff}");
        }
    }
    // The packed model took the host path: every adapter's factors were packed for it.
    assert!(adapters.iter().all(|a| a.has_host_factors(false)));
    assert!(!adapters.iter().any(|a| a.has_host_factors(true)));
}

/// Changing an adapter drops its packed factors, so the host path uses the new values.
#[test]
fn host_factors_follow_changes_to_the_adapter() {
    let dev = device();
    let dense = CausalLm::load(&model_dir("tiny-llama"), &dev).expect("load");
    let mut packed = dense.clone();
    packed.to_packed_f32().expect("pack");
    let mut adapter = random_adapter(&dense, 4, &TargetModule::ALL, 9);
    let rows = vec![vec![5u32, 9, 14], vec![7, 3, 21]];
    let before = run_fixed(&packed, Adapters::One(&adapter), &rows, 1);
    assert!(adapter.has_host_factors(false));
    for (_, _, m) in adapter.iter_mut() {
        m.b = m.b.clone().mul_scalar(-2.0);
    }
    assert!(!adapter.has_host_factors(false));
    let after = run_fixed(&packed, Adapters::One(&adapter), &rows, 1);
    let want = run_fixed(&dense, Adapters::One(&adapter), &rows, 1);
    assert!(max_abs_diff(&after, &want) < 1e-4);
    assert!(max_abs_diff(&after, &before) > 1e-3);
}
