//! `tributary dev --base-model DIR`: the worker's inference engine over the dev store's
//! adapter registry, seen by the gateway through the [`InferenceService`] contract,
//! including the parts that need the engine: which adapters are resident (and pinned),
//! unloading a deleted one, and checking an uploaded adapter against the base model's
//! shapes before it is registered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tributary_ledger::adapters::AdapterRegistry;
use tributary_ledger::store::Store;
use tributary_model::config::ModelConfig;
use tributary_protocol::{
    AdapterFiles, BoxFuture, Digest, EngineInfo, EventStream, InferenceError, InferenceRequest,
    InferenceService, ResidentAdapter,
};
use tributary_worker::engine::{AdapterStore, Engine, EngineConfig};

/// Serving flags of `tributary dev`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The device the command's `--device` chose (not a flag of its own): the engine
    /// refuses any but the CPU (it decodes on the host kernels).
    #[arg(skip)]
    pub device: tributary_model::device::Selected,
    /// Serve the OpenAI API over this base model (a Hugging Face checkpoint directory); the
    /// adapters its jobs train are served by name and digest as soon as the jobs succeed.
    #[arg(long, env = "TRIBUTARY_BASE_MODEL")]
    pub base_model: Option<PathBuf>,
    /// The base model's name in `model` (default: the directory's name).
    #[arg(long, env = "TRIBUTARY_SERVED_NAME")]
    pub served_name: Option<String>,
    /// Largest LoRA rank served.
    #[arg(long, env = "TRIBUTARY_MAX_LORA_RANK", default_value_t = 64)]
    pub max_lora_rank: u32,
    /// Byte budget of resident adapters, in MiB.
    #[arg(long, env = "TRIBUTARY_ADAPTER_CACHE_MB", default_value_t = 1024)]
    pub adapter_cache_mb: u64,
    /// Byte budget of the KV cache, in MiB.
    #[arg(long, env = "TRIBUTARY_KV_CACHE_MB", default_value_t = 512)]
    pub kv_cache_mb: u64,
    /// Inference requests in flight at once (429 with Retry-After beyond).
    #[arg(long, env = "TRIBUTARY_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Attribute every answer of an adapter and pay its fee into the reward log
    /// (`<data-dir>/ledger`), after the answer has been sent.
    #[arg(long, env = "TRIBUTARY_ATTRIBUTION", default_value = "on", value_parser = ["on", "off"])]
    pub attribution: String,
    /// Price of one generated token, in the reward log's smallest unit (all adapters).
    #[arg(long, env = "TRIBUTARY_PRICE_PER_TOKEN", default_value_t = 1000)]
    pub price_per_token: u64,
    /// The price for one adapter: `DIGEST=PRICE` (repeatable).
    #[arg(long = "adapter-price", value_name = "DIGEST=PRICE")]
    pub adapter_price: Vec<String>,
    /// The adapter builder's part of each fee (0 to 1); the contributors get the rest.
    #[arg(long, env = "TRIBUTARY_BUILDER_SHARE", default_value_t = 0.2)]
    pub builder_share: f64,
    /// Finished answers queued in memory for attribution; beyond, they go to the durable
    /// backlog in the store.
    #[arg(long, env = "TRIBUTARY_ATTRIBUTION_QUEUE", default_value_t = 1024)]
    pub attribution_queue: usize,
    /// The reward actor's aggregation window, in milliseconds (`tributary dev`; a cluster's
    /// workers leave paying to the coordinator leader, which has its own flag).
    #[arg(long, env = "TRIBUTARY_REWARD_WINDOW_MS", default_value_t = 500)]
    pub reward_window_ms: u64,
    /// Before each answer's attribution, wait up to this many milliseconds for the answers
    /// being generated to finish (attribution yields the CPU to serving; 0: never wait).
    #[arg(long, env = "TRIBUTARY_ATTRIBUTION_DEFER_MS", default_value_t = 2000)]
    pub attribution_defer_ms: u64,
    /// Attempts after the first for a failed attribution (back-off from 1 s, doubling);
    /// after them it is recorded as failed with its error.
    #[arg(long, env = "TRIBUTARY_ATTRIBUTION_RETRIES", default_value_t = 3)]
    pub attribution_retries: u32,
}

