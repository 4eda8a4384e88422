//! The worker actor: a training executor for job shards (the [`ShardExecutor`] trait, which
//! the model crate's trainer implements) and the inference engine ([`engine::Engine`]). Placement is
//! decided elsewhere. Embedded mode reaches the actor through [`LocalWorkerLink`]; cluster
//! mode through QUIC via [`WorkerService`] — both end in the same actor.

pub mod actor;
pub mod attribution;
pub mod attribution_index;
pub mod core;
pub mod engine;
pub mod executor;
pub mod metrics;
pub mod service;
pub mod sources;
pub mod supervisor;
pub mod toy;
pub mod trainer_exec;

pub use actor::{
    LocalLinkFactory, LocalWorkerLink, WorkerActor, WorkerMsg, spawn_unsupervised, spawn_worker,
};
pub use core::WorkerCore;
pub use executor::{ExecError, ExecutorFactory, MicroGrad, ShardExecutor, Sources};
pub use service::WorkerService;
pub use sources::{AllowPaths, SourceConfig};
pub use supervisor::{WorkerHealth, spawn_supervised};
pub use trainer_exec::{DefaultFactory, SourcedFactory, TrainerExecutor};
