//! The coordinator crate's error type.

use tributary_protocol::ProtocolError;

/// What can go wrong coordinating jobs.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd connection settings: {0}")]
    EtcdConfig(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("store: {0}")]
    Store(String),
    #[error(
        "fenced out: this coordinator's token {token} is below {highest}; another leader is active"
    )]
    Fenced { token: u64, highest: u64 },
    #[error("leadership lost: {0}")]
    NotLeader(String),
    #[error("no such job {0}")]
    NoSuchJob(String),
    #[error("job {job} is {state}; it cannot be {action}")]
    BadState {
        job: String,
        state: String,
        action: &'static str,
    },
    #[error("the coordinator is busy: {0} requests are waiting; retry shortly")]
    Busy(usize),
    #[error("the coordinator actor is not running: {0}")]
    Actor(String),
    #[error("etcd test harness: {0}")]
    Harness(String),
}
