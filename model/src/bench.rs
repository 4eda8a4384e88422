//! Measurement helpers for `tributary bench train|generate`: the f32 GEMM peak and the DRAM
//! read bandwidth on the spot, FLOP and byte counts of the decoder, peak resident memory, and
//! the two benchmark runs.
//!
//! What is counted (2 FLOPs per multiply-add, matmuls only; norms, RoPE, softmax, SiLU and
//! the optimizer are left out):
//! - forward, per token: the seven base projections of every layer, the LoRA factors
//!   (`x·Aᵀ` then `·Bᵀ`) of every adapted projection, the lm_head where logits are computed,
//!   and attention (`Q·Kᵀ` and `P·V`) over every key the kernel computes. Without a cache
//!   burn computes the full `T×T` score matrix and masks it, so a `T`-token row costs
//!   `T` keys per query, not the causal `T/2`: that is what is counted, since it is what runs.
//! - training backward: the base weights are frozen, so base projections and the lm_head only
//!   propagate activation gradients (`dX = dY·W`, the forward's cost again, no weight-gradient
//!   GEMM); LoRA factors cost twice their forward (`dX` and `dA`/`dB`); attention twice its
//!   forward (four matmuls). Training ≈ 2× forward plus the LoRA weight gradients.
// Benchmarks time real work.
#![allow(clippy::disallowed_methods)]

mod bandwidth;
mod run;

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

pub use bandwidth::{ReadBandwidth, read_bandwidth};
pub use run::{DecodeDtype, GenerateBench, GenerateReport, TrainBench, TrainReport};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::lora::TargetModule;
use crate::weights::read_f32;

/// Peak resident set size of this process in bytes (`VmHWM` from `/proc/self/status`);
/// `None` where that file does not exist (not Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Current resident set size in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

fn proc_status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The 1-minute load average (`/proc/loadavg`), to judge how busy a shared machine was.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The best f32 GEMM rate in GFLOP/s of `reps` square `n×n·n×n` products on `device`
/// (after one warm-up), each timed until its result is read back.
pub fn gemm_peak_gflops(device: &Device, n: usize, reps: usize) -> Result<f64, ModelError> {
    let a: Tensor<2> = Tensor::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let b: Tensor<2> = Tensor::random([n, n], Distribution::Normal(0.0, 1.0), device);
    let mut best = f64::INFINITY;
    for i in 0..=reps {
        let t = Instant::now();
        let c = a.clone().matmul(b.clone());
        read_f32(&c.slice([0..1, 0..1]), "gemm")?;
        let s = t.elapsed().as_secs_f64();
        if i > 0 {
            best = best.min(s);
        }
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// The rate of an `n`³ bf16 × bf16 → f32 product through [`crate::kernels::bf16_gemm`]
/// (the kernel mixed-precision training uses; AVX-512 BF16 where the CPU has it), best of
/// `reps` after one warm-up, in GFLOP/s.
pub fn bf16_gemm_peak_gflops(n: usize, reps: usize) -> f64 {
    use crate::kernels::bf16_gemm::{Bf16Panel, gemm};
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i % 97) as f32 - 48.0) / 64.0)
        .collect();
    let b = Bf16Panel::from_rows(&a, n, n);
    let mut best = f64::INFINITY;
    for i in 0..=reps {
        let t = Instant::now();
        let c = gemm(&a, n, &b);
        std::hint::black_box(&c);
        let s = t.elapsed().as_secs_f64();
        if i > 0 {
            best = best.min(s);
        }
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Multiply-adds per token of the seven base projections of all layers.
pub fn base_linear_macs(cfg: &ModelConfig) -> f64 {
    let per_layer: usize = TargetModule::ALL
        .iter()
        .map(|t| {
            let (i, o) = t.dims(cfg);
            i * o
        })
        .sum();
    (per_layer * cfg.num_hidden_layers) as f64
}

/// Multiply-adds per token of rank-`r` LoRA factors on all seven projections of all layers.
pub fn lora_macs(cfg: &ModelConfig, r: usize) -> f64 {
    let per_layer: usize = TargetModule::ALL
        .iter()
        .map(|t| {
            let (i, o) = t.dims(cfg);
            r * (i + o)
        })
        .sum();
    (per_layer * cfg.num_hidden_layers) as f64
}

/// Multiply-adds of the lm_head for one token.
pub fn head_macs(cfg: &ModelConfig) -> f64 {
    (cfg.hidden_size * cfg.vocab_size) as f64
}

/// Multiply-adds of attention (`Q·Kᵀ` and `P·V`, all layers) for one query over `keys` keys.
pub fn attention_macs(cfg: &ModelConfig, keys: usize) -> f64 {
    (2 * cfg.num_attention_heads * cfg.head_dim * keys * cfg.num_hidden_layers) as f64
}

/// FLOPs of one training step on `batch` rows of `seq` tokens with rank-`r` LoRA on all
/// seven projections (see the module docs for what is counted).
pub fn train_step_flops(cfg: &ModelConfig, batch: usize, seq: usize, r: usize) -> f64 {
    let tokens = (batch * seq) as f64;
    let frozen = base_linear_macs(cfg) + head_macs(cfg);
    let lora = lora_macs(cfg, r);
    let attn = attention_macs(cfg, seq);
    // forward + activation gradients for frozen weights; 3× LoRA (fwd, dX, dW); 3× attention.
    2.0 * tokens * (2.0 * frozen + 3.0 * lora + 3.0 * attn)
}

/// FLOPs of generating `new_tokens` per row for `rows` rows after a `prompt`-token prefill
/// (lm_head only on the last position of each call; rank `r` LoRA, 0 for none).
pub fn generate_flops(
    cfg: &ModelConfig,
    rows: usize,
    prompt: usize,
    new_tokens: usize,
    r: usize,
) -> f64 {
    if new_tokens == 0 {
        return 0.0;
    }
    let body = base_linear_macs(cfg) + lora_macs(cfg, r);
    let prefill =
        prompt as f64 * body + head_macs(cfg) + prompt as f64 * attention_macs(cfg, prompt);
    // Decode calls feed tokens 1..new_tokens; the i-th sees prompt+i keys.
    let decode: f64 = (1..new_tokens)
        .map(|i| body + head_macs(cfg) + attention_macs(cfg, prompt + i))
        .sum();
    2.0 * rows as f64 * (prefill + decode)
}

/// Bytes one decode step must read at least for `rows` rows: every projection's stored
/// weights (`linear_bytes`), the lm_head (`head_bytes` in all), the LoRA
/// factors of `distinct_adapters` adapters of rank `r` (`factor_bytes_per_weight` each), and the
/// KV cache's keys and values over `keys` positions per row, in f32.
pub fn decode_step_bytes(
    cfg: &ModelConfig,
    linear_bytes: usize,
    head_bytes: usize,
    lora: (usize, usize, usize),
    rows: usize,
    keys: usize,
) -> f64 {
    let (distinct_adapters, r, factor_bytes_per_weight) = lora;
    let factors = distinct_adapters as f64 * lora_macs(cfg, r) * factor_bytes_per_weight as f64;
    let kv = 2 * cfg.num_key_value_heads * cfg.head_dim * cfg.num_hidden_layers * 4;
    (linear_bytes + head_bytes) as f64 + factors + (rows * keys * kv) as f64
}
