//! Durable state on `object_store`: datanets (ingest, validation, dedup, immutable
//! manifests), the adapter registry, and the reward log (hash chain, conditional writes,
//! writer-epoch fencing, replication) with its verifier.
