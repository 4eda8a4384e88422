//! The two benchmark runs on random weights: LoRA training steps and greedy generation.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{gemm_peak_gflops, generate_flops, load_average, peak_rss_bytes, train_step_flops};
use crate::config::ModelConfig;
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::init::init_random_checkpoint;
use crate::lora::{LoraAdapter, LoraConfig, TargetModule};
use crate::train::{TrainConfig, TrainExample, Trainer};
use crate::weights::read_f32;

/// Size of the square GEMM whose rate is reported as the device's peak.
const GEMM_N: usize = 1024;
const GEMM_REPS: usize = 5;

/// Settings of `tributary bench train`.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// Rows per step.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// LoRA rank (alpha is twice the rank) on all seven projections.
    pub rank: usize,
    /// Timed optimizer steps (one more runs first as a warm-up).
    pub steps: usize,
    /// Store the frozen base in NF4.
    pub nf4: bool,
}

/// The JSON line of `tributary bench train`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub bench: &'static str,
    pub params: usize,
    pub batch: usize,
    pub seq: usize,
    pub rank: usize,
    pub steps: usize,
    pub quantize: &'static str,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub gflop_per_step: f64,
    pub achieved_gflops: f64,
    pub gemm_peak_gflops: f64,
    pub mfu: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    pub base_linear_mib: f64,
    pub peak_rss_mib: f64,
    pub load_avg_1m: Option<f64>,
}

/// Settings of `tributary bench generate`.
#[derive(Debug, Clone)]
pub struct GenerateBench {
    /// Rows generated together.
    pub batch: usize,
    /// Prompt tokens per row.
    pub prompt_len: usize,
    /// New tokens per row (greedy, no early stop).
    pub new_tokens: usize,
    /// Distinct LoRA adapters (rank `rank`), rows assigned round-robin; 0 for none.
    pub adapters: usize,
    /// LoRA rank.
    pub rank: usize,
    /// Store the base in NF4.
    pub nf4: bool,
}

/// The JSON line of `tributary bench generate`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    pub bench: &'static str,
    pub params: usize,
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub adapters: usize,
    /// How rows with different adapters run: one forward pass per adapter group.
    pub adapter_mode: &'static str,
    pub quantize: &'static str,
    pub seconds: f64,
    pub prefill_seconds: f64,
    /// New tokens (all rows) per second, prefill included.
    pub tokens_per_s: f64,
    /// New tokens per second of the decode phase alone.
    pub decode_tokens_per_s: f64,
    pub gflop: f64,
    pub achieved_gflops: f64,
    pub gemm_peak_gflops: f64,
    pub mfu: f64,
    pub base_linear_mib: f64,
    pub peak_rss_mib: f64,
    pub load_avg_1m: Option<f64>,
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// Random weights for the config file `config`, loaded on `device` (written to a private
/// temporary directory that is removed again).
pub fn random_model(config: &Path, device: &Device, nf4: bool) -> Result<CausalLm, ModelError> {
    let dir = std::env::temp_dir().join(format!(
        "tributary-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let made = init_random_checkpoint(config, 0, &dir).and_then(|_| CausalLm::load(&dir, device));
    let _ = std::fs::remove_dir_all(&dir);
    let mut model = made?;
    if nf4 {
        model.quantize_nf4()?;
    }
    Ok(model)
}

fn param_count(cfg: &ModelConfig) -> usize {
    crate::init::checkpoint_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

fn random_rows(rows: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

fn quant_name(nf4: bool) -> &'static str {
    if nf4 { "nf4" } else { "none" }
}

impl TrainBench {
    /// Runs the benchmark on random weights for `config` (a config.json-style file).
    pub fn run(&self, config: &Path, device: &Device) -> Result<TrainReport, ModelError> {
        if self.batch == 0 || self.seq < 2 || self.rank == 0 || self.steps == 0 {
            return Err(ModelError::Input(
                "bench train: batch, rank and steps must be positive, seq at least 2".into(),
            ));
        }
        let peak = gemm_peak_gflops(device, GEMM_N, GEMM_REPS)?;
        let model = random_model(config, device, self.nf4)?;
        let cfg = model.config().clone();
        let lora = LoraConfig::new(self.rank, 2.0 * self.rank as f64, &TargetModule::ALL);
        let tcfg = TrainConfig {
            lr: 1e-3,
            total_steps: self.steps as u64 + 1,
            batch_size: self.batch,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(&model, lora, tcfg)?;
        let batch: Vec<TrainExample> = random_rows(self.batch, self.seq, cfg.vocab_size, 1)
            .into_iter()
            .map(TrainExample::causal)
            .collect();
        let micro = [batch];
        let first_loss = trainer.train_step(&micro)?.loss;
        let t = Instant::now();
        let mut last_loss = first_loss;
        for _ in 0..self.steps {
            last_loss = trainer.train_step(&micro)?.loss;
        }
        let seconds = t.elapsed().as_secs_f64();
        let flops = train_step_flops(&cfg, self.batch, self.seq, self.rank);
        let achieved = flops * self.steps as f64 / seconds / 1e9;
        Ok(TrainReport {
            bench: "train",
            params: param_count(&cfg),
            batch: self.batch,
            seq: self.seq,
            rank: self.rank,
            steps: self.steps,
            quantize: quant_name(self.nf4),
            seconds,
            tokens_per_s: (self.batch * self.seq * self.steps) as f64 / seconds,
            gflop_per_step: flops / 1e9,
            achieved_gflops: achieved,
            gemm_peak_gflops: peak,
            mfu: achieved / peak,
            first_loss,
            last_loss,
            base_linear_mib: mib(model.linear_weight_bytes() as f64),
            peak_rss_mib: peak_rss_bytes().map_or(f64::NAN, |b| mib(b as f64)),
            load_avg_1m: load_average(),
        })
    }
}

/// An adapter of rank `r` with random (non-zero) `B`, so that it changes the output.
fn random_adapter(
    cfg: &ModelConfig,
    r: usize,
    seed: u64,
    device: &Device,
) -> Result<LoraAdapter, ModelError> {
    let lora = LoraConfig::new(r, 2.0 * r as f64, &TargetModule::ALL);
    let mut a = LoraAdapter::init(lora, cfg, seed, device)?;
    for (_, _, m) in a.iter_mut() {
        m.b = Tensor::random(m.b.dims(), Distribution::Normal(0.0, 0.02), device);
    }
    Ok(a)
}

fn argmax_rows(logits: &Tensor<2>) -> Result<Vec<u32>, ModelError> {
    let [_, v] = logits.dims();
    let flat = read_f32(logits, "logits")?;
    Ok(flat
        .chunks(v)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 { (i, x) } else { best }
                })
                .0 as u32
        })
        .collect())
}

