//! Cluster mode's coordination through etcd: workers register under a lease with their
//! capacity and keep it alive; the coordinator watches the worker prefix; coordinators
//! campaign in an election whose leader revision is the fencing token; job records live in
//! etcd, written only while the leader key still exists (checkpoints live in object storage;
//! the record keeps their location and digest). Any process may submit a job or file a
//! cancel request; the leader picks both up on its next tick.
//!
//! Everything retries across an etcd restart: leases survive it, watches and keep-alives
//! are re-established.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use tributary_protocol::link::BoxFuture;
use tributary_protocol::{JobId, JobSpec, NodeId, Shutdown, WorkerInfo};

use crate::error::CoordError;
use crate::membership::Membership;
use crate::store::{JobRecord, JobStore};

/// The etcd client type, re-exported for callers of this module.
pub use etcd_client::Client as EtcdClient;

pub const WORKERS_PREFIX: &str = "/tributary/workers/";
pub const JOBS_PREFIX: &str = "/tributary/jobs/";
pub const CANCELS_PREFIX: &str = "/tributary/cancels/";
pub const ELECTION: &str = "/tributary/leader";

const RETRY: Duration = Duration::from_millis(300);

/// Connects to etcd at `url` (comma-separated `http://` endpoints); see
/// [`crate::etcd_tls::connect_with`] for TLS.
pub async fn connect(url: &str) -> Result<Client, CoordError> {
    crate::etcd_tls::connect_with(url, None).await
}

/// Keeps `lease` alive until shutdown. Sets `lost` when etcd says the lease is gone;
/// connection errors (etcd restarting) are retried.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: i64,
    lost: watch::Sender<bool>,
    mut shutdown: Shutdown,
) {
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000) / 3);
    'outer: loop {
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
            Ok(x) => x,
            Err(e) => {
                debug!(lease, error = %e, "keep-alive: reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => continue,
                    _ = shutdown.recv() => break,
                }
            }
        };
        loop {
            // One renewal; shutdown wins over a renewal etcd is slow to answer (a process
            // stopping must not wait on it).
            let renewal = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            let answer = tokio::select! {
                a = renewal => a,
                _ = shutdown.recv() => break 'outer,
            };
            match answer {
                Ok(Some(resp)) if resp.ttl() <= 0 => {
                    warn!(lease, "lease expired");
                    let _ = lost.send(true);
                    break 'outer;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => continue 'outer,
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.recv() => break 'outer,
            }
        }
    }
    if shutdown.is_shutdown() {
        // Bounded: if etcd does not answer, the lease expires by its TTL instead.
        let revoke = client.lease_revoke(lease);
        let _ = tokio::time::timeout(Duration::from_secs(ttl.max(1) as u64), revoke).await;
    }
}

