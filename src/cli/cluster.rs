//! `tributary coordinator` and `tributary worker`: one process per role in cluster mode.
//! Workers serve QUIC with mutual TLS and register in etcd under a lease; coordinators
//! campaign in etcd and the leader drives jobs over QUIC with its election revision as the
//! fencing token. Checkpoints and adapters go to the object store named by `--store`. With
//! `--http`, both roles serve `/healthz`, `/readyz` and `/metrics`, and every coordinator
//! (leader or standby) also serves the job API, writing submissions and cancels to etcd.
//! Every flag can also come from a `TRIBUTARY_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::termination::Termination;
use anyhow::{Context, bail};
use clap::Args;
use tributary_coordinator::etcd::{
    ELECTION, EtcdClient, EtcdJobStore, EtcdMembership, campaign, register_worker,
    register_worker_live,
};
use tributary_coordinator::etcd_tls::{EtcdTls, connect_with};
use tributary_coordinator::{Artifacts, CoordinatorConfig, EtcdJobs, spawn_coordinator};
use tributary_gateway::Readiness;
use tributary_protocol::link::QuicLinkFactory;
use tributary_protocol::{NodeId, NodeTls, QuicServer, ShutdownController, WorkerInfo};
use tributary_worker::toy::DelayedFactory;
use tributary_worker::{
    ExecutorFactory, SourceConfig, SourcedFactory, WorkerCore, WorkerService, spawn_worker,
};

/// Flags shared by both roles.
#[derive(Debug, Args)]
pub struct Common {
    /// etcd endpoint(s), comma-separated: all `http://`, or all `https://` with --etcd-ca.
    #[arg(long, env = "TRIBUTARY_ETCD")]
    pub etcd: String,
    /// PEM file of the CA that signed etcd's server certificate (for `https://` endpoints).
    #[arg(long, env = "TRIBUTARY_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// This process's client certificate (PEM) for an etcd started with
    /// `--client-cert-auth`; with --etcd-key. A node certificate from `tributary certs` serves.
    #[arg(long, env = "TRIBUTARY_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, env = "TRIBUTARY_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// Directory with `ca.pem`, `NAME.pem`, `NAME.key` (from `tributary certs`).
    #[arg(long, env = "TRIBUTARY_CERTS")]
    pub certs: PathBuf,
    /// This node's name (its certificate's name).
    #[arg(long, env = "TRIBUTARY_NAME")]
    pub name: String,
    /// Lease time-to-live in seconds (registration, leadership).
    #[arg(long, env = "TRIBUTARY_LEASE_TTL", default_value_t = 5)]
    pub lease_ttl: i64,
    /// Serve /healthz, /readyz and /metrics (and, on coordinators, the job API) here.
    #[arg(long, env = "TRIBUTARY_HTTP")]
    pub http: Option<SocketAddr>,
    /// On SIGTERM, /readyz answers 503 at once and the HTTP server keeps serving this many
    /// seconds before it closes (for load balancers that poll readiness).
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_DELAY_SECS", default_value_t = 0)]
    pub shutdown_delay_secs: u64,
}

impl Common {
    /// Connects to `--etcd`, over TLS when `--etcd-ca` is given.
    pub async fn connect_etcd(&self) -> anyhow::Result<EtcdClient> {
        let tls = EtcdTls::from_flags(
            self.etcd_ca.clone(),
            self.etcd_cert.clone(),
            self.etcd_key.clone(),
        )?;
        connect_with(&self.etcd, tls.as_ref())
            .await
            .with_context(|| format!("connecting to etcd at {}", self.etcd))
    }
}

/// `tributary coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub common: Common,
    /// Object store for checkpoints and adapters: `file:///dir`, a path, or
    /// `s3://bucket/prefix?endpoint=…` (every coordinator of a cluster must name the same).
    #[arg(long, env = "TRIBUTARY_STORE", default_value = "tributary-data/store")]
    pub store: String,
    /// Serve the job API without API keys (anyone who can reach --http may submit or cancel
    /// jobs). Without it, callers need a `build` key from the store's key store
    /// (`tributary keys create --store …`).
    #[arg(long, env = "TRIBUTARY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// The reward log the leader pays attributed answers into: its replicas, comma-separated
    /// (`file:///dir`, paths or `s3://…`; default: the --store itself, where the gateway's
    /// `/v1/rewards` reads it); `off`: the leader pays nothing.
    #[arg(long, env = "TRIBUTARY_REWARD_LOG")]
    pub reward_log: Option<String>,
    /// The leader's reward window in milliseconds: how often it takes up the answers the
    /// serving workers attributed and appends their rewards as one batch.
    #[arg(long, env = "TRIBUTARY_REWARD_WINDOW_MS", default_value_t = 1000)]
    pub reward_window_ms: u64,
}

