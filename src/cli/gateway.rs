//! `tributary gateway`: the cluster's OpenAI-compatible HTTP edge. It follows the serving
//! workers in etcd (`tributary worker --base-model …`), routes each request by rendezvous
//! hashing with bounded load among the workers holding its adapter (else the least loaded)
//! and reaches them over QUIC with mutual TLS; a request not yet streaming moves to another
//! worker when its worker dies. API keys, adapter names and the registry live in the
//! object store named by `--store` (the one `tributary keys` and the coordinators use); the
//! job API is served too (submissions go to etcd, where the leader picks them up). Every
//! flag can also come from a `TRIBUTARY_…` environment variable.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tributary_coordinator::EtcdJobs;
use tributary_coordinator::etcd::EtcdMembership;
use tributary_gateway::cluster::{ClusterConfig, ClusterInference};
use tributary_gateway::{Auth, Parts, Readiness, ServeConfig};
use tributary_ledger::keys::KeyStore;
use tributary_ledger::store::Store;
use tributary_protocol::ShutdownController;

use super::cluster::{Common, load};
use super::termination::Termination;

/// `tributary gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Object store with the adapter registry, adapter names and API keys: `file:///dir`, a
    /// path, or `s3://bucket/prefix?endpoint=…` (the workers' and coordinators' --store).
    #[arg(long, env = "TRIBUTARY_STORE", default_value = "tributary-data/store")]
    pub store: String,
    /// Serve without API keys (anyone who can reach --http may run inference and jobs).
    /// Without it, callers need a key from the store's key store (`tributary keys create`).
    #[arg(long, env = "TRIBUTARY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Inference requests this gateway holds at once (429 with Retry-After beyond).
    #[arg(long, env = "TRIBUTARY_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Routing bound: a worker above this factor × the mean load is passed over even when
    /// it holds the adapter.
    #[arg(long, env = "TRIBUTARY_ROUTE_BOUND", default_value_t = tributary_gateway::routing::DEFAULT_BOUND)]
    pub route_bound: f64,
    /// The base model the workers serve (a directory or a `.gguf` file), optional: only its
    /// config is read, to offer adapters as llama.cpp GGUF LoRA files
    /// (`GET /v1/adapters/{id}/gguf`).
    #[arg(long, env = "TRIBUTARY_GATEWAY_BASE_MODEL")]
    pub base_model: Option<std::path::PathBuf>,
    /// A local directory that adapter registrations by `url` (`file:///dir` or a path) may
    /// read (repeatable). Default: none, so only remote stores (`s3://`) can be named.
    #[arg(
        long = "allow-path",
        env = "TRIBUTARY_ALLOW_PATHS",
        value_delimiter = ','
    )]
    pub allow_path: Vec<std::path::PathBuf>,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    super::cluster::runtime()?.block_on(gateway(args))
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let Some(http) = args.common.http else {
        anyhow::bail!("--http is required: the address the OpenAI API listens on");
    };
    if !(1.0..=100.0).contains(&args.route_bound) {
        anyhow::bail!(
            "--route-bound {} is out of range: must be 1.0..=100.0",
            args.route_bound
        );
    }
    let (node, tls) = load(&args.common)?;
    let client = args.common.connect_etcd().await?;
    let store = Store::open(&args.store).context("--store")?;
    let auth = if args.insecure_no_auth {
        eprintln!("WARNING: --insecure-no-auth: inference and jobs without API keys");
        Auth::open()
    } else {
        Auth::keys(KeyStore::new(store.clone()))
    };
    let ctl = ShutdownController::new();
    let membership = EtcdMembership::start(client.clone(), ctl.subscribe());
    let cluster = ClusterInference::start(
        node.clone(),
        tls,
        Arc::new(membership),
        ClusterConfig {
            bound: args.route_bound,
            ..ClusterConfig::default()
        },
        ctl.subscribe(),
    );
    let (c, e) = (client.clone(), cluster.clone());
    let term = Termination::listen();
    let ready: Readiness = term.guard(Arc::new(move || {
        let (c, e) = (c.clone(), e.clone());
        Box::pin(async move {
            super::cluster::etcd_ready(&c).await?;
            e.ready()
        })
    }));
    let app = tributary_gateway::app(Parts {
        reward_log: None,
        auth,
        store,
        engine: Some(Arc::new(cluster.clone())),
        jobs: Some(Arc::new(EtcdJobs(client))),
        ready,
        config: ServeConfig {
            max_in_flight: args.max_in_flight,
            base_model: args.base_model.clone(),
            adapter_url_allow: super::allow::allow_paths(args.allow_path.iter().cloned())?,
            ..ServeConfig::default()
        },
    });
    let close = term.then_after(Duration::from_secs(args.common.shutdown_delay_secs));
    let (bound, server) = tributary_gateway::serve(http, app, close)
        .await
        .with_context(|| format!("listening on --http {http}"))?;
    eprintln!("{node}: gateway serving the OpenAI API at http://{bound}/v1");
    // Say once when the first serving worker shows up (operators watch for it).
    let watch = cluster.clone();
    tokio::spawn(async move {
        while watch.ready().is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("gateway: {} serving worker(s) found", watch.workers());
    });
    let r = server.await;
    ctl.shutdown().await;
    r.context("HTTP server")?.context("HTTP server")?;
    Ok(())
}
