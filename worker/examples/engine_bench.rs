//! Throughput of the inference engine in this process (no HTTP): closed-loop clients, each
//! sending its next request when the last one ends, over a base model made by `model init`
//! from a config, with adapters chosen by a power law (S-LoRA's workload shape).
//!
//! ```text
//! cargo run --release -p tributary-worker --example engine_bench -- \
//!   config=../shared/bench/bench-llama-30m.json tokenizer=../shared/fixtures/tiny-llama \
//!   adapters=1,100,1000 requests=96 concurrency=32 prompt=32 max_tokens=128
//! ```
//!
//! `adapters=0` serves the base alone. Each distinct adapter is its own digest to the
//! engine (loaded, cached and evicted on its own); their files come from `distinct=` random
//! rank-16 adapters on disk, so a thousand adapters do not need a thousand files. With
//! `long=N every=K`, every K-th request has an N-token prompt instead: the decode gaps of
//! the other requests then show what prefilling it costs them (`max_batch_tokens=` sets
//! the step budget, i.e. the prefill chunk). With `shared_prefix=N`, every prompt starts
//! with the same N words (a system prompt); `prefix_caching=0` turns the reuse of its keys
//! and values off. One JSON line per setting goes to stdout.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::{Distribution, Tensor};
use tributary_model::decoder::CausalLm;
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};
use tributary_protocol::ids::Digest;
use tributary_protocol::inference::{
    InferenceEvent, InferenceRequest, InferenceService, ModelChoice, Prompt, SamplingParams,
};
use tributary_worker::engine::{
    AdapterFiles, AdapterSource, Engine, EngineConfig, EngineError, WeightDtype,
};

/// Maps many digests onto a few adapter directories.
struct ManyAdapters {
    dirs: HashMap<Digest, PathBuf>,
}

impl AdapterSource for ManyAdapters {
    fn fetch(&self, digest: &Digest) -> Result<Option<AdapterFiles>, EngineError> {
        Ok(self.dirs.get(digest).cloned().map(AdapterFiles::Dir))
    }
}

