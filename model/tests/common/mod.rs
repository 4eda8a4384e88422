//! Shared helpers for the model crate's integration tests: locating `shared/fixtures`,
//! reading reference tensors, comparing numbers.

#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use tributary_model::weights::{TensorStore, read_f32};

/// The fixtures folder: `$TRIBUTARY_FIXTURES`, or the workspace's sibling `shared/fixtures`.
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("TRIBUTARY_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

/// One fixture model's folder.
pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// Both fixture models.
pub const MODELS: [&str; 2] = ["tiny-llama", "tiny-qwen2"];

/// The CPU device used by the tests.
pub fn device() -> Device {
    tributary_model::device::cpu_device()
}

/// `reference.safetensors` of a fixture model.
pub fn reference(name: &str) -> TensorStore {
    TensorStore::open_file(&model_dir(name).join("reference.safetensors"))
        .expect("reference.safetensors")
}

/// `reference.json` of a fixture model.
pub fn reference_json(name: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(model_dir(name).join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json parses")
}

/// An integer reference tensor as rows of token ids / labels.
pub fn int_rows(store: &TensorStore, name: &str) -> Vec<Vec<i64>> {
    let (shape, v) = store.get_i64(name).expect(name);
    v.chunks(shape[1]).map(<[i64]>::to_vec).collect()
}

/// Rows of ids as an Int tensor.
/// The reference's `input_ids` rows as token ids.
pub fn input_rows(name: &str) -> Vec<Vec<u32>> {
    int_rows(&reference(name), "input_ids")
        .into_iter()
        .map(|r| r.into_iter().map(|t| t as u32).collect())
        .collect()
}

pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

/// Max |a-b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// ||a-b|| / ||b||.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}

/// A tensor's values.
pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    read_f32(t, "test").expect("readback")
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The fixtures' training examples (`input_ids` and `labels` of the reference step).
pub fn fixture_examples(name: &str) -> Vec<tributary_model::train::TrainExample> {
    let r = reference(name);
    int_rows(&r, "input_ids")
        .into_iter()
        .zip(int_rows(&r, "labels"))
        .map(|(i, l)| tributary_model::train::TrainExample {
            input_ids: i.into_iter().map(|t| t as u32).collect(),
            labels: l,
        })
        .collect()
}

/// The fixtures' AdamW learning rate and epsilon (see [`fixture_train_config`]).
pub const FIXTURE_LR: f64 = 1e-2;
pub const FIXTURE_EPS: f64 = 1e-8;

/// The fixtures' step: AdamW lr 1e-2, betas 0.9/0.999, eps 1e-8, no weight decay, no
/// clipping, one micro-batch of 2, constant schedule.
pub fn fixture_train_config(
    precision: tributary_model::precision::Precision,
) -> tributary_model::train::TrainConfig {
    tributary_model::train::TrainConfig {
        lr: FIXTURE_LR,
        betas: (0.9, 0.999),
        eps: FIXTURE_EPS,
        weight_decay: 0.0,
        warmup_steps: 0,
        schedule: tributary_model::train::Schedule::Constant,
        total_steps: 10,
        grad_accum_steps: 1,
        max_grad_norm: None,
        batch_size: 2,
        seed: 0,
        precision,
        recompute: false,
    }
}

/// The reference key of an adapter tensor: `<prefix>.model.layers.N.….lora_A.default.weight`.
pub fn ref_key(
    prefix: &str,
    layer: usize,
    t: tributary_model::lora::TargetModule,
    which: char,
) -> String {
    format!("{prefix}.{}.lora_{which}.default.weight", t.path(layer))
}

/// Max |adapter value after one AdamW step − reference| beyond what the gradients' own
/// difference explains (see [`check_first_adamw_step`]): f32 rounding of the step and sum.
pub const AFTER_STEP_TOL: f32 = 1e-5;

/// The direction of the first AdamW step for one gradient component: from zero moments the
/// bias corrections make m̂ = g and v̂ = g², so with no weight decay the step is
/// `lr · g / (|g| + eps)`. It divides each component by its own size, so a component near
/// `eps` (1e-8) turns a gradient difference of 1e-9, well inside any gradient tolerance, into
/// a step difference of ~1e-4 (up to 2·lr when the sign of a ~1e-9 component flips).
fn first_step(g: f32) -> f32 {
    g / (g.abs() + FIXTURE_EPS as f32)
}

/// Checks one adapter tensor after the fixtures' first AdamW step against the reference.
/// Each component may differ by `lr · |s(g) − s(g_ref)|` ([`first_step`] of this run's and the
/// reference's gradient: what the gradient difference explains) plus [`AFTER_STEP_TOL`]. A
/// wrong optimizer (learning rate, bias correction, sign, a moment carried over) moves every
/// component whose gradient is well above `eps` by ~1e-3 to 2e-2 and still fails. Returns the
/// worst absolute difference and the worst unexplained part.
pub fn check_first_adamw_step(
    what: &str,
    got: &[f32],
    want: &[f32],
    got_grad: &[f32],
    want_grad: &[f32],
) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(got_grad.len(), got.len(), "{what}: gradient length");
    assert_eq!(
        want_grad.len(),
        got.len(),
        "{what}: reference gradient length"
    );
    let (mut worst, mut worst_unexplained) = (0.0f32, 0.0f32);
    for i in 0..got.len() {
        let d = (got[i] - want[i]).abs();
        let explained =
            FIXTURE_LR as f32 * (first_step(got_grad[i]) - first_step(want_grad[i])).abs();
        worst = worst.max(d);
        worst_unexplained = worst_unexplained.max(d - explained);
        assert!(
            d <= explained + AFTER_STEP_TOL,
            "{what}[{i}] after the step differs by {d} (gradient {} vs reference {} explains \
             {explained})",
            got_grad[i],
            want_grad[i]
        );
    }
    (worst, worst_unexplained)
}

/// Checks every gradient of `mean` (the step's mean gradient as an adapter) against the
/// reference's `grad.*` tensors within `tol`, norm-wise relative per tensor. Returns the
/// worst error and this run's gradients by reference key (for [`check_after_first_step`]).
pub fn check_gradients(
    name: &str,
    mean: &tributary_model::lora::LoraAdapter,
    reference: &TensorStore,
    tol: f32,
) -> (f32, std::collections::HashMap<String, Vec<f32>>) {
    let mut worst = 0.0f32;
    let mut got_grads = std::collections::HashMap::new();
    for (layer, t, m) in mean.iter() {
        for (which, tensor) in [('A', &m.a), ('B', &m.b)] {
            let key = ref_key("grad", layer, t, which);
            let (_, want) = reference.get_f32(&key).expect("grad key");
            let got = values(tensor);
            let e = rel_err(&got, &want);
            worst = worst.max(e);
            assert!(
                e <= tol,
                "{name}: grad of {} relative error {e}",
                tributary_model::peft::peft_key(layer, t, which)
            );
            got_grads.insert(key, got);
        }
    }
    (worst, got_grads)
}

/// Checks every tensor of `adapter` after the fixtures' first AdamW step against the
/// reference's `after_step.*` ([`check_first_adamw_step`] per tensor, with `got_grads` from
/// [`check_gradients`]). Returns the worst difference and the worst unexplained part.
pub fn check_after_first_step(
    name: &str,
    adapter: &tributary_model::lora::LoraAdapter,
    reference: &TensorStore,
    got_grads: &std::collections::HashMap<String, Vec<f32>>,
) -> (f32, f32) {
    let (mut worst, mut worst_unexplained) = (0.0f32, 0.0f32);
    for (layer, t, m) in adapter.iter() {
        for (which, tensor) in [('A', &m.a), ('B', &m.b)] {
            let (_, want) = reference
                .get_f32(&ref_key("after_step", layer, t, which))
                .expect("after_step key");
            let grad_key = ref_key("grad", layer, t, which);
            let (_, want_grad) = reference.get_f32(&grad_key).expect("grad key");
            let (w, u) = check_first_adamw_step(
                &format!(
                    "{name}: {}",
                    tributary_model::peft::peft_key(layer, t, which)
                ),
                &values(tensor),
                &want,
                &got_grads[&grad_key],
                &want_grad,
            );
            worst = worst.max(w);
            worst_unexplained = worst_unexplained.max(u);
        }
    }
    (worst, worst_unexplained)
}
