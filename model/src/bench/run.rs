//! The two benchmark runs on random weights: LoRA training steps and greedy generation.

use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{
    bf16_gemm_peak_gflops, decode_step_bytes, gemm_peak_gflops, generate_flops, load_average,
    peak_rss_bytes, read_bandwidth, rss_bytes, train_step_flops,
};
use crate::config::ModelConfig;
use crate::decoder::{CausalLm, MixedLora};
use crate::error::ModelError;
use crate::init::init_random_checkpoint;
use crate::lora::{LoraAdapter, LoraConfig, TargetModule};
use crate::precision::Precision;
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
    /// Double-quantize the NF4 scales (needs `nf4`).
    pub double_quant: bool,
    /// Arithmetic of the base's products.
    pub precision: Precision,
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
    /// "f32" or "bf16" (mixed precision).
    pub precision: &'static str,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub gflop_per_step: f64,
    pub achieved_gflops: f64,
    /// burn's f32 GEMM, 1024³, measured just before the run.
    pub gemm_peak_gflops: f64,
    /// The bf16 GEMM kernel (`kernels::bf16_gemm`), 1024³, measured just before the run.
    pub bf16_gemm_peak_gflops: f64,
    /// Which bf16 kernel this CPU runs: "amx", "avx512bf16" or "portable".
    pub bf16_kernel: &'static str,
    /// Achieved over the peak of the run's precision (f32: `gemm_peak_gflops`, bf16:
    /// `bf16_gemm_peak_gflops`).
    pub mfu: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    pub base_linear_mib: f64,
    /// Peak resident memory (VmHWM): an NF4 run loads the f32 checkpoint first.
    pub peak_rss_mib: f64,
    /// Resident memory at the end (VmRSS).
    pub rss_mib: f64,
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
    /// Store the projections in llama.cpp's Q4_1 and the lm_head in Q8_0
    /// ([`CausalLm::quantize_blocks`]).
    pub q4_1: bool,
    /// Double-quantize the NF4 scales (needs `nf4`).
    pub double_quant: bool,
    /// Storage of the dense weights (projections not in NF4, and the lm_head).
    pub dtype: DecodeDtype,
}

/// How a generation benchmark stores the base's dense weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeDtype {
    /// f32 burn tensors (burn's GEMM).
    F32,
    /// f32 in the host kernels' packed layout ([`CausalLm::to_packed_f32`]).
    F32Packed,
    /// bf16 in the host kernels' packed layout ([`CausalLm::to_bf16`]).
    Bf16,
}

