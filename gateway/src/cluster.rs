//! The cluster gateway's engine: an [`InferenceService`] over the serving workers found in
//! membership (etcd), reached over QUIC with mutual TLS ([`tributary_protocol::serving`]).
//! `tributary gateway` puts the OpenAI edge ([`crate::openai`]) on top of it.
//!
//! Each request goes to the worker [`crate::routing::route`] picks: rendezvous hashing with
//! bounded load among the workers that hold its adapter, else the least loaded. Residency
//! and load come from the workers' membership records (refreshed by them a few times a
//! second); the load counts this gateway's own requests too, exactly, and an adapter just
//! sent to a worker counts as resident there until the worker's record says otherwise.
//!
//! A request that has not started streaming is retried on another worker when its worker
//! cannot be reached, its connection breaks (a worker killed with -9 is noticed when its
//! membership lease expires or its QUIC connection times out, whichever comes first), or
//! it refuses with overload. "Started streaming" means the first text (or the end) has come
//! back: the engine's `Started` event is held until then, so a worker that dies during
//! prefill costs the client only time. Overload everywhere is a 429 with `Retry-After`.
//! A non-streaming answer ([`InferenceService::submit_whole`]) is held here until it is
//! whole, so when its worker is lost in the middle it is generated again from the start on
//! another worker ([`crate::cluster_forward`]).
//!
//! Deleting an adapter ([`InferenceService::unload`]) asks every serving worker to drop it
//! once its running requests have drained. The gateway remembers the deletion for a while
//! and asks again any worker whose membership record still lists the adapter (one that
//! could not be reached, or that finished loading it after the first ask).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use tributary_coordinator::Membership;
use tributary_protocol::serving::{InferenceConn, RemoteEvents};
use tributary_protocol::{
    BoxFuture, Digest, EngineInfo, EventStream, InferenceError, InferenceEvent, InferenceRequest,
    InferenceService, ModelChoice, NodeId, NodeTls, ResidentAdapter, ServingInfo, Shutdown,
};

use crate::cluster_forward::{forward, forward_whole};
use crate::cluster_metrics as cm;
use crate::routing::{WorkerLoad, route};

/// How the gateway finds and talks to workers.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The routing bound's load factor ([`crate::routing::DEFAULT_BOUND`]).
    pub bound: f64,
    /// How often membership is re-read.
    pub refresh: Duration,
    /// Longest wait for a QUIC connection to a worker.
    pub connect_timeout: Duration,
    /// A worker that could not be reached is passed over for this long.
    pub down_for: Duration,
    /// An adapter just routed to a worker counts as resident there for this long.
    pub routed_ttl: Duration,
    /// What a 429 asks when every worker is overloaded and none said how long.
    pub retry_after_ms: u64,
    /// Least time between two unloads of one deleted adapter sent to one worker.
    pub unload_resend: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            bound: crate::routing::DEFAULT_BOUND,
            refresh: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(1),
            down_for: Duration::from_secs(2),
            routed_ttl: Duration::from_secs(10),
            retry_after_ms: 1000,
            unload_resend: Duration::from_secs(2),
        }
    }
}

struct Worker {
    serving: ServingInfo,
    /// This gateway's requests on it now.
    in_flight: Arc<AtomicU32>,
    conn: Option<InferenceConn>,
    /// Serializes connection attempts.
    connecting: Arc<tokio::sync::Mutex<()>>,
    down_until: Option<Instant>,
    routed: HashMap<Digest, Instant>,
    /// Deleted adapters last asked to be unloaded here, and when.
    unload_sent: HashMap<Digest, Instant>,
}

#[derive(Default)]
struct Table {
    workers: BTreeMap<NodeId, Worker>,
    /// The served base model (the first serving worker's, by name order).
    info: Option<EngineInfo>,
    /// Adapters deleted through this gateway, and when.
    deleted: HashMap<Digest, Instant>,
}

struct Inner {
    me: NodeId,
    tls: NodeTls,
    config: ClusterConfig,
    table: RwLock<Table>,
}

/// The cluster as one inference engine.
#[derive(Clone)]
pub struct ClusterInference {
    inner: Arc<Inner>,
}

/// Counts a request against its worker while it lives.
pub(crate) struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Attempt {
    /// Admitted and streaming: the events held back so far, and the rest.
    Streaming(Vec<InferenceEvent>, RemoteEvents),
    Refused(InferenceError),
}

/// A request admitted by a worker: which, the events held back so far, the rest, and its
/// count against the worker.
pub(crate) struct Routed {
    pub node: NodeId,
    /// The worker's serving address when it was picked (a later process under the same
    /// name has another one).
    pub addr: String,
    pub held: Vec<InferenceEvent>,
    pub events: RemoteEvents,
    pub guard: InFlight,
}

