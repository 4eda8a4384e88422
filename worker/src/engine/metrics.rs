//! The inference engine's Prometheus metrics (default registry, `tributary_` prefix): the
//! adapter cache's hits, misses, evictions and load time, which adapters are resident, and
//! the batch, queue and KV cache as the last step saw them.

use std::sync::LazyLock;

use prometheus::{Gauge, Histogram, IntCounter, IntGauge, IntGaugeVec, histogram_opts, opts};

use crate::metrics::{reg, unreachable_metric};

/// Requests whose adapter was resident when they arrived.
pub static ADAPTER_HITS: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_adapter_cache_hits_total",
        "Requests whose adapter was resident when they arrived",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Requests whose adapter had to be loaded first.
pub static ADAPTER_MISSES: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_adapter_cache_misses_total",
        "Requests whose adapter had to be loaded first",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Adapters evicted to make room for others.
pub static ADAPTER_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_adapter_cache_evictions_total",
        "Adapters evicted from the cache to make room",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Time to fetch and load an adapter on a miss.
pub static ADAPTER_LOAD_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    reg(Histogram::with_opts(histogram_opts!(
        "tributary_adapter_load_seconds",
        "Time to fetch, parse and pack an adapter on a cache miss",
        vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    ))
    .unwrap_or_else(|_| unreachable_metric()))
});

/// 1 for each adapter resident on a worker (external routers read this).
pub static ADAPTER_RESIDENT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    reg(IntGaugeVec::new(
        opts!(
            "tributary_adapter_resident",
            "1 while the adapter is resident on the worker"
        ),
        &["adapter", "worker"],
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Bytes of resident adapters.
pub static ADAPTER_CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "tributary_adapter_cache_bytes",
        "Bytes of resident adapters",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Share of the KV cache's blocks in use.
pub static KV_CACHE_USAGE: LazyLock<Gauge> = LazyLock::new(|| {
    reg(Gauge::new(
        "tributary_kv_cache_usage_ratio",
        "Share of the paged KV cache's blocks in use",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Sequences in the last step.
pub static BATCH_SIZE: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "tributary_batch_size",
        "Sequences computed in the engine's last step",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Sequences waiting for a batch slot, KV blocks or their adapter.
pub static QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "tributary_queue_depth",
        "Sequences waiting for a batch slot, KV blocks or their adapter",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Sequences preempted (KV dropped, recomputed later) for lack of KV blocks.
pub static PREEMPTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_engine_preemptions_total",
        "Sequences preempted for lack of KV blocks",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Duration of each engine step (one forward pass over the batch, sampling included): a
/// decoding sequence waits this long for its next token.
pub static STEP_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    reg(Histogram::with_opts(histogram_opts!(
        "tributary_engine_step_seconds",
        "Duration of each engine step (batched forward pass and sampling)",
        prometheus::exponential_buckets(0.0005, 1.5, 24).unwrap_or_default()
    ))
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Prompt tokens whose keys and values came from the prefix cache.
pub static PREFIX_HIT_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_prefix_cache_hit_tokens_total",
        "Prompt tokens whose keys and values were shared from the prefix cache",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});