/// Starts online attribution for `tributary dev` (see `tributary_worker::attribution`):
/// the attribution thread over its own copy of `base`, and the reward actor writing the
/// reward log in `ledger_dir`.
pub async fn start_attribution(
    args: &ServeArgs,
    base: &Path,
    store: Store,
    ledger_dir: &Path,
) -> anyhow::Result<tributary_worker::attribution::AttributionSink> {
    let backlog = tributary_worker::attribution::record::DEV_BACKLOG.to_string();
    let cfg = attribution_config(args, base, backlog)?;
    std::fs::create_dir_all(ledger_dir)
        .with_context(|| format!("creating the reward log in {}", ledger_dir.display()))?;
    let replicas = tributary_ledger::rewards::Replicas::open(&[ledger_dir.display().to_string()])?;
    let rewards = tributary_worker::attribution::Rewards::Actor(replicas);
    let (sink, _actor) = tributary_worker::attribution::start(cfg, store, rewards)
        .await
        .context("starting attribution")?;
    Ok(sink)
}

/// Starts online attribution on a cluster's serving worker: records and pending rewards in
/// `store`, paid by the coordinator leader's reward actor. The worker's durable backlog is
/// its own (`attribution/backlog/<node>/`).
pub async fn start_worker_attribution(
    args: &ServeArgs,
    base: &Path,
    store: Store,
    node: &str,
) -> anyhow::Result<tributary_worker::attribution::AttributionSink> {
    let backlog = tributary_worker::attribution::record::worker_backlog(node);
    let cfg = attribution_config(args, base, backlog)?;
    let rewards = tributary_worker::attribution::Rewards::Leader;
    let (sink, _) = tributary_worker::attribution::start(cfg, store, rewards)
        .await
        .context("starting attribution")?;
    Ok(sink)
}

fn attribution_config(
    args: &ServeArgs,
    base: &Path,
    backlog: String,
) -> anyhow::Result<tributary_worker::attribution::AttributionConfig> {
    use tributary_worker::attribution::{AttributionConfig, Params, Pricing};
    if !(0.0..=1.0).contains(&args.builder_share) {
        anyhow::bail!(
            "--builder-share {} is out of range: must be 0..=1",
            args.builder_share
        );
    }
    let mut per_adapter = std::collections::HashMap::new();
    for p in &args.adapter_price {
        let (d, v) = p
            .split_once('=')
            .with_context(|| format!("--adapter-price {p:?}: expected DIGEST=PRICE"))?;
        let v: u64 = v
            .parse()
            .with_context(|| format!("--adapter-price {p:?}: the price is not an integer"))?;
        per_adapter.insert(d.to_string(), v);
    }
    if args.attribution_retries > 10 {
        anyhow::bail!(
            "--attribution-retries {} is too many: at most 10",
            args.attribution_retries
        );
    }
    Ok(AttributionConfig {
        base_model: base.to_path_buf(),
        params: Params::default(),
        pricing: Pricing {
            price_per_token: args.price_per_token,
            per_adapter,
            builder_ppm: (args.builder_share * 1e6).round() as u32,
        },
        queue: args.attribution_queue.max(1),
        window: std::time::Duration::from_millis(args.reward_window_ms.max(10)),
        max_batch: 256,
        defer: std::time::Duration::from_millis(args.attribution_defer_ms),
        retries: args.attribution_retries,
        retry_backoff: std::time::Duration::from_secs(1),
        backlog,
    })
}

/// The engine with what the gateway contract asks beyond `submit`.
pub struct DevEngine {
    engine: Engine,
    model: ModelConfig,
    max_rank: u32,
    attribution: Option<tributary_worker::attribution::AttributionSink>,
}

impl DevEngine {
    /// Loads the base model (blocking: call it off the async threads).
    pub fn start(
        args: &ServeArgs,
        dir: &Path,
        store: Store,
        runtime: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        Self::start_named(args, dir, store, runtime, "local")
    }

