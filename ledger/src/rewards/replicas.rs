//! The replica set: conditional create of one key on every store, acknowledged once a
//! majority holds our bytes. Slow replicas finish in the background, bounded per replica.
//! Reads and self-tests fan out to every replica too, and a replica that is still silent
//! [`STRAGGLER_GRACE`] after a majority has answered counts as unreachable for that call, so
//! one partitioned replica costs the writer a grace period, not its whole retry timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use object_store::path::Path;
use tokio::sync::Semaphore;

use super::LogError;
use crate::store::{Created, Store, StoreError};

/// Default bound on background writes per replica; beyond it a slow replica is skipped for
/// an append and caught up later by repair.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;

/// How long the other replicas are waited for once a majority has answered a read or a
/// self-test successfully; a replica silent past it counts as unreachable for that call
/// ([`StoreError::Unanswered`]), exactly as if its request had timed out.
pub const STRAGGLER_GRACE: Duration = Duration::from_millis(1500);

/// An ordered set of replica stores.
#[derive(Clone, Debug)]
pub struct Replicas {
    stores: Vec<Store>,
    inflight: Vec<Arc<Semaphore>>,
}

/// What one replica said to a conditional create.
#[derive(Debug)]
pub enum SlotResult {
    /// Our bytes are there (created now, or found identical).
    Ours,
    /// Other bytes are there.
    Theirs(Bytes),
    /// The replica failed or was too busy.
    Failed(String),
}

/// A replica write still running when the majority create returned.
pub type PendingSlot = tokio::task::JoinHandle<(usize, SlotResult)>;

/// The outcome of a majority create.
#[derive(Debug, Default)]
pub struct MajorityCreate {
    /// Writes still running (they continue if dropped).
    pub pending: Vec<PendingSlot>,
    /// Replica indices holding our bytes.
    pub ours: Vec<usize>,
    /// Replica indices holding other bytes, with those bytes.
    pub theirs: Vec<(usize, Bytes)>,
    /// Replica indices that failed, with the error.
    pub failed: Vec<(usize, String)>,
}

impl Replicas {
    pub fn new(stores: Vec<Store>) -> Result<Self, LogError> {
        Self::with_inflight(stores, DEFAULT_MAX_INFLIGHT)
    }

    pub fn with_inflight(stores: Vec<Store>, max_inflight: usize) -> Result<Self, LogError> {
        if stores.is_empty() {
            return Err(LogError::NoReplicas);
        }
        let inflight = stores
            .iter()
            .map(|_| Arc::new(Semaphore::new(max_inflight.max(1))))
            .collect();
        Ok(Self { stores, inflight })
    }

    /// Opens each URL as a store.
    pub fn open(urls: &[String]) -> Result<Self, LogError> {
        let stores = urls
            .iter()
            .map(|u| Store::open(u))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Self::new(stores)
    }

    pub fn stores(&self) -> &[Store] {
        &self.stores
    }

