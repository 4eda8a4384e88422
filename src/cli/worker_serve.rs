//! `tributary worker --base-model DIR`: the worker also serves inference to gateways. The
//! engine (the same as `tributary dev`'s, one base model per worker, adapters loaded by
//! digest from `--store`'s registry) answers on its own QUIC endpoint (`--serve-listen`,
//! mutual TLS, [`tributary_protocol::serving`]), and the worker's membership record carries
//! where that is, the resident adapters, queue depth and KV usage, refreshed a few times a
//! second under the worker's lease. Every adapter answer is attributed on this worker after
//! it was sent (`--attribution on`, the default): its record and a pending reward go to the
//! store, and the coordinator leader's reward actor pays it into the reward log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tributary_ledger::store::Store;
use tributary_protocol::serving::serve_inference;
use tributary_protocol::{
    InferenceService, NodeId, NodeTls, QuicServer, ServingInfo, Shutdown, WorkerInfo,
};

use super::serve_engine::{DevEngine, ServeArgs};

/// How often the record is refreshed (at most; only when something changed).
const REFRESH: Duration = Duration::from_millis(250);

/// A worker's serving side, running.
pub(super) struct Serving {
    engine: Arc<DevEngine>,
    addr: String,
    max_in_flight: u32,
}

impl Serving {
    /// Loads the engine and starts answering on `listen` until shutdown.
    pub async fn start(
        serve: &ServeArgs,
        listen: SocketAddr,
        advertise: Option<String>,
        store: Option<&str>,
        node: &NodeId,
        tls: &NodeTls,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let Some(dir) = serve.base_model.clone() else {
            anyhow::bail!("serving needs --base-model");
        };
        let Some(store) = store else {
            anyhow::bail!(
                "--base-model needs --store: adapters are loaded from the store's registry"
            );
        };
        let store = Store::open(store).context("--store")?;
        let (args, rt, name) = (
            serve.clone(),
            tokio::runtime::Handle::current(),
            node.to_string(),
        );
        let (base, attr_store) = (dir.clone(), store.clone());
        let mut engine = tokio::task::spawn_blocking(move || {
            DevEngine::start_named(&args, &dir, store, rt, &name)
        })
        .await??;
        if serve.attribution == "on" {
            // Answers are attributed here, after they are sent; the coordinator leader pays.
            let sink = super::serve_engine::start_worker_attribution(
                serve,
                &base,
                attr_store,
                node.as_str(),
            )
            .await?;
            engine = engine.with_attribution(sink);
        }
        let engine = Arc::new(engine);
        let server = QuicServer::bind(listen, node.clone(), tls)
            .with_context(|| format!("--serve-listen {listen}"))?;
        let bound = server.local_addr()?;
        tokio::spawn(serve_inference(server, engine.clone(), shutdown));
        let info = engine.info();
        eprintln!(
            "{node}: serving {} ({}) for inference on {bound}",
            info.base_name, info.base_digest
        );
        Ok(Self {
            engine,
            addr: advertise.unwrap_or_else(|| bound.to_string()),
            max_in_flight: u32::try_from(serve.max_in_flight).unwrap_or(u32::MAX),
        })
    }

    /// The serving part of the membership record now.
    pub fn record(&self) -> ServingInfo {
        let info = self.engine.info();
        let s = self.engine.status();
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        ServingInfo {
            addr: self.addr.clone(),
            base_name: info.base_name,
            base_digest: info.base_digest,
            context_window: info.context_window,
            max_lora_rank: info.max_lora_rank,
            resident: s.resident.iter().map(|r| r.digest).collect(),
            in_flight: n(s.in_flight),
            queue_depth: n(s.queued),
            max_in_flight: self.max_in_flight,
            kv_blocks_used: s.kv_blocks_used as u64,
            kv_blocks: s.kv_blocks as u64,
        }
    }

    /// The membership record, kept current until shutdown (for
    /// `register_worker_live`).
    /// Waits until no answer is running or queued here, or `limit` has passed (SIGTERM's
    /// drain, after this worker left membership); says which.
    #[allow(clippy::disallowed_methods)] // the drain's deadline is wall time by nature
    pub async fn drain(&self, node: &NodeId, limit: Duration) {
        let started = std::time::Instant::now();
        loop {
            let s = self.engine.status();
            let left = s.in_flight + s.queued;
            if left == 0 {
                eprintln!(
                    "{node}: drained in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if started.elapsed() >= limit {
                eprintln!(
                    "{node}: drain timeout after {} s: {left} answers cut",
                    limit.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn publish(
        self: Arc<Self>,
        mut base: WorkerInfo,
        mut shutdown: Shutdown,
    ) -> watch::Receiver<WorkerInfo> {
        base.serving = Some(self.record());
        let (tx, rx) = watch::channel(base);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH) => {}
                    _ = shutdown.recv() => return,
                }
                let now = self.record();
                tx.send_if_modified(|w| {
                    let changed = w.serving.as_ref() != Some(&now);
                    w.serving = Some(now);
                    changed
                });
            }
        });
        rx
    }
}