impl ClusterInference {
    /// Starts following `membership` (until shutdown); connects to workers as `me`.
    pub fn start(
        me: NodeId,
        tls: NodeTls,
        membership: Arc<dyn Membership>,
        config: ClusterConfig,
        shutdown: Shutdown,
    ) -> Self {
        let this = Self {
            inner: Arc::new(Inner {
                me,
                tls,
                config,
                table: RwLock::new(Table::default()),
            }),
        };
        tokio::spawn(this.clone().follow(membership, shutdown));
        this
    }

    async fn follow(self, membership: Arc<dyn Membership>, mut shutdown: Shutdown) {
        loop {
            match membership.workers().await {
                Ok(ws) => self.update(
                    ws.into_iter()
                        .filter_map(|w| w.serving.map(|s| (w.node, s)))
                        .collect(),
                ),
                Err(e) => debug!(error = %e, "reading membership"),
            }
            for (node, adapter) in self.stale_unloads() {
                let this = self.clone();
                tokio::spawn(async move { this.unload_on(&node, adapter).await });
            }
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.refresh) => {}
                _ = shutdown.recv() => break,
            }
        }
    }

    /// Replaces the serving workers with `now` (keeping connections and counters of the
    /// ones that stay; closing those of the ones gone, which fails their open answers).
    pub fn update(&self, now: BTreeMap<NodeId, ServingInfo>) {
        let Ok(mut t) = self.inner.table.write() else {
            return;
        };
        let gone: Vec<NodeId> = t
            .workers
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            // A worker that left (drained on SIGTERM, or its lease expired) gets no new
            // requests; the answers running on it keep their connection (each holds a
            // handle) and finish, or fail when QUIC notices a dead peer.
            if t.workers.remove(&n).is_some() {
                info!(worker = %n, "worker left membership");
            }
        }
        for (node, serving) in now {
            match t.workers.get_mut(&node) {
                Some(w) => {
                    if w.serving.addr != serving.addr {
                        // A new process under the same name (restarted between two reads
                        // of membership): the old one's connection and down mark go.
                        info!(worker = %node, addr = %serving.addr, "serving worker moved");
                        if let Some(c) = w.conn.take() {
                            c.close();
                        }
                        w.down_until = None;
                    }
                    w.serving = serving;
                }
                None => {
                    info!(worker = %node, addr = %serving.addr, "serving worker joined");
                    t.workers.insert(
                        node,
                        Worker {
                            serving,
                            in_flight: Arc::new(AtomicU32::new(0)),
                            conn: None,
                            connecting: Arc::new(tokio::sync::Mutex::new(())),
                            down_until: None,
                            routed: HashMap::new(),
                            unload_sent: HashMap::new(),
                        },
                    );
                }
            }
        }
        t.info = t.workers.values().next().map(|w| EngineInfo {
            base_name: w.serving.base_name.clone(),
            base_digest: w.serving.base_digest,
            context_window: w.serving.context_window,
            max_lora_rank: w.serving.max_lora_rank,
        });
        let ttl = self.inner.config.routed_ttl;
        for w in t.workers.values_mut() {
            w.routed.retain(|_, at| at.elapsed() < ttl);
        }
        cm::publish(
            t.workers
                .iter()
                .map(|(n, w)| (n.as_str(), &w.serving, w.in_flight.load(Ordering::Relaxed))),
        );
    }

    /// Ready once some worker serves the base model.
    pub fn ready(&self) -> Result<(), String> {
        let t = self
            .inner
            .table
            .read()
            .map_err(|_| "the worker table is poisoned".to_string())?;
        match &t.info {
            Some(_) => Ok(()),
            None => Err("no serving worker holds the base model yet".into()),
        }
    }

    /// Serving workers known now.
    pub fn workers(&self) -> usize {
        self.inner.table.read().map_or(0, |t| t.workers.len())
    }

    /// The worker for `model` now, skipping `excluded`; counts the request against it.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    fn pick(&self, model: &ModelChoice, excluded: &HashSet<NodeId>) -> Option<(NodeId, InFlight)> {
        let mut t = self.inner.table.write().ok()?;
        let base = t.info.as_ref()?.base_digest;
        let now = Instant::now();
        let ttl = self.inner.config.routed_ttl;
        let eligible =
            |n: &NodeId, w: &Worker| !excluded.contains(n) && w.serving.base_digest == base;
        let mut candidates: Vec<&NodeId> = t
            .workers
            .iter()
            .filter(|(n, w)| eligible(n, w) && w.down_until.is_none_or(|d| d <= now))
            .map(|(n, _)| n)
            .collect();
        if candidates.is_empty() {
            // Every worker this request may still try is marked down (by failures of other
            // requests, which under load or during a restart can hit every worker within
            // `down_for`). A down mark is a preference, not a verdict: try them rather than
            // fail the request untried (Envoy's "panic mode"). Each one this request tries
            // and loses joins `excluded`, so this ends.
            candidates = t
                .workers
                .iter()
                .filter(|(n, w)| eligible(n, w))
                .map(|(n, _)| n)
                .collect();
        }
        let loads: Vec<WorkerLoad> = candidates
            .iter()
            .filter_map(|n| Some((n, t.workers.get(*n)?)))
            .map(|(n, w)| {
                let mine = w.in_flight.load(Ordering::Relaxed);
                WorkerLoad {
                    id: n.to_string(),
                    in_flight: mine.max(w.serving.in_flight),
                    capacity: w.serving.max_in_flight.max(1),
                    resident: match model {
                        ModelChoice::Base => true,
                        ModelChoice::Adapter(d) => {
                            w.serving.resident.contains(d)
                                || w.routed.get(d).is_some_and(|at| now - *at < ttl)
                        }
                    },
                }
            })
            .collect();
        let node = (*candidates.get(route(model, &loads, self.inner.config.bound)?)?).clone();
        let w = t.workers.get_mut(&node)?;
        if let ModelChoice::Adapter(d) = model {
            w.routed.insert(*d, now);
        }
        w.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((node, InFlight(w.in_flight.clone())))
    }

    /// Whether some worker outside `excluded` is left to try (marked down or not: [`Self::pick`]
    /// tries the marked ones when nothing else is left).
    fn any_left(&self, excluded: &HashSet<NodeId>) -> bool {
        self.inner
            .table
            .read()
            .is_ok_and(|t| t.workers.keys().any(|n| !excluded.contains(n)))
    }

    /// Marks `node` down at the address it has now (tests).
    #[cfg(test)]
    pub(crate) fn mark_down(&self, node: &NodeId) {
        let addr = self.addr_of(node).unwrap_or_default();
        self.mark_down_at(node, &addr);
    }

    /// `node`'s serving address now.
    pub(crate) fn addr_of(&self, node: &NodeId) -> Option<String> {
        let t = self.inner.table.read().ok()?;
        t.workers.get(node).map(|w| w.serving.addr.clone())
    }

    /// Marks `node` down for a while (and closes its connection), if it still serves at
    /// `addr`, the address a failed request used: a request that failed on a process that
    /// has since been replaced under the same name (a restart the gateway saw as an address
    /// change) says nothing about the new one, whose running answers must not be cut.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    pub(crate) fn mark_down_at(&self, node: &NodeId, addr: &str) {
        if let Ok(mut t) = self.inner.table.write()
            && let Some(w) = t.workers.get_mut(node)
            && w.serving.addr == addr
        {
            if let Some(c) = w.conn.take() {
                c.close();
            }
            w.down_until = Some(Instant::now() + self.inner.config.down_for);
        }
    }

    /// The worker's connection, made if needed.
    async fn conn(&self, node: &NodeId) -> Result<InferenceConn, String> {
        let (addr, lock) = {
            let t = self.inner.table.read().map_err(|_| "table poisoned")?;
            let w = t.workers.get(node).ok_or("the worker left")?;
            if let Some(c) = &w.conn
                && !c.is_closed()
            {
                return Ok(c.clone());
            }
            (w.serving.addr.clone(), w.connecting.clone())
        };
        let _one = lock.lock().await;
        if let Ok(t) = self.inner.table.read()
            && let Some(c) = t.workers.get(node).and_then(|w| w.conn.clone())
            && !c.is_closed()
        {
            return Ok(c);
        }
        let sock = tokio::net::lookup_host(&addr)
            .await
            .map_err(|e| format!("resolving {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} did not resolve"))?;
        let connect = InferenceConn::connect(sock, node, &self.inner.me, &self.inner.tls);
        let conn = tokio::time::timeout(self.inner.config.connect_timeout, connect)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {addr} within {:?}",
                    self.inner.config.connect_timeout
                )
            })?
            .map_err(|e| e.to_string())?;
        if let Ok(mut t) = self.inner.table.write()
            && let Some(w) = t.workers.get_mut(node)
        {
            w.conn = Some(conn.clone());
        }
        Ok(conn)
    }

    /// One try on one worker: `Err` means the worker was not reached or broke before the
    /// answer started streaming (try another).
    async fn attempt(&self, node: &NodeId, request: &InferenceRequest) -> Result<Attempt, String> {
        let conn = self.conn(node).await?;
        let mut events = match conn.submit(request).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(refused)) => return Ok(Attempt::Refused(refused)),
            Err(e) => return Err(e.to_string()),
        };
        let mut held = Vec::new();
        loop {
            match events.next().await {
                Ok(Some(ev)) => {
                    let started = matches!(ev, InferenceEvent::Started { .. });
                    held.push(ev);
                    if !started {
                        return Ok(Attempt::Streaming(held, events));
                    }
                }
                Ok(None) => return Ok(Attempt::Streaming(held, events)),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Routes `request` to a worker that admits it, trying others (never those in
    /// `excluded`, which gathers every worker tried) while a worker is lost before the
    /// answer started streaming or is overloaded.
    pub(crate) async fn route_request(
        &self,
        request: &InferenceRequest,
        excluded: &mut HashSet<NodeId>,
    ) -> Result<Routed, InferenceError> {
        let mut overloaded: Option<InferenceError> = None;
        while let Some((node, guard)) = self.pick(&request.model, excluded) {
            let addr = self.addr_of(&node).unwrap_or_default();
            match self.attempt(&node, request).await {
                Ok(Attempt::Streaming(held, events)) => {
                    cm::routed(node.as_str(), "ok");
                    return Ok(Routed {
                        node,
                        addr,
                        held,
                        events,
                        guard,
                    });
                }
                Ok(Attempt::Refused(e @ InferenceError::Overloaded { .. })) => {
                    cm::routed(node.as_str(), "overloaded");
                    cm::retried("overloaded");
                    overloaded = Some(e);
                }
                Ok(Attempt::Refused(e)) => {
                    cm::routed(node.as_str(), "refused");
                    return Err(e);
                }
                Err(why) => {
                    warn!(worker = %node, request_id = %request.request_id, %why,
                          "worker lost before the answer started: retrying elsewhere");
                    cm::routed(node.as_str(), "lost");
                    cm::retried("worker_lost");
                    self.mark_down_at(&node, &addr);
                    if self.addr_of(&node).is_some_and(|now| now != addr) {
                        // It was restarted meanwhile: try the new process too.
                        continue;
                    }
                }
            }
            excluded.insert(node);
        }
        if let Some(e) = overloaded {
            return Err(e);
        }
        if self.workers() == 0 {
            return Err(InferenceError::Unavailable(
                "no serving worker is registered".into(),
            ));
        }
        if self.any_left(excluded) {
            // Every worker left to try is at its capacity as this gateway counts it.
            return Err(InferenceError::Overloaded {
                retry_after_ms: self.inner.config.retry_after_ms,
            });
        }
        Err(InferenceError::Unavailable(format!(
            "no serving worker could take the request ({} tried)",
            excluded.len()
        )))
    }

    async fn submit_routed(
        &self,
        request: InferenceRequest,
        whole: bool,
    ) -> Result<EventStream, InferenceError> {
        let mut excluded = HashSet::new();
        let routed = self.route_request(&request, &mut excluded).await?;
        Ok(if whole {
            forward_whole(self.clone(), request, routed, excluded)
        } else {
            forward(routed)
        })
    }
}

impl InferenceService for ClusterInference {
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        Box::pin(self.submit_routed(request, false))
    }

    fn submit_whole(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        Box::pin(self.submit_routed(request, true))
    }

    fn unload(&self, adapter: Digest) -> BoxFuture<'_, Result<(), InferenceError>> {
        Box::pin(self.unload_everywhere(adapter))
    }

    fn info(&self) -> EngineInfo {
        let t = self.inner.table.read().ok();
        t.and_then(|t| t.info.clone()).unwrap_or(EngineInfo {
            // No worker yet: every request is refused as unavailable by `submit`, after
            // validation, which must not refuse it for a context window it cannot know.
            base_name: String::new(),
            base_digest: Digest([0; 32]),
            context_window: u32::MAX,
            max_lora_rank: 0,
        })
    }

    fn resident(&self) -> Vec<ResidentAdapter> {
        let Ok(t) = self.inner.table.read() else {
            return Vec::new();
        };
        let all: std::collections::BTreeSet<Digest> = t
            .workers
            .values()
            .flat_map(|w| w.serving.resident.iter().copied())
            .collect();
        all.into_iter()
            .map(|digest| ResidentAdapter {
                digest,
                bytes: 0,
                pinned: false,
            })
            .collect()
    }
}

#[path = "cluster_unload.rs"]
mod unload;

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
