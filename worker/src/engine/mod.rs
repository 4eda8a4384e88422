//! The inference engine: one base model serving many adapters to many requests at once,
//! behind the [`InferenceService`] contract the gateway calls.
//!
//! [`Engine::start`] loads the base model and tokenizer and starts two threads: the engine
//! loop (`runner.rs`), which owns the model, the paged KV cache, the scheduler and the
//! resident adapters and runs one batched step after another; and the adapter loader
//! (`loader.rs`), which fetches and parses adapters on a cache miss so the loop never waits
//! for a store. [`Engine::submit`] (the trait's) tokenizes the prompt with the base model's
//! chat template, checks it against the context window, admits the request if fewer than
//! `max_in_flight` are in flight (else [`InferenceError::Overloaded`] at once) and hands it
//! to the loop over a bounded channel; its events come back on the returned stream, and
//! dropping that stream cancels the request at the next step.

mod adapter_cache;
mod adapters;
mod choice;
mod loader;
pub mod metrics;
mod runner;
pub mod scheduler;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tributary_model::decoder::CausalLm;
use tributary_model::sampling::SamplingConfig;
use tributary_model::tokenizer::Tokenizer;
use tributary_protocol::ids::Digest;
use tributary_protocol::inference::{
    EngineInfo, EventStream, InferenceError, InferenceRequest, InferenceService, Prompt,
};
use tributary_protocol::link::BoxFuture;

pub use adapter_cache::{AdapterCache, Inserted, Resident};
pub use adapters::{AdapterFiles, AdapterSource, AdapterStore, digest_peft_dir};
use choice::ChoiceParams;
use runner::Command;

/// How the base model's projections are stored (both decode on the host kernels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightDtype {
    /// f32 in the kernels' packed layout: `tributary model generate`'s default, the same
    /// numbers as the checkpoint.
    #[default]
    F32Packed,
    /// bf16, widened in the kernels (half the bytes read per token).
    Bf16,
}

/// Everything [`Engine::start`] needs. Build it with [`EngineConfig::new`] and change the
/// fields that matter.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Hugging Face checkpoint directory of the base model.
    pub model_dir: PathBuf,
    /// Directory with tokenizer.json and the chat template (default: `model_dir`).
    pub tokenizer_dir: Option<PathBuf>,
    /// The base model's name as clients give it in `model`.
    pub base_name: String,
    /// The base model's digest (default: the canonical
    /// [`tributary_model::source::base_model_digest`] of `model_dir`, as jobs record it).
    pub base_digest: Option<Digest>,
    pub dtype: WeightDtype,
    /// Largest LoRA rank loaded; an adapter above it fails its requests.
    pub max_lora_rank: u32,
    /// Byte budget of resident adapters.
    pub adapter_cache_bytes: u64,
    /// Byte budget of the paged KV cache (allocated once).
    pub kv_cache_bytes: u64,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// Most tokens computed per step, prefill chunks and decodes together (at most 256, at
    /// least `max_batch_seqs`). A step's duration, which every decoding sequence waits for
    /// its next token, grows with it: smaller keeps decodes smooth while prompts are
    /// prefilled, larger prefills faster (docs/benchmarks.md, "Inference engine").
    pub max_batch_tokens: usize,
    /// Most sequences (choices) in the running batch.
    pub max_batch_seqs: usize,
    /// Most requests admitted and not finished; beyond it `Overloaded`.
    pub max_in_flight: usize,
    /// Context window (default: the model's `max_position_embeddings`, capped by the KV
    /// cache's capacity).
    pub context_window: Option<u32>,
    /// This worker's name in `tributary_adapter_resident{worker}`.
    pub worker_name: String,
    /// Share the keys and values of equal prompt prefixes (whole KV blocks, same adapter)
    /// between requests instead of computing them again.
    pub prefix_caching: bool,
    /// Threads loading adapters on cache misses (each load: fetch, parse, pack). More help
    /// where fetches wait on a remote store; on a busy 2-core machine two gave nothing
    /// (docs/benchmarks.md).
    pub adapter_loaders: usize,
    /// The device `--device` chose. The engine decodes on the host kernels (packed f32 or
    /// bf16), which exist only on the CPU: [`Engine::start`] refuses any other device with
    /// an error naming `--device`, rather than serving on the CPU behind its back.
    pub device: tributary_model::device::Selected,
}

