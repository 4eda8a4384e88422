//! Who the workers are: the [`Membership`] trait, with a fixed in-memory list for embedded
//! mode here and an etcd-backed one (leases, keep-alive, watch) in [`crate::etcd`].

use std::sync::{Arc, RwLock};

use tributary_protocol::WorkerInfo;
use tributary_protocol::link::BoxFuture;

use crate::error::CoordError;

/// The live workers.
pub trait Membership: Send + Sync + 'static {
    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>, CoordError>>;
}

/// An in-memory worker list (embedded mode); changeable at run time.
#[derive(Debug, Clone, Default)]
pub struct StaticMembership {
    workers: Arc<RwLock<Vec<WorkerInfo>>>,
}

impl StaticMembership {
    pub fn new(workers: Vec<WorkerInfo>) -> Self {
        Self {
            workers: Arc::new(RwLock::new(workers)),
        }
    }

    /// Adds (or replaces) a worker, as if it registered.
    pub fn add(&self, info: WorkerInfo) {
        if let Ok(mut w) = self.workers.write() {
            w.retain(|i| i.node != info.node);
            w.push(info);
        }
    }

    /// Removes a worker (as if its lease expired).
    pub fn remove(&self, node: &tributary_protocol::NodeId) {
        if let Ok(mut w) = self.workers.write() {
            w.retain(|i| &i.node != node);
        }
    }
}

impl Membership for StaticMembership {
    fn workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>, CoordError>> {
        let r = self
            .workers
            .read()
            .map(|w| w.clone())
            .map_err(|_| CoordError::Store("membership lock poisoned".into()));
        Box::pin(async move { r })
    }
}