/// `tributary worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: Common,
    /// QUIC address to listen on.
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,
    /// Address to advertise in etcd (default: the bound listen address).
    #[arg(long, env = "TRIBUTARY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Jobs this worker runs at once.
    #[arg(long, env = "TRIBUTARY_SLOTS", default_value_t = 1)]
    pub slots: u32,
    /// Where this worker trains, advertised in membership (with whether it is a hardware
    /// GPU) for `resources.gpu` placement; the serving engine (--base-model) is CPU-only.
    #[command(flatten)]
    pub device: super::device_arg::DeviceArg,
    /// Test knob: sleep this long per micro-batch (widens timing windows in fault tests).
    #[arg(
        long,
        env = "TRIBUTARY_MICRO_BATCH_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub micro_batch_delay_ms: u64,
    /// Object store that `data = "datanet://NAME@VERSION"` is resolved against (the store
    /// `tributary datanet` writes to): `file:///dir`, a path or `s3://bucket/prefix?…`.
    #[arg(long, env = "TRIBUTARY_STORE")]
    pub store: Option<String>,
    /// Cache for base models downloaded from URLs and materialised training data.
    #[arg(
        long,
        env = "TRIBUTARY_CACHE_DIR",
        default_value = "tributary-data/cache"
    )]
    pub cache_dir: PathBuf,
    /// A directory jobs may read base models and data from (repeatable; default: the
    /// cache directory and a local --store). Any other local path is refused.
    #[arg(
        long = "allow-path",
        env = "TRIBUTARY_ALLOW_PATHS",
        value_delimiter = ','
    )]
    pub allow_path: Vec<PathBuf>,
    /// Serving (with --base-model): the QUIC address gateways send inference to.
    #[arg(long, env = "TRIBUTARY_SERVE_LISTEN", default_value = "127.0.0.1:7451")]
    pub serve_listen: SocketAddr,
    /// Serving: the inference address to advertise in etcd (default: the bound one).
    #[arg(long, env = "TRIBUTARY_SERVE_ADVERTISE")]
    pub serve_advertise: Option<String>,
    /// On SIGTERM: leave membership first (gateways stop routing here, a running job is
    /// re-sharded), then let running answers finish for at most this long before exiting.
    #[arg(long, env = "TRIBUTARY_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// Serving flags: --base-model (one per worker), --max-lora-rank, --adapter-cache-mb,
    /// --kv-cache-mb, --max-in-flight (an overload refusal beyond, 429 at the gateway).
    #[command(flatten)]
    pub serve: super::serve_engine::ServeArgs,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub(super) fn load(common: &Common) -> anyhow::Result<(NodeId, NodeTls)> {
    let node = NodeId::new(common.name.clone()).context("--name")?;
    let tls = NodeTls::load(&common.certs, &node).with_context(|| {
        format!(
            "loading certificates for {node} from {}",
            common.certs.display()
        )
    })?;
    Ok((node, tls))
}

pub fn run_coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    runtime()?.block_on(coordinator(args))
}

/// etcd answers a read.
pub(super) async fn etcd_ready(client: &EtcdClient) -> Result<(), String> {
    let mut c = client.clone();
    let get = c.get("/tributary/readyz", None);
    match tokio::time::timeout(Duration::from_secs(2), get).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("etcd: {e}")),
        Err(_) => Err("etcd: no answer within 2 s".into()),
    }
}

/// The HTTP server of a role, if it has one.
type HttpTask = Option<tokio::task::JoinHandle<std::io::Result<()>>>;

/// Serves `app` on `--http` (if given) until `--shutdown-delay-secs` after SIGTERM/Ctrl-C.
async fn serve_http(
    common: &Common,
    term: &Termination,
    app: tributary_gateway::Router,
) -> anyhow::Result<HttpTask> {
    let Some(addr) = common.http else {
        return Ok(None);
    };
    let close = term
        .clone()
        .then_after(Duration::from_secs(common.shutdown_delay_secs));
    let (bound, task) = tributary_gateway::serve(addr, app, close)
        .await
        .with_context(|| format!("listening on --http {addr}"))?;
    eprintln!("http on {bound}");
    Ok(Some(task))
}