impl EngineConfig {
    /// Defaults for serving `model_dir` under `base_name`.
    pub fn new(model_dir: impl Into<PathBuf>, base_name: impl Into<String>) -> Self {
        Self {
            model_dir: model_dir.into(),
            tokenizer_dir: None,
            base_name: base_name.into(),
            base_digest: None,
            dtype: WeightDtype::default(),
            max_lora_rank: 64,
            adapter_cache_bytes: 1 << 30,
            kv_cache_bytes: 512 << 20,
            kv_block_size: 16,
            max_batch_tokens: 128,
            max_batch_seqs: 64,
            max_in_flight: 256,
            context_window: None,
            worker_name: "local".to_owned(),
            prefix_caching: true,
            adapter_loaders: 1,
            device: tributary_model::device::Selected::cpu(),
        }
    }
}

/// Why the engine could not start (or an adapter could not be registered).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine config `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    #[error("loading the base model: {0}")]
    Model(String),
    #[error("adapter: {0}")]
    Adapter(String),
    #[error("the engine thread: {0}")]
    Thread(String),
}

/// What the engine holds now, for `/v1/models`, `/readyz` and membership reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// Resident adapters, most recently used first.
    pub resident: Vec<Resident>,
    /// Sequences waiting (for a batch slot, KV blocks or their adapter).
    pub queued: usize,
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests admitted and not finished.
    pub in_flight: usize,
    /// KV blocks in use and in all.
    pub kv_blocks_used: usize,
    pub kv_blocks: usize,
    /// Most KV blocks in use after any step since the start.
    pub kv_blocks_peak: usize,
    /// Steps run since the start.
    pub steps: u64,
    /// Most sequences computed in one step since the start.
    pub peak_batch: usize,
    /// Prompt tokens found in the prefix cache instead of computed, since the start.
    pub prefix_hit_tokens: u64,
}

