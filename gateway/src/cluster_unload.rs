//! Deleting an adapter in a cluster ([`InferenceService::unload`] of
//! [`ClusterInference`]): every serving worker is asked over QUIC
//! ([`tributary_protocol::serving::ServeCall::Unload`]) to drop it once its running requests
//! have drained. The deletion is remembered for [`DELETED_TTL`]; a worker whose membership
//! record still lists the adapter after [`ClusterConfig::unload_resend`] (it could not be
//! reached, or it finished loading the adapter for a request routed before the delete) is
//! asked again, unless its connection speaks serving protocol 1001, which has no unload.
//! Requests naming a deleted adapter never reach a worker: the catalog refuses
//! them with 404 (its tombstone is in the store, which every gateway reads).
//!
//! [`InferenceService::unload`]: tributary_protocol::InferenceService::unload
//! [`ClusterConfig::unload_resend`]: super::ClusterConfig::unload_resend

use std::time::{Duration, Instant};

use tracing::{info, warn};
use tributary_protocol::serving::SERVING_PROTOCOL_VERSION;
use tributary_protocol::{Digest, InferenceError, NodeId};

use super::{ClusterInference, Table};

/// How long a deleted adapter is remembered (and unloads re-sent to workers still listing it).
pub(super) const DELETED_TTL: Duration = Duration::from_secs(600);
/// Most deletions remembered (the oldest are forgotten first).
const DELETED_MAX: usize = 4096;

impl ClusterInference {
    /// Deleted adapters that a worker's record still lists as resident, where no unload
    /// was sent to it lately: (worker, adapter), each marked as sent now.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    pub(super) fn stale_unloads(&self) -> Vec<(NodeId, Digest)> {
        let Ok(mut t) = self.inner.table.write() else {
            return Vec::new();
        };
        t.deleted.retain(|_, at| at.elapsed() < DELETED_TTL);
        if t.deleted.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let resend = self.inner.config.unload_resend;
        let Table {
            workers, deleted, ..
        } = &mut *t;
        let mut out = Vec::new();
        for (node, w) in workers.iter_mut() {
            w.unload_sent.retain(|d, _| deleted.contains_key(d));
            // A worker on serving protocol 1001 (an older build, mid-upgrade) has no unload:
            // asking again would only fail again. Its requests for the deleted adapter are
            // refused here (the catalog's tombstone), and it drops the adapter on restart.
            if w.conn
                .as_ref()
                .is_some_and(|c| !c.is_closed() && c.version() < SERVING_PROTOCOL_VERSION)
            {
                continue;
            }
            for d in &w.serving.resident {
                if !deleted.contains_key(d) {
                    continue;
                }
                let due = w.unload_sent.get(d).is_none_or(|at| now - *at >= resend);
                if due {
                    w.unload_sent.insert(*d, now);
                    out.push((node.clone(), *d));
                }
            }
        }
        out
    }

    /// Remembers that `adapter` was deleted (for [`Self::stale_unloads`]).
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    fn remember_deleted(&self, adapter: Digest) -> Vec<NodeId> {
        let Ok(mut t) = self.inner.table.write() else {
            return Vec::new();
        };
        let now = Instant::now();
        t.deleted.insert(adapter, now);
        while t.deleted.len() > DELETED_MAX {
            let oldest = t.deleted.iter().min_by_key(|(_, at)| **at).map(|(d, _)| *d);
            match oldest {
                Some(d) => t.deleted.remove(&d),
                None => break,
            };
        }
        for w in t.workers.values_mut() {
            w.unload_sent.insert(adapter, now);
        }
        t.workers.keys().cloned().collect()
    }

    /// Asks one worker to unload `adapter`; true once it took the order.
    pub(super) async fn unload_on(&self, node: &NodeId, adapter: Digest) -> bool {
        let wait = self.inner.config.connect_timeout * 2;
        let asked = async {
            let conn = self.conn(node).await?;
            conn.unload(adapter).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(wait, asked).await {
            Ok(Ok(Ok(()))) => {
                info!(worker = %node, %adapter, "deleted adapter unloaded (after its requests drain)");
                true
            }
            Ok(Ok(Err(e))) => {
                warn!(worker = %node, %adapter, error = %e, "the worker refused to unload a deleted adapter");
                false
            }
            Ok(Err(why)) => {
                warn!(worker = %node, %adapter, %why, "could not ask the worker to unload a deleted adapter (asked again while it lists it)");
                false
            }
            Err(_) => {
                warn!(worker = %node, %adapter, "no answer to an unload within {wait:?} (asked again while it lists it)");
                false
            }
        }
    }

    /// Asks every serving worker to unload a deleted adapter (see the module docs).
    pub(super) async fn unload_everywhere(&self, adapter: Digest) -> Result<(), InferenceError> {
        let nodes = self.remember_deleted(adapter);
        let asks = nodes.iter().map(|n| self.unload_on(n, adapter));
        let done = futures::future::join_all(asks).await;
        let took = done.iter().filter(|ok| **ok).count();
        info!(%adapter, workers = nodes.len(), took, "unload sent to the serving workers");
        Ok(())
    }
}