impl GenerateBench {
    /// Runs the benchmark on random weights for `config`.
    pub fn run(&self, config: &Path, device: &Device) -> Result<GenerateReport, ModelError> {
        if self.batch == 0 || self.prompt_len == 0 || self.new_tokens == 0 {
            return Err(ModelError::Input(
                "bench generate: batch, prompt-len and new-tokens must be positive".into(),
            ));
        }
        let peak = gemm_peak_gflops(device, GEMM_N, GEMM_REPS)?;
        let model = random_model(config, device, self.nf4)?;
        let cfg = model.config().clone();
        let adapters = (0..self.adapters)
            .map(|k| random_adapter(&cfg, self.rank, 100 + k as u64, device))
            .collect::<Result<Vec<_>, _>>()?;
        // Rows go round-robin to adapters; each adapter's rows run as one group.
        let groups = self.adapters.clamp(1, self.batch);
        let prompts = random_rows(self.batch, self.prompt_len, cfg.vocab_size, 2);
        let mut group_rows: Vec<Vec<Vec<u32>>> = vec![Vec::new(); groups];
        for (i, p) in prompts.into_iter().enumerate() {
            group_rows[i % groups].push(p);
        }
        // Warm-up: one short run of the first group.
        self.generate_group(&model, adapters.first(), &group_rows[0], 2)?;

        let t = Instant::now();
        let mut prefill_seconds = 0.0;
        for (k, rows) in group_rows.iter().enumerate() {
            prefill_seconds +=
                self.generate_group(&model, adapters.get(k), rows, self.new_tokens)?;
        }
        let seconds = t.elapsed().as_secs_f64();
        let r = if self.adapters > 0 { self.rank } else { 0 };
        let flops = generate_flops(&cfg, self.batch, self.prompt_len, self.new_tokens, r);
        let achieved = flops / seconds / 1e9;
        let new = (self.batch * self.new_tokens) as f64;
        Ok(GenerateReport {
            bench: "generate",
            params: param_count(&cfg),
            batch: self.batch,
            prompt_len: self.prompt_len,
            new_tokens: self.new_tokens,
            adapters: self.adapters,
            adapter_mode: if groups > 1 {
                "one forward per adapter group"
            } else {
                "single batch"
            },
            quantize: quant_name(self.nf4),
            seconds,
            prefill_seconds,
            tokens_per_s: new / seconds,
            decode_tokens_per_s: (self.batch * (self.new_tokens - 1)) as f64
                / (seconds - prefill_seconds),
            gflop: flops / 1e9,
            achieved_gflops: achieved,
            gemm_peak_gflops: peak,
            mfu: achieved / peak,
            base_linear_mib: mib(model.linear_weight_bytes() as f64),
            peak_rss_mib: peak_rss_bytes().map_or(f64::NAN, |b| mib(b as f64)),
            load_avg_1m: load_average(),
        })
    }

    /// Greedy generation of `new_tokens` for `rows` with one adapter; returns the prefill
    /// time in seconds.
    fn generate_group(
        &self,
        model: &CausalLm,
        adapter: Option<&LoraAdapter>,
        rows: &[Vec<u32>],
        new_tokens: usize,
    ) -> Result<f64, ModelError> {
        let t = Instant::now();
        let mut cache = model.new_cache(rows.len());
        let logits = model.forward_last(model.ids_tensor(rows)?, &[], adapter, Some(&mut cache))?;
        let mut next = argmax_rows(&logits)?;
        let prefill = t.elapsed().as_secs_f64();
        for _ in 1..new_tokens {
            let feed: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
            let logits =
                model.forward_last(model.ids_tensor(&feed)?, &[], adapter, Some(&mut cache))?;
            next = argmax_rows(&logits)?;
        }
        Ok(prefill)
    }
}
