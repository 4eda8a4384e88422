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