/// After SIGTERM, waits for the HTTP server to close (`--shutdown-delay-secs` after the
/// signal); when the role ended for another reason the server is left to the exit.
async fn close_http(term: &Termination, http: HttpTask) {
    if let Some(task) = http
        && term.is_signalled()
    {
        let _ = task.await;
    }
}

async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let (node, tls) = load(&args.common)?;
    let artifacts = Artifacts::open(&args.store).context("--store")?;
    let client = args.common.connect_etcd().await?;
    let term = Termination::listen();
    let (c, s) = (client.clone(), artifacts.clone());
    let ready: Readiness = term.guard(Arc::new(move || {
        let (c, s) = (c.clone(), s.clone());
        Box::pin(async move {
            etcd_ready(&c).await?;
            let mut c2 = c.clone();
            let leader = c2.leader(ELECTION);
            match tokio::time::timeout(Duration::from_secs(2), leader).await {
                Ok(Ok(_)) => {}
                _ => return Err("no coordinator leader is known".into()),
            }
            s.ping().await.map_err(|e| format!("store: {e}"))
        })
    }));
    let store = tributary_ledger::store::Store::open(&args.store).context("--store")?;
    let auth = if args.insecure_no_auth {
        eprintln!("WARNING: --insecure-no-auth: the job API takes requests without API keys");
        tributary_gateway::Auth::open()
    } else {
        tributary_gateway::Auth::keys(tributary_ledger::keys::KeyStore::new(store.clone()))
    };
    let app = tributary_gateway::app(tributary_gateway::Parts {
        reward_log: None,
        auth,
        store,
        engine: None,
        jobs: Some(Arc::new(EtcdJobs(client.clone()))),
        ready,
        config: tributary_gateway::ServeConfig::default(),
    });
    let http = serve_http(&args.common, &term, app).await?;
    let ctl = ShutdownController::new();
    let sd = ctl.subscribe();
    tracing::info!(%node, "campaigning for leadership");
    let mut lead = tokio::select! {
        l = campaign(&client, &node, args.common.lease_ttl, &sd) => l.context("campaign")?,
        _ = term.signalled() => {
            ctl.shutdown().await;
            close_http(&term, http).await;
            return Ok(());
        }
    };
    eprintln!("{node}: leader with fencing token {}", lead.token);
    let rewards = start_rewards(&args, lead.token).await;
    let membership = EtcdMembership::start(client.clone(), ctl.subscribe());
    let (actor, handle) = spawn_coordinator(CoordinatorConfig {
        fencing: lead.token,
        membership: Arc::new(membership),
        store: Arc::new(EtcdJobStore::new(client.clone(), &lead)),
        links: Arc::new(QuicLinkFactory::new(node.clone(), tls)),
        artifacts,
        tick: Duration::from_millis(200),
    })
    .await?;
    let outcome = tokio::select! {
        _ = term.signalled() => Ok(()),
        _ = lead.lost.changed() => Err("leadership lost: lease expired"),
        _ = handle => Err("fenced out: a worker refused this leader's token"),
    };
    actor.stop(None);
    if let Some(r) = rewards {
        r.stop();
    }
    drop(sd);
    ctl.shutdown().await;
    close_http(&term, http).await;
    match outcome {
        Ok(()) => Ok(()),
        Err(why) => bail!("{node}: {why}"),
    }
}

