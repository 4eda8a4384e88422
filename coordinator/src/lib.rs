//! The coordinator actor (job queue, placement, data-parallel step orchestration, failure
//! handling), the attribution actor, and etcd membership and leader election. Actors are
//! thin shells over pure scheduling functions. No HTTP here.
