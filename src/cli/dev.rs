//! `tributary dev`: the coordinator, N in-process workers, the job API and (with
//! `--base-model`) the OpenAI-compatible inference API in one process —
//! in-memory membership and job records, a `file://` object store under the data directory,
//! nothing to install. The `job` commands talk to it exactly as to a cluster. Datanets in
//! that store (`tributary datanet … --store <data-dir>/store`) are jobs' `datanet://` data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tributary_coordinator::{
    ActorJobs, Artifacts, CoordinatorConfig, MemoryJobStore, StaticMembership, spawn_coordinator,
};
use tributary_gateway::{Auth, Parts, ServeConfig};
use tributary_ledger::keys::KeyStore;
use tributary_ledger::store::Store;
use tributary_protocol::{NodeId, WorkerInfo};
use tributary_worker::{LocalLinkFactory, SourceConfig, SourcedFactory, WorkerCore, spawn_worker};

/// `tributary dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the object store (checkpoints, adapters) lives.
    #[arg(long, env = "TRIBUTARY_DATA_DIR", default_value = "tributary-data")]
    pub data_dir: PathBuf,
    /// In-process workers.
    #[arg(long, env = "TRIBUTARY_WORKERS", default_value_t = 1)]
    pub workers: u32,
    /// Job API, /healthz, /readyz and /metrics.
    #[arg(long, env = "TRIBUTARY_HTTP", default_value = "127.0.0.1:7400")]
    pub http: SocketAddr,
    /// Cache for base models downloaded from URLs and materialised training data
    /// (default: `cache` under the data directory).
    #[arg(long, env = "TRIBUTARY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A directory jobs may read base models and data from (repeatable; default: the
    /// directory `dev` was started in and the data directory). Any other path is refused.
    #[arg(
        long = "allow-path",
        env = "TRIBUTARY_ALLOW_PATHS",
        value_delimiter = ','
    )]
    pub allow_path: Vec<PathBuf>,
    /// Serve every route without API keys (anyone who can reach --http may run jobs and
    /// inference). Without it, an admin key is printed and written to <data-dir>/admin.key.
    #[arg(long, env = "TRIBUTARY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub serve: super::serve_engine::ServeArgs,
    /// Where the in-process workers train (the serving engine, with --base-model, is
    /// CPU-only and refuses another device).
    #[command(flatten)]
    pub device: super::device_arg::DeviceArg,
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    super::cluster::runtime()?.block_on(dev(args))
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let workers = args.workers;
    let server = start(&args, super::cluster::terminate()).await?;
    if let Some(key) = &server.admin_key {
        eprintln!(
            "tributary dev: admin API key {key} (in {})",
            args.data_dir.join(super::api_key::ADMIN_KEY_FILE).display()
        );
    }
    eprintln!(
        "tributary dev: {workers} worker(s), store {}, job API on {}",
        server.store_url, server.url
    );
    if let Some(info) = &server.serving {
        eprintln!(
            "tributary dev: serving {} ({}) with the OpenAI API at {}/v1",
            info.base_name, info.base_digest, server.url
        );
    }
    server.wait().await
}

/// The one in-process coordinator's fencing token (no election in embedded mode).
const DEV_FENCING: u64 = 1;

/// A running `dev`: its HTTP server, coordinator and workers, until the shutdown future
/// given to [`start`] resolves.
pub struct DevServer {
    /// `http://ADDR` of the bound HTTP server.
    pub url: String,
    /// The admin API key (none with `--insecure-no-auth`).
    pub admin_key: Option<String>,
    /// The object store's URL.
    pub store_url: String,
    /// The served base model, with `--base-model`.
    pub serving: Option<tributary_protocol::EngineInfo>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    coordinator: ractor::ActorRef<tributary_coordinator::CoordinatorMsg>,
    workers: Vec<ractor::ActorRef<tributary_worker::WorkerMsg>>,
}

impl DevServer {
    /// Waits for the HTTP server to stop (after the shutdown future resolved), then stops
    /// the coordinator and the workers.
    pub async fn wait(self) -> anyhow::Result<()> {
        let r = self.server.await;
        self.coordinator.stop(None);
        for a in self.workers {
            a.stop(None);
        }
        r.context("HTTP server")?.context("HTTP server")?;
        Ok(())
    }
}