/// Decrements the in-flight count when a request is done (however it ends).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The inference engine (see the module docs). Dropping it stops its threads.
pub struct Engine {
    info: EngineInfo,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    config: EngineConfig,
    commands: std_mpsc::SyncSender<Command>,
    in_flight: Arc<AtomicUsize>,
    status: Arc<Mutex<EngineStatus>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Retry hint sent with `Overloaded`.
const RETRY_AFTER_MS: u64 = 200;

impl Engine {
    /// Loads the base model and tokenizer and starts the engine's threads; adapters are
    /// fetched from `adapters` on first use.
    pub fn start(
        config: EngineConfig,
        adapters: Arc<dyn AdapterSource>,
    ) -> Result<Self, EngineError> {
        check_config(&config)?;
        config
            .device
            .require_cpu("the serving engine (host decode kernels)", "")
            .map_err(|e| EngineError::Config {
                field: "device",
                message: e.to_string(),
            })?;
        let device = config.device.device.clone();
        let mut model =
            CausalLm::load(&config.model_dir, &device).map_err(|e| model_err(&config, e))?;
        match config.dtype {
            WeightDtype::F32Packed => model.to_packed_f32(),
            WeightDtype::Bf16 => model.to_bf16(),
        }
        .map_err(|e| model_err(&config, e))?;
        let tok_dir = config.tokenizer_dir.as_ref().unwrap_or(&config.model_dir);
        let tokenizer = Tokenizer::from_dir(tok_dir)
            .map_err(|e| EngineError::Model(format!("tokenizer in {}: {e}", tok_dir.display())))?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(EngineError::Model(format!(
                "the tokenizer has {} tokens, the model's vocab_size is {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        let base_digest = match config.base_digest {
            Some(d) => d,
            // The canonical digest jobs record too (tensors and config, not file bytes), so
            // adapters trained by jobs match the base this engine serves.
            None => tributary_model::source::base_model_digest(&config.model_dir)
                .map(Digest)
                .map_err(|e| {
                    EngineError::Model(format!("digest of {}: {e}", config.model_dir.display()))
                })?,
        };
        let eos = match &model.generation_config().eos_token_ids {
            ids if !ids.is_empty() => ids.clone(),
            _ => tokenizer.eos_token_id().into_iter().collect(),
        };
        let tokenizer = Arc::new(tokenizer);
        let block_bytes = tributary_model::decoder::PagedKvCache::bytes_per_block(
            model.config(),
            config.kv_block_size,
        ) as u64;
        let blocks = (config.kv_cache_bytes / block_bytes.max(1)) as usize;
        if blocks == 0 {
            return Err(EngineError::Config {
                field: "kv_cache_bytes",
                message: format!(
                    "{} bytes hold no KV block of {} positions ({block_bytes} bytes)",
                    config.kv_cache_bytes, config.kv_block_size
                ),
            });
        }
        let capacity = (blocks * config.kv_block_size).min(u32::MAX as usize) as u32;
        let model_context = model
            .config()
            .max_position_embeddings
            .min(u32::MAX as usize) as u32;
        let context_window = config.context_window.unwrap_or(model_context).min(capacity);
        let info = EngineInfo {
            base_name: config.base_name.clone(),
            base_digest,
            context_window,
            max_lora_rank: config.max_lora_rank,
        };
        let status = Arc::new(Mutex::new(EngineStatus {
            kv_blocks: blocks,
            ..EngineStatus::default()
        }));
        let (commands, command_rx) = std_mpsc::sync_channel(config.max_in_flight + 64);
        let (load_tx, load_rx) = std_mpsc::sync_channel(config.max_in_flight + 16);
        let load_rx = Arc::new(Mutex::new(load_rx));
        let mut threads = Vec::new();
        for i in 0..config.adapter_loaders {
            let loader = loader::Loader {
                source: Arc::clone(&adapters),
                model_config: model.config().clone(),
                device: device.clone(),
                bf16: config.dtype == WeightDtype::Bf16,
                max_rank: config.max_lora_rank as usize,
                replies: commands.clone(),
            };
            let jobs = Arc::clone(&load_rx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("tributary-adapter-loader-{i}"))
                    .spawn(move || loader.run(&jobs))
                    .map_err(|e| EngineError::Thread(e.to_string()))?,
            );
        }
        let runner = runner::Runner::new(
            model,
            Arc::clone(&tokenizer),
            &config,
            blocks,
            command_rx,
            load_tx,
            Arc::clone(&status),
        )
        .map_err(|e| model_err(&config, e))?;
        let runner_thread = std::thread::Builder::new()
            .name("tributary-engine".into())
            .spawn(move || runner.run())
            .map_err(|e| EngineError::Thread(e.to_string()))?;
        Ok(Self {
            info,
            tokenizer,
            eos,
            config,
            commands,
            in_flight: Arc::new(AtomicUsize::new(0)),
            status,
            threads: std::iter::once(runner_thread).chain(threads).collect(),
        })
    }

    /// What the engine holds now.
    pub fn status(&self) -> EngineStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        s.in_flight = self.in_flight.load(Ordering::Acquire);
        s
    }

    /// Keeps an adapter resident (loading it now if needed) until [`Engine::unpin`].
    pub fn pin(&self, digest: Digest) -> Result<(), InferenceError> {
        self.send(Command::Pin(digest, true))
    }

    /// Lets a pinned adapter be evicted again.
    pub fn unpin(&self, digest: Digest) -> Result<(), InferenceError> {
        self.send(Command::Pin(digest, false))
    }

    /// Unloads a resident adapter (after a delete): at once if no request uses it, else
    /// as soon as the last one finishes. A pinned adapter stays (unpin it first).
    pub fn evict(&self, digest: Digest) -> Result<(), InferenceError> {
        self.send(Command::Evict(digest))
    }

    fn send(&self, cmd: Command) -> Result<(), InferenceError> {
        self.commands.try_send(cmd).map_err(|e| match e {
            std_mpsc::TrySendError::Full(_) => InferenceError::Overloaded {
                retry_after_ms: RETRY_AFTER_MS,
            },
            std_mpsc::TrySendError::Disconnected(_) => {
                InferenceError::Unavailable("the engine has stopped".into())
            }
        })
    }