    /// [`Self::start`] naming the worker in the engine's metrics (cluster workers).
    pub fn start_named(
        args: &ServeArgs,
        dir: &Path,
        store: Store,
        runtime: tokio::runtime::Handle,
        worker_name: &str,
    ) -> anyhow::Result<Self> {
        let name = args.served_name.clone().unwrap_or_else(|| {
            dir.file_name()
                .map_or("base".into(), |n| n.to_string_lossy().into_owned())
        });
        let model =
            ModelConfig::load(dir).with_context(|| format!("--base-model {}", dir.display()))?;
        let mut config = EngineConfig::new(dir, name);
        config.max_lora_rank = args.max_lora_rank;
        config.adapter_cache_bytes = args.adapter_cache_mb << 20;
        config.kv_cache_bytes = args.kv_cache_mb << 20;
        config.max_in_flight = args.max_in_flight;
        config.worker_name = worker_name.to_owned();
        config.device = args.device.clone();
        let adapters = AdapterStore::with_registry(AdapterRegistry::new(store), runtime);
        let engine = Engine::start(config, Arc::new(adapters))
            .with_context(|| format!("starting the engine on {}", dir.display()))?;
        Ok(Self {
            engine,
            model,
            max_rank: args.max_lora_rank,
            attribution: None,
        })
    }

    /// Attributes every adapter answer through `sink` once it has been sent.
    pub fn with_attribution(
        mut self,
        sink: tributary_worker::attribution::AttributionSink,
    ) -> Self {
        self.attribution = Some(sink);
        self
    }
}

impl DevEngine {
    /// What the engine holds and does now (membership reports).
    pub fn status(&self) -> tributary_worker::engine::EngineStatus {
        self.engine.status()
    }
}

fn check_files(
    files: &AdapterFiles,
    model: &ModelConfig,
    max_rank: u32,
) -> Result<(), InferenceError> {
    let invalid = |message: String| InferenceError::Invalid {
        field: "files".into(),
        message,
    };
    let dir = std::env::temp_dir().join(format!("tributary-adapter-check-{:016x}", rand_u64()));
    std::fs::create_dir_all(&dir).map_err(|e| InferenceError::Internal(e.to_string()))?;
    let result = (|| {
        for (name, bytes) in &files.files {
            std::fs::write(dir.join(name), bytes)
                .map_err(|e| InferenceError::Internal(e.to_string()))?;
        }
        let cfg =
            tributary_model::lora::LoraConfig::load(&dir).map_err(|e| invalid(e.to_string()))?;
        if cfg.r as u64 > u64::from(max_rank) {
            return Err(invalid(format!(
                "the adapter's rank is {}; this server loads ranks up to {max_rank} (--max-lora-rank)",
                cfg.r
            )));
        }
        // A shape check only: the adapter is parsed on the CPU whatever the engine runs on.
        let device = tributary_model::device::cpu_device();
        tributary_model::lora::LoraAdapter::load(&dir, model, &device)
            .map(|_| ())
            .map_err(|e| invalid(format!("the adapter does not fit this base model: {e}")))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl InferenceService for DevEngine {
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        let Some(sink) = self.attribution.clone() else {
            return self.engine.submit(request);
        };
        let tapped = request.clone();
        let submitted = self.engine.submit(request);
        Box::pin(async move {
            submitted
                .await
                .map(|events| tributary_worker::attribution::tap::tap(&tapped, events, &sink))
        })
    }

    fn info(&self) -> EngineInfo {
        self.engine.info()
    }

    fn resident(&self) -> Vec<ResidentAdapter> {
        self.engine
            .status()
            .resident
            .into_iter()
            .map(|r| ResidentAdapter {
                digest: r.digest,
                bytes: r.bytes,
                pinned: r.pinned,
            })
            .collect()
    }

    fn unload(&self, adapter: Digest) -> BoxFuture<'_, Result<(), InferenceError>> {
        let r = self.engine.evict(adapter);
        Box::pin(async move { r })
    }

    fn set_pinned(
        &self,
        adapter: Digest,
        pinned: bool,
    ) -> BoxFuture<'_, Result<(), InferenceError>> {
        let r = if pinned {
            self.engine.pin(adapter)
        } else {
            self.engine.unpin(adapter)
        };
        Box::pin(async move { r })
    }

    fn check_adapter(&self, files: AdapterFiles) -> BoxFuture<'_, Result<(), InferenceError>> {
        let model = self.model.clone();
        let max_rank = self.max_rank;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || check_files(&files, &model, max_rank))
                .await
                .map_err(|e| InferenceError::Internal(e.to_string()))?
        })
    }
}
