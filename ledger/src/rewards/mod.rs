//! The reward log: an append-only, hash-chained log of reward batches, replicated across
//! object stores with conditional create, written by one fenced writer at a time.
//!
//! - [`entry`]: the rkyv entry, its frame and chain hash, the key `rewards/<seq:020>`.
//! - [`replicas`]: the replica set and "create on every replica, ack on a majority".
//! - [`epoch`]: writer epochs (create-only `epochs/<epoch:020>` objects, or an external
//!   fencing token such as the coordinator's etcd leader revision).
//! - [`reconcile`]: choosing the committed chain from the replicas after a crash, and
//!   copying missing entries to replicas that were down (repair).
//! - [`writer`]: [`LogWriter`], the fenced single writer.
//! - `dedup`: exactly once per request id (the committed ids, read back from the chain).
//! - [`verify`]: the verifier and balances.
//!
//! Fencing works through the sequence slots themselves: every entry carries its writer's
//! epoch, a writer writes slots strictly in order, and a new writer's first act is a fence
//! entry at the next free slot. An older writer's next create then meets an entry with a
//! higher epoch on a majority and stops with [`LogError::Fenced`].

mod dedup;
pub mod entry;
pub mod epoch;
pub mod reconcile;
pub mod replicas;
pub mod verify;
pub mod writer;

pub use entry::{EntryError, RewardEntry, RewardRecord, Share};
pub use epoch::Fencing;
pub use reconcile::{RepairReport, repair};
pub use replicas::Replicas;
pub use verify::{Fault, FaultKind, VerifyReport, balances, verify};
pub use writer::{AppendOutcome, Appended, LogWriter, WriterOptions};

use crate::store::StoreError;

/// Errors from the reward log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no replicas given (need at least one store URL)")]
    NoReplicas,
    #[error(
        "{op}{}: {reached} of {needed} replicas needed answered; errors: {}",
        seq.map(|s| format!(" at seq {s}")).unwrap_or_default(),
        errors.join("; ")
    )]
    NoQuorum {
        op: &'static str,
        seq: Option<u64>,
        reached: usize,
        needed: usize,
        errors: Vec<String>,
    },
    #[error(
        "writer at epoch {epoch} is fenced: seq {seq} holds an entry of epoch {found_epoch} \
         (a newer writer took over)"
    )]
    Fenced {
        epoch: u64,
        seq: u64,
        found_epoch: u64,
    },
    #[error("fencing token {token} is stale: epoch {current} has already been claimed")]
    StaleEpoch { token: u64, current: u64 },
    #[error("replica {replica}: seq {seq}: {reason}")]
    Corrupt {
        replica: String,
        seq: u64,
        reason: String,
    },
    #[error("seq {seq} cannot be resolved safely: {reason}")]
    Unresolved { seq: u64, reason: String },
    #[error("invalid reward record: {0}")]
    Invalid(#[from] EntryError),
    #[error("every record of the batch is already in the log (request ids {request_ids:?})")]
    AlreadyRecorded { request_ids: Vec<String> },
    #[error("gave up after {attempts} attempts: {reason}")]
    Contended { attempts: usize, reason: String },
}