    /// Tokenizes and checks a request, and admits it (see the module docs).
    fn admit(&self, req: InferenceRequest) -> Result<EventStream, InferenceError> {
        let p = &req.params;
        let invalid = |field: &str, message: String| InferenceError::Invalid {
            field: field.to_owned(),
            message,
        };
        if p.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1".into()));
        }
        if p.n == 0 {
            return Err(invalid("n", "must be at least 1".into()));
        }
        if p.n as usize > self.config.max_batch_seqs {
            return Err(invalid(
                "n",
                format!(
                    "{} choices exceed this engine's batch of {} sequences",
                    p.n, self.config.max_batch_seqs
                ),
            ));
        }
        if p.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "a stop string is empty".into()));
        }
        let sampling = SamplingConfig {
            temperature: p.temperature,
            top_k: None,
            top_p: p.top_p,
            repetition_penalty: 1.0,
            seed: p.seed.unwrap_or_else(random_seed),
        };
        sampling.validate().map_err(|e| {
            let field = if e.to_string().contains("top_p") {
                "top_p"
            } else {
                "temperature"
            };
            invalid(field, e.to_string())
        })?;
        let prompt = match &req.prompt {
            Prompt::Chat(messages) => {
                if messages.is_empty() {
                    return Err(invalid("messages", "the list is empty".into()));
                }
                self.tokenizer
                    .encode_chat(messages, true)
                    .map_err(|e| invalid("messages", format!("the chat template: {e}")))?
            }
            Prompt::Text(text) => self
                .tokenizer
                .encode_prompt(text)
                .map_err(|e| invalid("prompt", e.to_string()))?,
        };
        if prompt.is_empty() {
            return Err(invalid("prompt", "it encodes to no tokens".into()));
        }
        let context = self.info.context_window;
        if prompt.len() as u64 + u64::from(p.max_tokens) > u64::from(context) {
            return Err(InferenceError::ContextOverflow {
                prompt_tokens: prompt.len().min(u32::MAX as usize) as u32,
                max_tokens: p.max_tokens,
                context,
            });
        }
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.max_in_flight).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(InferenceError::Overloaded {
                retry_after_ms: RETRY_AFTER_MS,
            });
        }
        let guard = InFlight(Arc::clone(&self.in_flight));
        // Every event has a place: Started, at most one Text per token, a Finished per
        // choice, or one Failed; so the engine's sends never find the stream full.
        let capacity = 2 + (p.n as usize) * (p.max_tokens as usize + 2);
        let (events, stream) = mpsc::channel(capacity.min(1 << 24));
        let params = ChoiceParams {
            sampling,
            max_tokens: p.max_tokens as usize,
            stop: p.stop.clone(),
            eos: self.eos.clone(),
            logprobs: p.logprobs,
        };
        self.send(Command::Submit(Box::new(runner::Submitted {
            request_id: req.request_id,
            model: req.model,
            prompt,
            n: p.n,
            params,
            events,
            guard,
        })))?;
        Ok(stream)
    }
}

impl InferenceService for Engine {
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        let result = self.admit(request);
        Box::pin(async move { result })
    }

    fn info(&self) -> EngineInfo {
        self.info.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn check_config(c: &EngineConfig) -> Result<(), EngineError> {
    let bad = |field, message: String| Err(EngineError::Config { field, message });
    let max_tokens = tributary_model::decoder::HOST_KERNEL_MAX_ROWS;
    if c.max_batch_tokens == 0 || c.max_batch_tokens > max_tokens {
        return bad(
            "max_batch_tokens",
            format!(
                "{} is outside 1..={max_tokens} (the host step's rows)",
                c.max_batch_tokens
            ),
        );
    }
    if c.max_batch_seqs > c.max_batch_tokens {
        return bad(
            "max_batch_seqs",
            format!(
                "{} sequences cannot all decode within max_batch_tokens {}",
                c.max_batch_seqs, c.max_batch_tokens
            ),
        );
    }
    if c.kv_block_size == 0 {
        return bad("kv_block_size", "must be at least 1".into());
    }
    if c.max_batch_seqs == 0 {
        return bad("max_batch_seqs", "must be at least 1".into());
    }
    if c.max_in_flight == 0 {
        return bad("max_in_flight", "must be at least 1".into());
    }
    if c.adapter_loaders == 0 {
        return bad("adapter_loaders", "must be at least 1".into());
    }
    if c.max_lora_rank == 0 {
        return bad("max_lora_rank", "must be at least 1".into());
    }
    Ok(())
}

fn model_err(c: &EngineConfig, e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("{}: {e}", c.model_dir.display()))
}

/// A seed for a request that gave none.
#[allow(clippy::disallowed_methods)] // a request without a seed gets a fresh one, as OpenAI's API does
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}
