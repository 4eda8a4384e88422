//! The worker's Prometheus metrics, prefixed `tributary_`, in the default registry (served
//! on `/metrics` by `tributary worker --http`).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, opts};

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

/// The device this node computes on: one series at 1, labelled with the backend
/// (`cpu`, `wgpu`, `cuda`), the device's name and whether it is a hardware GPU.
pub static DEVICE_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    reg(IntGaugeVec::new(
        opts!(
            "tributary_device_info",
            "The device this node computes on (1): backend, name, and whether it is a hardware GPU"
        ),
        &["kind", "name", "gpu"],
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Publishes `tributary_device_info` for the device `--device` chose (replacing any
/// earlier series: a process computes on one device).
pub fn set_device_info(device: &tributary_model::device::Selected) {
    let c = &device.choice;
    DEVICE_INFO.reset();
    DEVICE_INFO
        .with_label_values(&[
            c.kind(),
            &c.name(),
            if c.is_gpu() { "true" } else { "false" },
        ])
        .set(1);
}

#[allow(clippy::panic)]
pub(crate) fn unreachable_metric() -> ! {
    // Only reachable with an invalid metric name or label set, which are constants above.
    panic!("invalid metric definition")
}
