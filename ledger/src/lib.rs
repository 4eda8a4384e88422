//! Durable state on `object_store`: datanets (ingest, validation, dedup, immutable
//! manifests) and the reward log (hash chain, conditional writes, writer-epoch fencing,
//! replication) with its verifier.
//!
//! - [`adapters`]: the adapter registry (content-addressed files, immutable entries);
//!   [`adapter_names`]: append-only name pointers and tombstones beside it.
//! - [`keys`]: API keys (hashed, with an owner and scopes): the product's one key scheme.
//! - [`store`]: stores by URL, conditional create with read-back, the self-test.
//! - [`datanet`]: community datasets: upload, validation, content addressing, near-dup
//!   clusters, quarantine, immutable manifests, versions, diff, export.
//! - [`rewards`]: the replicated, hash-chained reward log.
//! - [`clock`]: injectable time. [`metrics`]: Prometheus metrics (`tributary_` prefix).
//! - `testkit` (feature `testkit`): a real moto S3 server for tests, a store that ignores
//!   conditional create (a mock, for the refusal test).

pub mod adapter_names;
pub mod adapters;
pub mod clock;
pub mod datanet;
pub mod keys;
pub mod metrics;
pub mod rewards;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use store::{Created, Store, StoreError};