fn arg<T: std::str::FromStr>(args: &HashMap<String, String>, key: &str, default: T) -> T {
    args.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic xorshift for the workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index in 0..n drawn with probability ∝ 1/(i+1)^alpha.
fn power_law(rng: &mut Rng, cdf: &[f64]) -> usize {
    let u = rng.next() * cdf.last().copied().unwrap_or(1.0);
    cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn prompt_text(words: usize, salt: usize) -> String {
    const W: [&str; 12] = [
        "clinic", "records", "river", "miller", "grain", "week", "village", "count", "twice",
        "summary", "patient", "north",
    ];
    (0..words)
        .map(|i| W[(i * 7 + salt * 5) % W.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: HashMap<String, String> = std::env::args()
        .skip(1)
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let tmp = tempfile::tempdir()?;
    let model_dir = match args.get("model") {
        Some(m) => PathBuf::from(m),
        None => {
            let cfg = PathBuf::from(
                args.get("config")
                    .ok_or("give model=DIR or config=FILE (made with model init)")?,
            );
            let dir = tmp.path().join("model");
            tributary_model::init::init_random_checkpoint(&cfg, 0, &dir)?;
            dir
        }
    };
    let tokenizer = args.get("tokenizer").map(PathBuf::from);
    let settings: Vec<usize> = args
        .get("adapters")
        .map_or("1", String::as_str)
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let requests: usize = arg(&args, "requests", 96);
    let concurrency: usize = arg(&args, "concurrency", 32);
    let prompt_words: usize = arg(&args, "prompt", 32);
    let max_tokens: u32 = arg(&args, "max_tokens", 128);
    let alpha: f64 = arg(&args, "alpha", 1.0);
    let distinct: usize = arg(&args, "distinct", 8);
    let rank: usize = arg(&args, "rank", 16);
    let long: usize = arg(&args, "long", 0);
    let every: usize = arg(&args, "every", 0);
    let budget: usize = arg(&args, "max_batch_tokens", 128);
    let cache_mib: u64 = arg(&args, "adapter_cache_mib", 1024);
    let bf16 = args.get("dtype").is_some_and(|d| d == "bf16");
    // Words every prompt starts with (a shared system prompt), and whether the engine may
    // reuse their keys and values.
    let shared: usize = arg(&args, "shared_prefix", 0);
    let prefix_caching = arg::<u8>(&args, "prefix_caching", 1) == 1;

    let device = tributary_model::device::default_device();
    let base = CausalLm::load(&model_dir, &device)?;
    let mut dirs = Vec::new();
    for k in 0..distinct {
        let cfg = LoraConfig::new(rank, 2.0 * rank as f64, &TargetModule::ALL);
        let mut a = LoraAdapter::init(cfg, base.config(), k as u64 + 1, &device)?;
        for (_, _, m) in a.iter_mut() {
            m.b = Tensor::random(m.b.dims(), Distribution::Normal(0.0, 0.02), &device);
        }
        let dir = tmp.path().join(format!("adapter-{k}"));
        a.save(&dir)?;
        dirs.push(dir);
    }
    drop(base);

    for &n_adapters in &settings {
        let digests: Vec<Digest> = (0..n_adapters)
            .map(|i| Digest::of(format!("bench adapter {i}").as_bytes()))
            .collect();
        let source = ManyAdapters {
            dirs: digests
                .iter()
                .enumerate()
                .map(|(i, d)| (*d, dirs[i % dirs.len().max(1)].clone()))
                .collect(),
        };
        let mut config = EngineConfig::new(&model_dir, "bench");
        config.tokenizer_dir = tokenizer.clone();
        config.max_batch_tokens = budget;
        config.max_batch_seqs = config.max_batch_seqs.min(budget);
        config.adapter_cache_bytes = cache_mib << 20;
        config.prefix_caching = prefix_caching;
        config.dtype = if bf16 {
            WeightDtype::Bf16
        } else {
            WeightDtype::F32Packed
        };
        let engine = Arc::new(Engine::start(config, Arc::new(source))?);
        let loads = &tributary_worker::engine::metrics::ADAPTER_LOAD_SECONDS;
        let (loads0, load_secs0) = (loads.get_sample_count(), loads.get_sample_sum());
        let cdf: Vec<f64> = (0..n_adapters.max(1))
            .scan(0.0, |acc, i| {
                *acc += 1.0 / ((i + 1) as f64).powf(alpha);
                Some(*acc)
            })
            .collect();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let plan: Vec<(Option<Digest>, String)> = (0..requests)
            .map(|i| {
                let adapter = (n_adapters > 0).then(|| digests[power_law(&mut rng, &cdf)]);
                let words = if every > 0 && i % every == every - 1 {
                    long
                } else {
                    prompt_words
                };
                let text = match shared {
                    0 => prompt_text(words, i),
                    n => format!(
                        "{} request {i}: {}",
                        prompt_text(n, 0),
                        prompt_text(words, i)
                    ),
                };
                (adapter, text)
            })
            .collect();
        let plan = Arc::new(std::sync::Mutex::new(plan.into_iter().enumerate()));
        let start = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..concurrency {
            let (engine, plan) = (Arc::clone(&engine), Arc::clone(&plan));
            clients.push(tokio::spawn(async move {
                // (long prompt?, ttft, gaps between text events, tokens)
                let mut out: Vec<(bool, f64, Vec<f64>, u32)> = Vec::new();
                loop {
                    let next = plan.lock().ok().and_then(|mut p| p.next());
                    let Some((i, (adapter, text))) = next else {
                        break;
                    };
                    let is_long = every > 0 && i % every == every - 1;
                    let req = InferenceRequest {
                        request_id: format!("cmpl-{i}"),
                        model: adapter.map_or(ModelChoice::Base, ModelChoice::Adapter),
                        prompt: Prompt::Text(text),
                        params: SamplingParams {
                            max_tokens,
                            temperature: 0.0,
                            top_p: 1.0,
                            seed: Some(0),
                            stop: Vec::new(),
                            n: 1,
                            // Every token then has an event, even one whose text
                            // is empty (the random model's ids beyond the tokenizer's).
                            logprobs: Some(0),
                        },
                        identity: None,
                    };
                    let sent = Instant::now();
                    let mut stream = match engine.submit(req).await {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("refused: {e}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let (mut ttft, mut last, mut gaps, mut tokens) = (0.0, sent, Vec::new(), 0);
                    let mut tokens_seen = 0usize;
                    while let Some(ev) = stream.recv().await {
                        match ev {
                            InferenceEvent::Started { .. } => {
                                ttft = sent.elapsed().as_secs_f64();
                                last = Instant::now();
                            }
                            InferenceEvent::Text { logprobs, .. } => {
                                // The first token's event comes with Started.
                                let now = Instant::now();
                                let n = logprobs.len().max(1);
                                if now > last && tokens_seen > 0 {
                                    gaps.push((now - last).as_secs_f64() / n as f64);
                                }
                                tokens_seen += n;
                                last = now;
                            }
                            InferenceEvent::Finished {
                                completion_tokens, ..
                            } => {
                                tokens = completion_tokens;
                                break;
                            }
                            InferenceEvent::Failed(e) => {
                                eprintln!("failed: {e}");
                                break;
                            }
                        }
                    }
                    out.push((is_long, ttft, gaps, tokens));
                }
                out
            }));
        }
        let mut results = Vec::new();
        for c in clients {
            results.extend(c.await?);
        }
        let secs = start.elapsed().as_secs_f64();
        let tokens: u64 = results.iter().map(|r| u64::from(r.3)).sum();
        let mut ttft: Vec<f64> = results.iter().filter(|r| !r.0).map(|r| r.1).collect();
        let mut gaps: Vec<f64> = results
            .iter()
            .filter(|r| !r.0)
            .flat_map(|r| r.2.iter().copied())
            .collect();
        let mut long_ttft: Vec<f64> = results.iter().filter(|r| r.0).map(|r| r.1).collect();
        let status = engine.status();
        let loaded = loads.get_sample_count() - loads0;
        let load_ms = (loads.get_sample_sum() - load_secs0) * 1e3 / loaded.max(1) as f64;
        let adapter_mib = status
            .resident
            .first()
            .map_or(0.0, |r| r.bytes as f64 / 1048576.0);
        println!(
            "{}",
            serde_json::json!({
                "adapters": n_adapters, "alpha": alpha, "requests": results.len(),
                "concurrency": concurrency, "max_tokens": max_tokens,
                "max_batch_tokens": budget, "long_prompt_words": long, "every": every,
                "seconds": secs, "req_per_s": results.len() as f64 / secs,
                "tokens_per_s": tokens as f64 / secs, "completion_tokens": tokens,
                "ttft_p50_ms": percentile(&mut ttft, 0.5) * 1e3,
                "ttft_p99_ms": percentile(&mut ttft, 0.99) * 1e3,
                "gap_p50_ms": percentile(&mut gaps, 0.5) * 1e3,
                "gap_p99_ms": percentile(&mut gaps, 0.99) * 1e3,
                "gap_max_ms": percentile(&mut gaps, 1.0) * 1e3,
                "long_ttft_p50_ms": percentile(&mut long_ttft, 0.5) * 1e3,
                "steps": status.steps, "peak_batch": status.peak_batch,
                "shared_prefix_words": shared, "prefix_caching": prefix_caching,
                "prefix_hit_tokens": status.prefix_hit_tokens,
                "resident_adapters": status.resident.len(),
                "adapters_loaded": loaded, "adapter_load_mean_ms": load_ms,
                "mib_per_resident_adapter": adapter_mib, "rss_mib": rss_mib(),
            })
        );
        drop(engine);
    }
    Ok(())
}

/// Resident memory of this process (Linux), in MiB.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