/// Starts everything `tributary dev` runs, serving until `shutdown` resolves. `--http`
/// may name port 0; [`DevServer::url`] is the bound address.
pub async fn start(
    args: &DevArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<DevServer> {
    if args.workers == 0 || args.workers > 64 {
        anyhow::bail!("--workers {} is out of range: must be 1..=64", args.workers);
    }
    // The device first: a request that cannot be met fails before anything starts.
    let selected = args.device.select()?;
    super::device_arg::report(&selected);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating --data-dir {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let store_dir = data_dir.join("store");
    let artifacts = Artifacts::open(&store_dir.to_string_lossy())
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    // Datanets live in the same store: `tributary datanet upload --store <this store>`, then
    // `data = "datanet://NAME@latest"` in a job.
    // What jobs may read, and adapter registrations by `url` too.
    let allow = super::allow::allow_paths(
        [std::env::current_dir()?, args.data_dir.clone()]
            .into_iter()
            .chain(args.cache_dir.clone())
            .chain(args.allow_path.iter().cloned()),
    )?;
    let factory = Arc::new(SourcedFactory {
        device: selected.clone(),
        sources: SourceConfig {
            store: Some(format!("file://{}", store_dir.display())),
            cache_dir: args
                .cache_dir
                .clone()
                .unwrap_or_else(|| store_dir.with_file_name("cache")),
            allow: allow.clone(),
        },
    });
    let mut links = LocalLinkFactory::new();
    let mut infos = Vec::new();
    let mut actors = Vec::new();
    for i in 0..args.workers {
        let node = NodeId::new(format!("local-{i}"))?;
        let (a, _) = spawn_worker(WorkerCore::new(node.clone(), factory.clone())).await?;
        links.insert(node.clone(), a.clone());
        infos.push(WorkerInfo {
            node,
            addr: String::new(),
            device: super::device_arg::described(&selected),
            gpu: selected.choice.is_gpu(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: 0,
            slots: 1,
            free_slots: 1,
            serving: None,
        });
        actors.push(a);
    }
    let (coord, _) = spawn_coordinator(CoordinatorConfig {
        fencing: DEV_FENCING,
        membership: Arc::new(StaticMembership::new(infos.clone())),
        store: Arc::new(MemoryJobStore::default()),
        links: Arc::new(links),
        artifacts: artifacts.clone(),
        tick: Duration::from_millis(100),
    })
    .await?;
    let ready_store = artifacts.clone();
    let ready: tributary_gateway::Readiness = Arc::new(move || {
        let s = ready_store.clone();
        Box::pin(async move {
            tributary_worker::metrics::actors_ready()?;
            s.ping().await.map_err(|e| format!("store: {e}"))
        })
    });
    let store = Store::open(&store_dir.to_string_lossy())?;
    // The reward log: `tributary ledger` reads it here by default (./tributary-data/ledger).
    let ledger = data_dir.join("ledger");
    let keys = (!args.insecure_no_auth).then(|| KeyStore::new(store.clone()));
    let auth = match &keys {
        None => {
            eprintln!(
                "WARNING: --insecure-no-auth: no API keys; anyone who can reach {} can run jobs and inference",
                args.http
            );
            Auth::open()
        }
        Some(keys) => Auth::keys(keys.clone()),
    };
    let engine: Option<tributary_protocol::SharedInference> = match &args.serve.base_model {
        Some(dir) => {
            let (base_dir, attr_store) = (dir.clone(), store.clone());
            let mut serve = args.serve.clone();
            serve.device = args.device.for_serving(&selected);
            let (serve, dir, store, rt) = (
                serve,
                dir.clone(),
                store.clone(),
                tokio::runtime::Handle::current(),
            );
            let mut e = tokio::task::spawn_blocking(move || {
                super::serve_engine::DevEngine::start(&serve, &dir, store, rt)
            })
            .await??;
            if args.serve.attribution == "on" {
                let sink = super::serve_engine::start_attribution(
                    &args.serve,
                    &base_dir,
                    attr_store,
                    &ledger,
                )
                .await?;
                e = e.with_attribution(sink);
            }
            Some(Arc::new(e))
        }
        None => None,
    };
    let serving = engine.as_ref().map(|e| e.info());
    std::fs::create_dir_all(&ledger)
        .with_context(|| format!("creating the reward log in {}", ledger.display()))?;
    let app = tributary_gateway::app(Parts {
        reward_log: Some(Store::open(&ledger.to_string_lossy())?),
        auth,
        store,
        engine,
        jobs: Some(Arc::new(ActorJobs {
            actor: coord.clone(),
            fencing: DEV_FENCING,
            workers: infos,
        })),
        ready,
        config: ServeConfig {
            max_in_flight: args.serve.max_in_flight,
            base_model: args.serve.base_model.clone(),
            adapter_url_allow: allow,
            ..ServeConfig::default()
        },
    });
    let (bound, server) = tributary_gateway::serve(args.http, app, shutdown)
        .await
        .with_context(|| format!("listening on --http {}", args.http))?;
    let url = format!("http://{bound}");
    let admin_key = match &keys {
        Some(keys) => Some(super::api_key::dev_admin_key(keys, &args.data_dir, &url).await?),
        None => None,
    };
    Ok(DevServer {
        url,
        admin_key,
        store_url: artifacts.url().to_string(),
        serving,
        server,
        coordinator: coord,
        workers: actors,
    })
}
