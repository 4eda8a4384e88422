//! The model crate's LoRA trainer behind `ShardExecutor`, on the tiny Llama fixture: a
//! step split over two executors (as two workers would) and summed in micro-batch order
//! gives the same adapter as one executor, and the same as `Trainer::train_step`; a
//! checkpoint restores exactly. The invariance is checked at both precisions
//! (`train.precision`: f32, and bf16 mixed precision).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::path::PathBuf;

use tributary_model::train::TrainExample;
use tributary_protocol::{JobSpec, MicroBatch};
use tributary_worker::{ShardExecutor, TrainerExecutor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tiny-llama")
}

fn spec(dir: &tempfile::TempDir) -> JobSpec {
    spec_at(dir, None)
}

/// The job, with `train.precision` set when `precision` is given.
fn spec_at(dir: &tempfile::TempDir, precision: Option<&str>) -> JobSpec {
    let data = dir.path().join("train.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"prompt": "Count {i} and", "completion": " then {} more"}}"#,
                i + 1
            )
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    JobSpec::from_toml_str(&format!(
        "base_model = {:?}\ndata = {:?}\n[lora]\nrank = 4\nalpha = 8\ndropout = 0.1\n\
         target_modules = [\"q_proj\", \"v_proj\"]\n[train]\nsteps = 3\nbatch_size = 4\n\
         grad_accum = 4\nlr = 0.01\nseed = 9\nmax_grad_norm = 1.0\n{}",
        fixture().display().to_string(),
        data.display().to_string(),
        precision.map_or(String::new(), |p| format!("precision = {p:?}\n"))
    ))
    .unwrap()
}

fn batch(step: u64) -> Vec<MicroBatch> {
    (0..4)
        .map(|i| MicroBatch {
            index: i,
            start: step * 4 + u64::from(i),
            len: 1,
        })
        .collect()
}

/// Runs `steps` data-parallel steps over `execs`, micro-batches dealt in contiguous blocks.
fn train(execs: &mut [TrainerExecutor], steps: u64) {
    for step in 0..steps {
        let mbs = batch(step);
        let per = mbs.len().div_ceil(execs.len());
        let mut parts = Vec::new();
        for (rank, ex) in execs.iter_mut().enumerate() {
            for mb in mbs.iter().skip(rank * per).take(per) {
                parts.push((mb.index, ex.gradients(step, mb).unwrap()));
            }
        }
        parts.sort_by_key(|(i, _)| *i);
        let mut sum = vec![0f32; parts[0].1.grads.len()];
        let mut tokens = 0;
        for (_, g) in &parts {
            for (s, v) in sum.iter_mut().zip(&g.grads) {
                *s += v;
            }
            tokens += g.tokens;
        }
        for ex in execs.iter_mut() {
            ex.apply(step, &sum, tokens).unwrap();
        }
    }
}

fn adapter_values(ex: &TrainerExecutor) -> Vec<f32> {
    ex.trainer()
        .adapter()
        .iter()
        .flat_map(|(_, _, m)| {
            let a = tributary_model::weights::read_f32(&m.a, "a").unwrap();
            let b = tributary_model::weights::read_f32(&m.b, "b").unwrap();
            a.into_iter().chain(b)
        })
        .collect()
}

#[test]
fn two_executors_train_the_same_adapter_as_one_and_as_train_step() {
    for precision in ["f32", "bf16"] {
        same_adapter_for_any_worker_count(precision);
    }
}

fn same_adapter_for_any_worker_count(precision: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_at(&dir, Some(precision));
    let mut one = [TrainerExecutor::new(&spec).unwrap()];
    let mut two = [
        TrainerExecutor::new(&spec).unwrap(),
        TrainerExecutor::new(&spec).unwrap(),
    ];
    let before = adapter_values(&one[0]);
    train(&mut one, 3);
    train(&mut two, 3);
    let (a, b, c) = (
        adapter_values(&one[0]),
        adapter_values(&two[0]),
        adapter_values(&two[1]),
    );
    assert_ne!(a, before, "{precision}: training changed nothing");
    assert_eq!(a, b, "{precision}: 2 workers differ from 1");
    assert_eq!(b, c, "{precision}: the two workers diverged");
    assert_eq!(
        reference_precision(&one[0]),
        precision,
        "the executor trains at the spec's precision"
    );

    // The model crate's own loop over the same examples gives the same adapter.
    let mut reference = TrainerExecutor::new(&spec).unwrap();
    let mut examples: Vec<Vec<TrainExample>> = Vec::new();
    let mut trainer = reference.trainer().clone();
    for step in 0..3 {
        examples.clear();
        for mb in batch(step) {
            examples.push(vec![reference.example_at(mb.start)]);
        }
        trainer.train_step(&examples).unwrap();
    }
    let want: Vec<f32> = trainer
        .adapter()
        .iter()
        .flat_map(|(_, _, m)| {
            let a = tributary_model::weights::read_f32(&m.a, "a").unwrap();
            let b = tributary_model::weights::read_f32(&m.b, "b").unwrap();
            a.into_iter().chain(b)
        })
        .collect();
    for (x, y) in a.iter().zip(&want) {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1e-3),
            "{precision}: {x} vs {y}"
        );
    }
}

fn reference_precision(ex: &TrainerExecutor) -> &'static str {
    ex.trainer().config().precision.name()
}

#[test]
fn checkpoint_restores_the_trainer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&dir);
    let mut a = [TrainerExecutor::new(&spec).unwrap()];
    train(&mut a, 2);
    let state = a[0].checkpoint().unwrap();
    let mut b = TrainerExecutor::new(&spec).unwrap();
    b.restore(&state).unwrap();
    assert_eq!(adapter_values(&a[0]), adapter_values(&b));
    assert_eq!(b.trainer().step(), 2);
    assert!(b.restore(&state[..state.len() / 2]).is_err());
}

/// With `train.eval_fraction` the tail of the data is held out, and the attribution index
/// the export builds covers exactly the training part (it used to take every row's id and
/// fail the export: "9 examples but 12 row ids").
#[test]
fn export_with_an_eval_split_indexes_the_training_examples_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(&dir);
    spec.train.eval_fraction = Some(0.25);
    let mut ex = [TrainerExecutor::new(&spec).unwrap()];
    train(&mut ex, 2);
    let (loss, held_out) = ex[0].eval_loss().unwrap().unwrap();
    assert!(loss.is_finite());
    assert_eq!(held_out, 3);
    let files = ex[0].export().unwrap();
    let summary = files
        .iter()
        .find(|f| f.name == tributary_worker::attribution_index::SUMMARY_FILE)
        .expect("the index summary is exported");
    let summary: serde_json::Value = serde_json::from_slice(&summary.bytes).unwrap();
    assert_eq!(summary["examples"], 9, "{summary}");
}