    pub fn len(&self) -> usize {
        self.stores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    /// How many replicas make a majority.
    pub fn majority(&self) -> usize {
        self.stores.len() / 2 + 1
    }

    /// Conditionally creates `key` on every replica. Returns as soon as a majority holds our
    /// bytes, or when every replica has answered. Writes still running are returned in
    /// `pending` and continue in the background even if dropped (each holds one of its
    /// replica's bounded in-flight permits).
    pub async fn create_on_majority(&self, key: &Path, bytes: &Bytes) -> MajorityCreate {
        let mut handles = Vec::new();
        let mut out = MajorityCreate::default();
        for (i, (store, inflight)) in self.stores.iter().zip(&self.inflight).enumerate() {
            let permit = match inflight.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    out.failed
                        .push((i, format!("{store}: too many writes in flight")));
                    continue;
                }
            };
            let store = store.clone();
            let key = key.clone();
            let bytes = bytes.clone();
            let task = tokio::spawn(async move {
                let _permit = permit;
                let r = match store.create(&key, bytes.clone()).await {
                    Ok(Created::New) => SlotResult::Ours,
                    Ok(Created::Existing(found)) if found == bytes => SlotResult::Ours,
                    Ok(Created::Existing(found)) => SlotResult::Theirs(found),
                    Err(e) => SlotResult::Failed(e.to_string()),
                };
                (i, r)
            });
            handles.push(task);
        }
        let majority = self.majority();
        let mut pending: FuturesUnordered<_> = handles.into_iter().map(Watch::new).collect();
        while let Some((_, joined)) = pending.next().await {
            match joined {
                Ok((i, SlotResult::Ours)) => out.ours.push(i),
                Ok((i, SlotResult::Theirs(b))) => out.theirs.push((i, b)),
                Ok((i, SlotResult::Failed(e))) => out.failed.push((i, e)),
                Err(e) => out.failed.push((usize::MAX, format!("write task: {e}"))),
            }
            if out.ours.len() >= majority {
                break;
            }
        }
        out.pending = pending.into_iter().filter_map(Watch::into_handle).collect();
        out
    }

    /// Reads `key` from every replica concurrently: `Ok(None)` when absent there.
    pub async fn get_all(&self, key: &Path) -> Vec<Result<Option<Bytes>, StoreError>> {
        self.on_every("get", |s| s.get(key)).await
    }

    /// Lists names under `prefix` on every replica concurrently.
    pub async fn list_all(&self, prefix: &Path) -> Vec<Result<Vec<String>, StoreError>> {
        self.on_every("list", |s| s.list_names(prefix)).await
    }

    /// Runs `call` on every replica concurrently and returns each one's answer, in replica
    /// order. Once a majority has answered `Ok`, the others get [`STRAGGLER_GRACE`] more;
    /// one still silent then is [`StoreError::Unanswered`].
    #[allow(clippy::disallowed_methods)] // bounds the wait for straggling replicas in real time
    pub(crate) async fn on_every<'a, T, F, Fut>(
        &'a self,
        op: &'static str,
        call: F,
    ) -> Vec<Result<T, StoreError>>
    where
        F: Fn(&'a Store) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + 'a,
    {
        let mut answers: Vec<Option<Result<T, StoreError>>> =
            self.stores.iter().map(|_| None).collect();
        let mut pending: FuturesUnordered<_> = self
            .stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let fut = call(store);
                async move { (i, fut.await) }
            })
            .collect();
        let mut ok = 0;
        let mut deadline = None;
        loop {
            let next = match deadline {
                None => pending.next().await,
                Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((i, answer)) = next else { break };
            ok += usize::from(answer.is_ok());
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(answer);
            }
            if ok >= self.majority() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + STRAGGLER_GRACE);
            }
        }
        answers
            .into_iter()
            .zip(&self.stores)
            .map(|(answer, store)| {
                answer.unwrap_or_else(|| {
                    Err(StoreError::Unanswered {
                        store: store.label().to_string(),
                        op,
                        waited_ms: STRAGGLER_GRACE.as_millis() as u64,
                    })
                })
            })
            .collect()
    }

    /// Runs the conditional-create self-test on every replica. Unreachable replicas are
    /// tolerated while a majority passes; a store that ignores conditional create is refused.
    pub async fn self_test(&self) -> Result<(), LogError> {
        let results = self
            .on_every("conditional-create self-test", |s| {
                s.ensure_conditional_create()
            })
            .await;
        let mut ok = 0;
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok(()) => ok += 1,
                Err(e @ StoreError::UnsafeConditionalCreate { .. }) => return Err(e.into()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if ok < self.majority() {
            return Err(LogError::NoQuorum {
                op: "conditional-create self-test",
                seq: None,
                reached: ok,
                needed: self.majority(),
                errors,
            });
        }
        Ok(())
    }
}

/// A join handle polled by reference so an unfinished one can be handed back.
struct Watch(Option<PendingSlot>);

impl Watch {
    fn new(h: PendingSlot) -> Self {
        Self(Some(h))
    }
    fn into_handle(self) -> Option<PendingSlot> {
        self.0
    }
}

impl std::future::Future for Watch {
    type Output = ((), Result<(usize, SlotResult), tokio::task::JoinError>);
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(h) = self.0.as_mut() else {
            return std::task::Poll::Pending;
        };
        match std::pin::Pin::new(h).poll(cx) {
            std::task::Poll::Ready(r) => {
                self.0 = None;
                std::task::Poll::Ready(((), r))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