/// Aborts the task when dropped, so aborting a registration also stops its keep-alive
/// (which is what a crashed process looks like to etcd).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers a worker under a lease of `ttl` seconds and keeps it registered (re-granting
/// and re-putting if the lease is lost) until shutdown, when the lease is revoked.
pub async fn register_worker(
    client: Client,
    info: WorkerInfo,
    ttl: i64,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, CoordError> {
    let (_fixed, rx) = watch::channel(info);
    register_worker_live(client, rx, ttl, shutdown).await
}

/// [`register_worker`] with a record that changes while the worker runs (a serving worker's
/// resident adapters and load): each new value is put under the same lease. Callers
/// should rate-limit their updates (every put is a watch event for every gateway).
pub async fn register_worker_live(
    client: Client,
    mut info: watch::Receiver<WorkerInfo>,
    ttl: i64,
    mut shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, CoordError> {
    let first = info.borrow_and_update().clone();
    let key = format!("{WORKERS_PREFIX}{}", first.node);
    let encode =
        |i: &WorkerInfo| serde_json::to_vec(i).map_err(|e| CoordError::Store(e.to_string()));
    let mut value = encode(&first)?;
    let mut c = client.clone();
    let lease = c.lease_grant(ttl, None).await?.id();
    c.put(
        key.clone(),
        value.clone(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await?;
    info!(node = %first.node, lease, "worker registered");
    Ok(tokio::spawn(async move {
        let mut lease = lease;
        // False once the sender is gone: the record stays as it is.
        let mut live = true;
        loop {
            let (tx, mut lost) = watch::channel(false);
            let mut ka = AbortOnDrop(tokio::spawn(keep_alive(
                c.clone(),
                lease,
                ttl,
                tx,
                shutdown.resubscribe(),
            )));
            loop {
                tokio::select! {
                    // Shutdown first: when the keep-alive has already stopped on the same
                    // signal, `lost` is ready too, and taking it would register again.
                    biased;
                    _ = shutdown.recv() => {
                        // The keep-alive revokes the lease on the same signal; bounded, and
                        // revoked here too in case it was stuck (a second revoke is refused,
                        // harmlessly).
                        let limit = Duration::from_secs(ttl.max(1) as u64);
                        let _ = tokio::time::timeout(limit, &mut ka.0).await;
                        let _ = tokio::time::timeout(limit, c.lease_revoke(lease)).await;
                        return;
                    }
                    _ = lost.changed() => break,
                    changed = info.changed(), if live => {
                        if changed.is_err() {
                            live = false;
                            continue;
                        }
                        let Ok(v) = encode(&info.borrow_and_update()) else { continue };
                        value = v;
                        let put = c
                            .put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(lease)))
                            .await;
                        if let Err(e) = put {
                            debug!(error = %e, "refreshing the worker record");
                        }
                    }
                }
            }
            // Lease gone (e.g. we were paused past it): register again.
            loop {
                let attempt = async {
                    let l = c.lease_grant(ttl, None).await?.id();
                    c.put(
                        key.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(l)),
                    )
                    .await?;
                    Ok::<i64, etcd_client::Error>(l)
                };
                let attempt = tokio::select! {
                    biased;
                    _ = shutdown.recv() => return,
                    a = attempt => a,
                };
                match attempt {
                    Ok(l) => {
                        lease = l;
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "re-registering");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }))
}

/// Worker membership from etcd, kept current by a watch on the worker prefix.
#[derive(Debug, Clone)]
pub struct EtcdMembership {
    map: Arc<RwLock<BTreeMap<NodeId, WorkerInfo>>>,
}

impl EtcdMembership {
    /// Loads the current workers and keeps watching until shutdown.
    pub fn start(client: Client, shutdown: Shutdown) -> Self {
        let map = Arc::new(RwLock::new(BTreeMap::new()));
        tokio::spawn(watch_workers(client, map.clone(), shutdown));
        Self { map }
    }
}

fn parse_worker(value: &[u8]) -> Option<WorkerInfo> {
    serde_json::from_slice(value).ok()
}

async fn watch_workers(
    mut client: Client,
    map: Arc<RwLock<BTreeMap<NodeId, WorkerInfo>>>,
    mut shutdown: Shutdown,
) {
    while !shutdown.is_shutdown() {
        let res = async {
            let resp = client
                .get(WORKERS_PREFIX, Some(GetOptions::new().with_prefix()))
                .await?;
            let rev = resp.header().map_or(0, |h| h.revision());
            let fresh: BTreeMap<NodeId, WorkerInfo> = resp
                .kvs()
                .iter()
                .filter_map(|kv| parse_worker(kv.value()))
                .map(|w| (w.node.clone(), w))
                .collect();
            if let Ok(mut m) = map.write() {
                *m = fresh;
            }
            let mut stream = client
                .watch(
                    WORKERS_PREFIX,
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await?;
            while let Some(resp) = stream.message().await? {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(m) = &mut map.write() else { continue };
                    match ev.event_type() {
                        EventType::Put => {
                            if let Some(w) = parse_worker(kv.value()) {
                                m.insert(w.node.clone(), w);
                            }
                        }
                        EventType::Delete => {
                            let key = String::from_utf8_lossy(kv.key());
                            if let Some(name) = key.strip_prefix(WORKERS_PREFIX) {
                                m.retain(|n, _| n.as_str() != name);
                            }
                        }
                    }
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            r = res => if let Err(e) = r { debug!(error = %e, "worker watch: retrying") },
            _ = shutdown.recv() => break,
        }
        tokio::time::sleep(RETRY).await;
    }
}

impl Membership for EtcdMembership {
    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>, CoordError>> {
        let r = self
            .map
            .read()
            .map(|m| m.values().cloned().collect())
            .map_err(|_| CoordError::Store("membership lock poisoned".into()));
        Box::pin(async move { r })
    }
}

/// This process's leadership: the fencing token and a flag that flips when it is lost.
#[derive(Debug)]
pub struct Leadership {
    /// The election revision of our leader key: the fencing token.
    pub token: u64,
    pub key: Vec<u8>,
    pub lease: i64,
    /// Becomes `true` when the lease behind the leadership expires.
    pub lost: watch::Receiver<bool>,
}

/// Campaigns until this node is the leader. The lease (of `ttl` seconds) is kept alive
/// from before the campaign until shutdown.
pub async fn campaign(
    client: &Client,
    node: &NodeId,
    ttl: i64,
    shutdown: &Shutdown,
) -> Result<Leadership, CoordError> {
    let mut c = client.clone();
    let lease = c.lease_grant(ttl, None).await?.id();
    let (tx, lost) = watch::channel(false);
    tokio::spawn(keep_alive(
        c.clone(),
        lease,
        ttl,
        tx,
        shutdown.resubscribe(),
    ));
    let resp = c.campaign(ELECTION, node.as_str(), lease).await?;
    let leader = resp
        .leader()
        .ok_or_else(|| CoordError::NotLeader("campaign returned no leader key".into()))?;
    let token = u64::try_from(leader.rev()).unwrap_or(0);
    info!(%node, token, "elected leader");
    Ok(Leadership {
        token,
        key: leader.key().to_vec(),
        lease,
        lost,
    })
}

/// Job records and checkpoints in etcd. Writes go through a transaction that checks the
/// leader key still has our revision, so a deposed leader cannot write.
#[derive(Clone)]
pub struct EtcdJobStore {
    client: Client,
    leader_key: Vec<u8>,
    token: i64,
}

impl std::fmt::Debug for EtcdJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdJobStore")
            .field("token", &self.token)
            .finish()
    }
}

impl EtcdJobStore {
    pub fn new(client: Client, leadership: &Leadership) -> Self {
        Self {
            client,
            leader_key: leadership.key.clone(),
            token: i64::try_from(leadership.token).unwrap_or(i64::MAX),
        }
    }

    async fn fenced_put(&self, key: String, value: Vec<u8>) -> Result<(), CoordError> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                self.token,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.client.clone().txn(txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(CoordError::NotLeader(format!(
                "leader key with revision {} is gone",
                self.token
            )))
        }
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, CoordError> {
    serde_json::to_vec(v).map_err(|e| CoordError::Store(e.to_string()))
}

impl JobStore for EtcdJobStore {
    fn put(&self, rec: &JobRecord) -> BoxFuture<'_, Result<(), CoordError>> {
        let key = format!("{JOBS_PREFIX}{}", rec.id);
        let value = enc(rec);
        Box::pin(async move { self.fenced_put(key, value?).await })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>> {
        Box::pin(async move { list_jobs(&self.client).await })
    }

    fn request_cancel<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move { request_cancel(&self.client, job).await })
    }

    fn cancel_requests(&self) -> BoxFuture<'_, Result<Vec<JobId>, CoordError>> {
        Box::pin(async move {
            let resp = self
                .client
                .clone()
                .get(CANCELS_PREFIX, Some(GetOptions::new().with_prefix()))
                .await?;
            Ok(resp
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let key = String::from_utf8_lossy(kv.key());
                    key.strip_prefix(CANCELS_PREFIX)
                        .and_then(|id| JobId::new(id).ok())
                })
                .collect())
        })
    }

    fn clear_cancel<'a>(&'a self, job: &'a JobId) -> BoxFuture<'a, Result<(), CoordError>> {
        Box::pin(async move {
            self.client
                .clone()
                .delete(format!("{CANCELS_PREFIX}{job}"), None)
                .await?;
            Ok(())
        })
    }
}