/// The leader's reward actor (`tributary_worker::attribution::actor`): it pays the answers
/// the serving workers attributed into the reward log, under this leader's fencing token.
/// A log that cannot be opened now is retried every window; jobs are led meanwhile.
async fn start_rewards(
    args: &CoordinatorArgs,
    token: u64,
) -> Option<tributary_worker::attribution::actor::LeaderRewards> {
    let urls: Vec<String> = match args.reward_log.as_deref() {
        Some("off") => return None,
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        None => vec![args.store.clone()],
    };
    let opened = tributary_ledger::rewards::Replicas::open(&urls)
        .map_err(|e| anyhow::anyhow!("--reward-log {}: {e}", urls.join(",")));
    let store = tributary_ledger::store::Store::open(&args.store)
        .map_err(|e| anyhow::anyhow!("--store {}: {e}", args.store));
    let window = Duration::from_millis(args.reward_window_ms.max(10));
    let spawned = match (opened, store) {
        (Ok(replicas), Ok(store)) => {
            tributary_worker::attribution::actor::spawn_leader(replicas, store, token, window)
                .await
                .map_err(anyhow::Error::from)
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    match spawned {
        Ok(a) => {
            eprintln!(
                "reward actor: paying attributed answers into {} under fencing token {token}",
                urls.join(",")
            );
            Some(a)
        }
        Err(e) => {
            eprintln!("WARNING: reward actor not started (attributed answers wait unpaid): {e:#}");
            None
        }
    }
}

pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    runtime()?.block_on(worker(args))
}

async fn worker(mut args: WorkerArgs) -> anyhow::Result<()> {
    // The device first: a request that cannot be met fails before anything starts.
    let selected = args.device.select()?;
    super::device_arg::report(&selected);
    args.serve.device = args.device.for_serving(&selected);
    let (node, tls) = load(&args.common)?;
    // `builtin:linear` specs run the reference model; others the LoRA trainer, fetching
    // URL models and datanet data through --store and --cache-dir.
    let mut roots = vec![args.cache_dir.clone()];
    roots.extend(
        args.store
            .as_deref()
            .and_then(super::allow::local_store_dir),
    );
    roots.extend(args.allow_path.iter().cloned());
    let mut factory: Arc<dyn ExecutorFactory> = Arc::new(SourcedFactory {
        device: selected.clone(),
        sources: SourceConfig {
            store: args.store.clone(),
            cache_dir: args.cache_dir.clone(),
            allow: super::allow::allow_paths(roots)?,
        },
    });
    if args.micro_batch_delay_ms > 0 {
        factory = Arc::new(DelayedFactory {
            inner: factory,
            delay: Duration::from_millis(args.micro_batch_delay_ms),
        });
    }
    let (actor, _) = spawn_worker(WorkerCore::new(node.clone(), factory)).await?;
    let server = QuicServer::bind(args.listen, node.clone(), &tls)
        .with_context(|| format!("listening on {}", args.listen))?;
    let bound = server.local_addr()?;
    let ctl = ShutdownController::new();
    let serving =
        tokio::spawn(server.run(Arc::new(WorkerService::new(actor.clone())), ctl.subscribe()));
    let inference = match &args.serve.base_model {
        Some(_) => Some(Arc::new(
            super::worker_serve::Serving::start(
                &args.serve,
                args.serve_listen,
                args.serve_advertise.clone(),
                args.store.as_deref(),
                &node,
                &tls,
                ctl.subscribe(),
            )
            .await?,
        )),
        None => None,
    };
    let client = args.common.connect_etcd().await?;
    let info = WorkerInfo {
        node: node.clone(),
        addr: args.advertise.unwrap_or_else(|| bound.to_string()),
        device: super::device_arg::described(&selected),
        gpu: selected.choice.is_gpu(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: 0,
        slots: args.slots,
        free_slots: args.slots,
        serving: None,
    };
    let c = client.clone();
    let term = Termination::listen();
    let ready: Readiness = term.guard(Arc::new(move || {
        let c = c.clone();
        Box::pin(async move {
            tributary_worker::metrics::actors_ready()?;
            etcd_ready(&c).await
        })
    }));
    let http = serve_http(&args.common, &term, tributary_gateway::ops_router(ready)).await?;
    // Membership has its own shutdown: on SIGTERM it ends first (the lease is revoked), so
    // gateways stop routing here while running answers drain.
    let membership = ShutdownController::new();
    let reg = match &inference {
        Some(s) => {
            let live = s.clone().publish(info, membership.subscribe());
            register_worker_live(client, live, args.common.lease_ttl, membership.subscribe())
                .await?
        }
        None => {
            register_worker(client, info, args.common.lease_ttl, membership.subscribe()).await?
        }
    };
    eprintln!("{node}: serving on {bound}");
    term.signalled().await;
    membership.shutdown().await;
    let _ = reg.await;
    if let Some(s) = &inference {
        s.drain(&node, Duration::from_secs(args.drain_timeout_secs))
            .await;
    }
    ctl.shutdown().await;
    let _ = serving.await;
    actor.stop(None);
    close_http(&term, http).await;
    Ok(())
}
