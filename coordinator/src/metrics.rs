//! Prometheus metrics, all prefixed `tributary_`, registered in the default registry.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter, IntGaugeVec, histogram_opts, opts};

fn reg<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // A second registration (tests spawning several coordinators) is harmless.
    let _ = prometheus::register(Box::new(c.clone()));
    c
}

/// Jobs by state.
pub static JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    reg(
        IntGaugeVec::new(opts!("tributary_jobs", "Jobs by state"), &["state"])
            .unwrap_or_else(|_| unreachable_metric()),
    )
});

/// Tokens trained.
pub static TRAIN_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
    reg(
        IntCounter::new("tributary_train_tokens_total", "Tokens trained")
            .unwrap_or_else(|_| unreachable_metric()),
    )
});

/// Wall time of one data-parallel step.
pub static STEP_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    reg(Histogram::with_opts(histogram_opts!(
        "tributary_train_step_seconds",
        "Wall time of one data-parallel training step"
    ))
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Seconds since each worker was last seen alive.
pub static WORKER_HEARTBEAT_AGE: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    reg(prometheus::GaugeVec::new(
        opts!(
            "tributary_worker_heartbeat_age_seconds",
            "Seconds since the worker was last seen in membership"
        ),
        &["node"],
    )
    .unwrap_or_else(|_| unreachable_metric()))
});

/// Sets `tributary_jobs{state}` to the number of jobs in each state.
pub fn set_jobs_by_state(states: impl Iterator<Item = crate::store::JobState>) {
    use crate::store::JobState;
    let all = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];
    let mut counts = [0i64; 5];
    for s in states {
        if let Some(c) = all
            .iter()
            .position(|a| *a == s)
            .and_then(|i| counts.get_mut(i))
        {
            *c += 1;
        }
    }
    for (s, n) in all.iter().zip(counts) {
        JOBS.with_label_values(&[&s.to_string()]).set(n);
    }
}

#[allow(clippy::panic)]
fn unreachable_metric() -> ! {
    // Only reachable with an invalid metric name or label set, which are constants above.
    panic!("invalid metric definition")
}
