//! Online attribution: every answer an adapter serves gets an attribution record and its
//! rewards in the reward log, exactly once, without delaying the answer.
//!
//! The path of one answer:
//! 1. [`tap::tap`] sits between the engine and the gateway: it forwards every event at once
//!    and, when the answer is over (finished, failed or cancelled by the client), hands an
//!    [`AnswerJob`] to the [`AttributionSink`]. Nothing waits for attribution.
//! 2. Every finished answer is written to object storage first
//!    (`attribution/backlog/<request id>.json` in `dev`, `attribution/backlog/<worker>/…`
//!    on a cluster's serving worker: each takes up only its own; removed once attributed),
//!    so a crash or a restart loses nothing. The in-memory queue is bounded: when it is full the answer
//!    waits in the backlog, counted in `tributary_attribution_spilled_total`, and is taken up
//!    when the queue drains (and after a restart): nothing is dropped, and the backlog is
//!    measured
//!    (`tributary_attribution_backlog`: answers not yet acknowledged by the reward log).
//! 3. The attribution thread ([`service`]) computes each answer's features, scores, shares
//!    and fee split ([`compute::Attributor`]), stores the features, the
//!    [`record::AttributionRecord`] and a pending marker (`attribution/pending/<request
//!    id>.json`). A failed attribution is retried with back-off, then recorded as failed
//!    with its error.
//! 4. The reward actor ([`actor::RewardActor`], ractor) takes up the pending markers every
//!    window, aggregates and appends each window's batch with
//!    [`tributary_ledger::rewards::LogWriter::append_once`]: a request id already in the log
//!    is left out, so retries, unknown-outcome appends, a restart and a new leader pay once.
//!    After the acknowledgement it writes each request's [`record::RewardReceipt`] and its
//!    per-contributor and per-adapter entries ([`receipt_index`]: what
//!    `GET /v1/contributors/{id}/rewards` and `GET /v1/adapters/{id}/contributors` list),
//!    deletes the marker and observes
//!    `tributary_reward_lag_seconds` from answer to acknowledgement.
//!
//! In `tributary dev` the actor runs in the same process with the reward log's embedded
//! fencing ([`service::Rewards::Actor`]). In a cluster the serving workers attribute
//! ([`service::Rewards::Leader`]) and the coordinator leader runs the one actor, writing
//! under its fencing token ([`actor::spawn_leader`]).
// Attribution indexes the features it loaded against the index header, whose lengths are
// checked when the index and the answer's features are read (record.rs, compute.rs): the
// indices below come from those checked headers.
#![allow(clippy::indexing_slicing)]

pub mod actor;
pub mod compute;
pub mod metrics;
pub mod receipt_index;
pub mod record;
pub mod rerun;
pub mod service;
pub mod tap;

pub use compute::{AnswerChoice, AnswerJob, Attributor, Pricing};
pub use record::{AttributionRecord, Params, RewardReceipt};
pub use service::{AttributionConfig, AttributionSink, Rewards, start};

/// Errors of the online attribution path.
#[derive(Debug, thiserror::Error)]
pub enum AttrError {
    #[error("model: {0}")]
    Model(String),
    #[error("object store: {0}")]
    Store(String),
    #[error("attribution: {0}")]
    Math(String),
    #[error("{0}")]
    Missing(String),
    #[error("io: {0}")]
    Io(String),
    #[error("reward log: {0}")]
    Log(String),
}

impl AttrError {
    pub(crate) fn model(e: impl std::fmt::Display) -> Self {
        Self::Model(e.to_string())
    }
    pub(crate) fn store(e: impl std::fmt::Display) -> Self {
        Self::Store(e.to_string())
    }
    pub(crate) fn math(e: impl std::fmt::Display) -> Self {
        Self::Math(e.to_string())
    }
    pub(crate) fn record(e: record::RecordError) -> Self {
        Self::Math(e.to_string())
    }
    pub(crate) fn io(e: impl std::fmt::Display) -> Self {
        Self::Io(e.to_string())
    }
}

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // reads the wall clock for timestamps
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
