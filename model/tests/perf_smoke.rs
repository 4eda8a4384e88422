//! A timing smoke test on the 30M-parameter bench config (ignored by default; run with
//! `cargo test -p tributary-model --test perf_smoke -- --ignored --nocapture`).

mod common;

use std::time::Instant;

use common::*;
use tributary_model::decoder::CausalLm;
use tributary_model::init::init_random_checkpoint;
use tributary_model::lora::{LoraConfig, TargetModule};
use tributary_model::train::{TrainConfig, TrainExample, Trainer};

#[test]
#[ignore = "timing only"]
fn bench_30m_forward_decode_and_train_step() {
    let cfg = fixtures().join("../bench/bench-llama-30m.json");
    let tmp = tempfile::tempdir().expect("tempdir");
    init_random_checkpoint(&cfg, 0, tmp.path()).expect("init");
    let model = CausalLm::load(tmp.path(), &device()).expect("load");
    let seq = 256;
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..seq).map(|i| ((i * 7 + r * 13) % 8000) as u32).collect())
        .collect();

    let t = Instant::now();
    let out = model.forward(ids_tensor(&rows, model.device()), &[], None, None);
    let _ = values(&out.slice([0..1, 0..1, 0..8]));
    eprintln!("prefill 4x{seq}: {:.2}s", t.elapsed().as_secs_f64());

    let mut cache = model.new_cache(4);
    let _ = model.forward(
        ids_tensor(&rows, model.device()),
        &[],
        None,
        Some(&mut cache),
    );
    let t = Instant::now();
    for _ in 0..16 {
        let o = model.forward(
            ids_tensor(&vec![vec![5u32]; 4], model.device()),
            &[],
            None,
            Some(&mut cache),
        );
        let _ = values(&o.slice([0..1, 0..1, 0..8]));
    }
    eprintln!(
        "decode: {:.1} tokens/s (batch 4)",
        64.0 / t.elapsed().as_secs_f64()
    );

    let mut lora = LoraConfig::new(8, 16.0, &TargetModule::ALL);
    lora.lora_dropout = 0.05;
    let mut trainer = Trainer::new(&model, lora, TrainConfig::default()).expect("trainer");
    let batch: Vec<TrainExample> = rows
        .iter()
        .map(|r| TrainExample::causal(r.clone()))
        .collect();
    let t = Instant::now();
    let s = trainer.train_step(&[batch]).expect("step");
    let dt = t.elapsed().as_secs_f64();
    eprintln!(
        "train step 4x{seq}: {dt:.2}s, {:.0} tokens/s, loss {}",
        s.input_tokens as f64 / dt,
        s.loss
    );
}

#[test]
#[ignore = "timing only"]
fn matmul_transposed_vs_contiguous() {
    use burn::tensor::{Distribution, Tensor};
    let dev = device();
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1024);
    let x = Tensor::<2>::random([rows, 512], Distribution::Default, &dev);
    let w = Tensor::<2>::random([1376, 512], Distribution::Default, &dev);
    let wt = Tensor::<2>::from_data(w.clone().transpose().into_data(), &dev);
    for _ in 0..2 {
        let t = Instant::now();
        for _ in 0..100 {
            let _ = values(&x.clone().matmul(w.clone().transpose()).slice([0..1, 0..1]));
        }
        let a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..100 {
            let _ = values(&x.clone().matmul(wt.clone()).slice([0..1, 0..1]));
        }
        let b = t.elapsed().as_secs_f64();
        let gf = 100.0 * 2.0 * rows as f64 * 512.0 * 1376.0 / 1e9;
        eprintln!(
            "transposed view {:.1} GFLOP/s, contiguous {:.1} GFLOP/s",
            gf / a,
            gf / b
        );
    }
}
