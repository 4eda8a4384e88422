//! The worker's Prometheus metrics, prefixed `tributary_`, in the default registry (served
//! on `/metrics` by `tributary worker --http`).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, opts};

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // A second registration (several workers in one test process) is harmless.
    let _ = prometheus::register(Box::new(c.clone()));
    c
}

/// Commands handled, by kind (start, gradients, apply, checkpoint, …) and outcome.
pub static COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(IntCounterVec::new(
        opts!(
            "tributary_worker_commands_total",
            "Coordinator commands handled by this worker"
        ),
        &["command", "outcome"],
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Micro-batch gradients computed.
pub static MICRO_BATCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_worker_micro_batches_total",
        "Micro-batch gradients computed by this worker",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Jobs loaded now.
pub static JOBS_LOADED: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "tributary_worker_jobs_loaded",
        "Jobs loaded on this worker now",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

#[allow(clippy::panic)]
pub(crate) fn unreachable_metric() -> ! {
    // Only reachable with an invalid metric name or label set, which are constants above.
    panic!("invalid metric definition")
}
