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

/// Worker actors of this process that died and are not running again yet.
pub static ACTORS_DOWN: LazyLock<IntGauge> = LazyLock::new(|| {
    reg(IntGauge::new(
        "tributary_worker_actors_down",
        "Worker actors that died and have not been restarted yet",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Worker actor restarts by the supervisor.
pub static ACTOR_RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(IntCounter::new(
        "tributary_worker_actor_restarts_total",
        "Worker actors restarted by their supervisor after dying",
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Readiness of this process's worker actors: an error naming how many are down.
pub fn actors_ready() -> Result<(), String> {
    match ACTORS_DOWN.get() {
        0 => Ok(()),
        n => Err(format!(
            "{n} worker actor(s) died and are restarting ({} restarts so far)",
            ACTOR_RESTARTS.get()
        )),
    }
}

#[allow(clippy::panic)]
pub(crate) fn unreachable_metric() -> ! {
    // Only reachable with an invalid metric name or label set, which are constants above.
    panic!("invalid metric definition")
}
