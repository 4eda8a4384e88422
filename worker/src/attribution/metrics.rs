//! Metrics of online attribution, in the default registry.

use std::sync::LazyLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, opts};

use crate::metrics::{reg, unreachable_metric};

/// Answers handed to attribution and not yet acknowledged by the reward log (queued,
/// spilled to the store, being computed, or waiting for the window's append).
pub static BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "tributary_attribution_backlog",
        "Answers waiting for attribution or for their reward entry",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Answers spilled to object storage because the in-memory queue was full.
pub static SPILLED: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_attribution_spilled_total",
        "Answers written to the durable backlog because the attribution queue was full",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Attributions by outcome (`recorded`, `no_index`, `failed`).
pub static OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        opts!(
            "tributary_attributions_total",
            "Answers attributed, by outcome"
        ),
        &["outcome"],
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Failed attributions put back for another attempt (with back-off).
pub static RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_attribution_retries_total",
        "Failed attributions retried (after a back-off); given up after --attribution-retries",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Seconds computing one answer's attribution.
pub static SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "tributary_attribution_seconds",
            "Seconds computing one answer's attribution (features, scores, evidence)",
        )
        .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).unwrap_or_default()),
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Seconds from an answer's end to its acknowledged reward entry.
pub static REWARD_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    reg(Histogram::with_opts(
        HistogramOpts::new(
            "tributary_reward_lag_seconds",
            "Seconds from an answer to its acknowledged reward-log entry",
        )
        .buckets(prometheus::exponential_buckets(0.05, 2.0, 14).unwrap_or_default()),
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Touches every metric so `/metrics` lists them from the start.
pub fn init() {
    BACKLOG.set(BACKLOG.get());
    SPILLED.inc_by(0);
    RETRIES.inc_by(0);
    for o in ["recorded", "no_index", "failed"] {
        OUTCOMES.with_label_values(&[o]).inc_by(0);
    }
    LazyLock::force(&SECONDS);
    LazyLock::force(&REWARD_LAG);
}