impl DecodeDtype {
    /// The name in the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            DecodeDtype::F32 => "f32",
            DecodeDtype::F32Packed => "f32-packed",
            DecodeDtype::Bf16 => "bf16",
        }
    }
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
    /// How rows with different adapters run.
    pub adapter_mode: &'static str,
    pub quantize: &'static str,
    /// Storage of the dense weights: "f32" or "bf16".
    pub dtype: &'static str,
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
    /// Bytes one decode step reads at least (weights, lm_head, the distinct adapters'
    /// factors, the KV cache at the mean decode length), in MB (10⁶ bytes).
    pub decode_step_mb: f64,
    /// `decode_step_mb` times decode steps per second.
    pub decode_gb_per_s: f64,
    /// DRAM read rate measured on the spot with one thread and with one per core.
    pub read_gb_per_s_one_thread: f64,
    pub read_gb_per_s: f64,
    /// `decode_gb_per_s / read_gb_per_s`: the share of the machine's read bandwidth the decode
    /// used (batch 1 is bound by it; MFU is the figure for batches that are compute-bound).
    pub mbu: f64,
    /// Peak resident memory (VmHWM): an NF4 run loads the f32 checkpoint first.
    pub peak_rss_mib: f64,
    /// Resident memory at the end (VmRSS).
    pub rss_mib: f64,
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
    let made = init_random_checkpoint(config, 0, &dir).and_then(|_| {
        if nf4 {
            CausalLm::load_nf4(&dir, device)
        } else {
            CausalLm::load(&dir, device)
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    made
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

fn quant_name(nf4: bool, double_quant: bool) -> &'static str {
    match (nf4, double_quant) {
        (true, true) => "nf4-double-quant",
        (true, false) => "nf4",
        _ => "none",
    }
}

/// [`random_model`], with the NF4 scales double-quantized when asked.
fn bench_model(
    config: &Path,
    device: &Device,
    nf4: bool,
    double_quant: bool,
) -> Result<CausalLm, ModelError> {
    if double_quant && !nf4 {
        return Err(ModelError::Input(
            "double quantization needs an NF4 base (--quantize nf4)".into(),
        ));
    }
    let mut model = random_model(config, device, nf4)?;
    if double_quant {
        crate::quant_double::double_quantize_model(&mut model)?;
    }
    Ok(model)
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
        let bf16_peak = bf16_gemm_peak_gflops(GEMM_N, GEMM_REPS);
        let model = bench_model(config, device, self.nf4, self.double_quant)?;
        let cfg = model.config().clone();
        let lora = LoraConfig::new(self.rank, 2.0 * self.rank as f64, &TargetModule::ALL);
        let tcfg = TrainConfig {
            lr: 1e-3,
            total_steps: self.steps as u64 + 1,
            batch_size: self.batch,
            precision: self.precision,
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(&model, lora, tcfg)?;
        // The trainer holds the base as it trains on it (bf16 copies in bf16 mode): the f32
        // model it was made from is not needed any more.
        drop(model);
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
            quantize: quant_name(self.nf4, self.double_quant),
            precision: self.precision.name(),
            seconds,
            tokens_per_s: (self.batch * self.seq * self.steps) as f64 / seconds,
            gflop_per_step: flops / 1e9,
            achieved_gflops: achieved,
            gemm_peak_gflops: peak,
            bf16_gemm_peak_gflops: bf16_peak,
            bf16_kernel: crate::kernels::bf16_gemm::Bf16Kernel::best().name(),
            mfu: achieved
                / match self.precision {
                    Precision::F32 => peak,
                    Precision::Bf16 => bf16_peak,
                },
            first_loss,
            last_loss,
            base_linear_mib: mib(trainer.model().linear_weight_bytes() as f64),
            peak_rss_mib: peak_rss_bytes().map_or(f64::NAN, |b| mib(b as f64)),
            rss_mib: rss_bytes().map_or(f64::NAN, |b| mib(b as f64)),
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
        let mut model = bench_model(config, device, self.nf4, self.double_quant)?;
        if self.q4_1 {
            model.quantize_blocks()?;
        }
        match self.dtype {
            DecodeDtype::F32 => {}
            DecodeDtype::F32Packed => model.to_packed_f32()?,
            DecodeDtype::Bf16 => model.to_bf16()?,
        }
        let cfg = model.config().clone();
        let adapters = (0..self.adapters)
            .map(|k| random_adapter(&cfg, self.rank, 100 + k as u64, device))
            .collect::<Result<Vec<_>, _>>()?;
        // Rows go round-robin to adapters, all in one batch.
        let row_adapter: Vec<Option<usize>> = (0..self.batch)
            .map(|i| (self.adapters > 0).then(|| i % self.adapters))
            .collect();
        let lora = Lora::new(&adapters, &row_adapter)?;
        let prompts = random_rows(self.batch, self.prompt_len, cfg.vocab_size, 2);
        // Warm-up: a short run.
        generate_rows(&model, &lora, &prompts, 2)?;
        let t = Instant::now();
        let prefill_seconds = generate_rows(&model, &lora, &prompts, self.new_tokens)?;
        let seconds = t.elapsed().as_secs_f64();
        let r = if self.adapters > 0 { self.rank } else { 0 };
        let flops = generate_flops(&cfg, self.batch, self.prompt_len, self.new_tokens, r);
        let achieved = flops / seconds / 1e9;
        let new = (self.batch * self.new_tokens) as f64;
        let decode_steps_per_s = (self.new_tokens - 1) as f64 / (seconds - prefill_seconds);
        let bf16 = self.dtype == DecodeDtype::Bf16;
        let step_bytes = decode_step_bytes(
            &cfg,
            model.linear_weight_bytes(),
            model
                .head_host_bytes()
                .unwrap_or(cfg.hidden_size * cfg.vocab_size * if bf16 { 2 } else { 4 }),
            // bf16 factors on a bf16 base, f32 otherwise (`LoraAdapter::host_factors`).
            (self.adapters.min(self.batch), r, if bf16 { 2 } else { 4 }),
            self.batch,
            self.prompt_len + self.new_tokens / 2,
        );
        let decode_gb_per_s = step_bytes * decode_steps_per_s / 1e9;
        // Memory figures first: the bandwidth probe's buffer would raise them.
        let peak_rss_mib = peak_rss_bytes().map_or(f64::NAN, |b| mib(b as f64));
        let rss_mib = rss_bytes().map_or(f64::NAN, |b| mib(b as f64));
        let bandwidth = read_bandwidth();
        Ok(GenerateReport {
            bench: "generate",
            params: param_count(&cfg),
            batch: self.batch,
            prompt_len: self.prompt_len,
            new_tokens: self.new_tokens,
            adapters: self.adapters,
            adapter_mode: match lora {
                Lora::Mixed(_) => "mixed batch: base once, x·A·B per adapter on its rows",
                Lora::Single(_) => "single adapter",
            },
            quantize: if self.q4_1 {
                "q4_1"
            } else {
                quant_name(self.nf4, self.double_quant)
            },
            dtype: self.dtype.name(),
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
            decode_step_mb: step_bytes / 1e6,
            decode_gb_per_s,
            read_gb_per_s_one_thread: bandwidth.one_thread,
            read_gb_per_s: bandwidth.all_threads,
            mbu: decode_gb_per_s / bandwidth.all_threads,
            peak_rss_mib,
            rss_mib,
            load_avg_1m: load_average(),
        })
    }
}

/// The adapters of a generation batch: one (or none) for all rows, or one per row.
enum Lora<'a> {
    Single(Option<&'a LoraAdapter>),
    Mixed(MixedLora<'a>),
}

impl<'a> Lora<'a> {
    fn new(
        adapters: &'a [LoraAdapter],
        row_adapter: &'a [Option<usize>],
    ) -> Result<Self, ModelError> {
        Ok(if adapters.len() > 1 {
            Lora::Mixed(MixedLora::new(adapters, row_adapter)?)
        } else {
            Lora::Single(adapters.first())
        })
    }
}

/// Greedy generation of `new_tokens` for `rows`; returns the prefill time in seconds.
fn generate_rows(
    model: &CausalLm,
    lora: &Lora<'_>,
    rows: &[Vec<u32>],
    new_tokens: usize,
) -> Result<f64, ModelError> {
    let t = Instant::now();
    let mut cache = model.new_cache(rows.len());
    let mut step = |ids: &[Vec<u32>]| -> Result<Vec<u32>, ModelError> {
        let ids = model.ids_tensor(ids)?;
        let logits = match lora {
            Lora::Single(a) => model.forward_last(ids, &[], *a, Some(&mut cache))?,
            Lora::Mixed(m) => model.forward_last_mixed(ids, &[], m, Some(&mut cache))?,
        };
        argmax_rows(&logits)
    };
    let mut next = step(rows)?;
    let prefill = t.elapsed().as_secs_f64();
    for _ in 1..new_tokens {
        let feed: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
        next = step(&feed)?;
    }
    Ok(prefill)
}
