//! The worker actor: a training executor for job shards and an inference engine
//! (continuous batching, adapter cache, hot swap). Placement is decided elsewhere.
