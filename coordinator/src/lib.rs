//! The coordinator actor (job queue, placement, data-parallel step orchestration, failure
//! handling) and etcd membership and leader election. The actor is a thin shell over pure
//! functions — [`jobs_state`], [`placement`], [`sharding`], [`reduce`], [`progress`] — each tested without a
//! runtime. No HTTP here. The attribution actor comes with the attribution issue.

// Tests may unwrap and index: a panic there is a failed test, not a fault in service.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod actor;
pub mod api;
pub mod artifacts;
pub mod client;
pub mod cluster_status;
pub mod driver;
pub mod error;
pub mod etcd;
pub mod etcd_tls;
pub mod jobs_state;
pub mod local_etcd;
pub mod loss_history;
pub mod membership;
pub mod metrics;
pub mod placement;
pub mod progress;
pub mod reduce;
pub mod sharding;
pub mod store;

pub use actor::{
    CoordinatorActor, CoordinatorConfig, CoordinatorMsg, CoordinatorOptions, spawn_coordinator,
    spawn_coordinator_with,
};
pub use api::{ActorJobs, EtcdJobs, JobApi};
pub use artifacts::{Artifacts, CheckpointRef};
pub use error::CoordError;
pub use jobs_state::{Clock, RetryPolicy, SystemClock};
pub use membership::{Membership, StaticMembership};
pub use store::{JobRecord, JobState, JobStore, LogLine, MemoryJobStore};