/// Files a cancel request for `job` (any process; the leader acts on it at its next tick).
pub async fn request_cancel(client: &Client, job: &JobId) -> Result<(), CoordError> {
    client
        .clone()
        .put(format!("{CANCELS_PREFIX}{job}"), Vec::<u8>::new(), None)
        .await?;
    Ok(())
}

/// The job record stored under `id`, if any (one key read, not a listing).
pub async fn get_job(client: &Client, id: &JobId) -> Result<Option<JobRecord>, CoordError> {
    let key = format!("{JOBS_PREFIX}{id}");
    let resp = client.clone().get(key.as_str(), None).await?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| match serde_json::from_slice::<JobRecord>(kv.value()) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(key = %key, error = %e, "unreadable job record");
                None
            }
        }))
}

/// Every job record in etcd.
pub async fn list_jobs(client: &Client) -> Result<Vec<JobRecord>, CoordError> {
    let resp = client
        .clone()
        .get(JOBS_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice::<JobRecord>(kv.value()) {
            Ok(r) => out.push(r),
            Err(e) => {
                warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unreadable job record")
            }
        }
    }
    Ok(out)
}

/// Queues a job for whichever coordinator leads: writes a `queued` record that must not
/// exist yet. Queue order is submission time.
#[allow(clippy::disallowed_methods)] // a job id takes its submission time (the one job-id scheme)
pub async fn submit_job(client: &Client, spec: JobSpec) -> Result<JobId, CoordError> {
    // The one job-id scheme (crate::jobs_state): seq is the submission time in µs.
    let now = crate::store::now_ms();
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let rec = crate::jobs_state::new_job(spec, seq, now)?;
    let id = rec.id.clone();
    let key = format!("{JOBS_PREFIX}{id}");
    let txn = Txn::new()
        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, enc(&rec)?, None)]);
    let resp = client.clone().txn(txn).await?;
    if !resp.succeeded() {
        return Err(CoordError::Store(format!("job {id} already exists")));
    }
    Ok(id)
}
