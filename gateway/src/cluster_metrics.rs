//! The cluster gateway's metrics (default registry): what each serving worker publishes in
//! membership, re-exported so external routers (llm-d, production-stack) can route the same
//! way — `tributary_adapter_resident{adapter,worker}` (the engine's own family, so a
//! scrape of a worker and of the gateway agree), `tributary_worker_queue_depth{worker}`,
//! `tributary_worker_in_flight{worker}`, `tributary_worker_kv_cache_usage_ratio{worker}` —
//! and what the gateway itself does: `tributary_gateway_worker_in_flight{worker}` (its own
//! requests), `tributary_gateway_routed_total{worker,outcome}` and
//! `tributary_gateway_retries_total{reason}`.

use std::sync::LazyLock;

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};
use tributary_protocol::ServingInfo;
use tributary_worker::engine::metrics::ADAPTER_RESIDENT;

struct Metrics {
    queue_depth: IntGaugeVec,
    in_flight: IntGaugeVec,
    kv_usage: GaugeVec,
    mine: IntGaugeVec,
    routed: IntCounterVec,
    retries: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let m = Metrics {
        queue_depth: IntGaugeVec::new(
            Opts::new(
                "tributary_worker_queue_depth",
                "Requests waiting for a batch slot on each serving worker (as it last published)",
            ),
            &["worker"],
        )?,
        in_flight: IntGaugeVec::new(
            Opts::new(
                "tributary_worker_in_flight",
                "Requests admitted and unfinished on each serving worker (as it last published)",
            ),
            &["worker"],
        )?,
        kv_usage: GaugeVec::new(
            Opts::new(
                "tributary_worker_kv_cache_usage_ratio",
                "Fraction of each serving worker's KV-cache blocks in use (as it last published)",
            ),
            &["worker"],
        )?,
        mine: IntGaugeVec::new(
            Opts::new(
                "tributary_gateway_worker_in_flight",
                "This gateway's requests in flight on each worker",
            ),
            &["worker"],
        )?,
        routed: IntCounterVec::new(
            Opts::new(
                "tributary_gateway_routed_total",
                "Requests sent to each worker, by outcome (ok, overloaded, refused, lost)",
            ),
            &["worker", "outcome"],
        )?,
        retries: IntCounterVec::new(
            Opts::new(
                "tributary_gateway_retries_total",
                "Requests moved to another worker (worker_lost, overloaded), non-streaming answers generated again after their worker was lost mid-answer (regenerated), or streamed answers failed mid-answer (lost_mid_answer)",
            ),
            &["reason"],
        )?,
    };
    for c in [&m.queue_depth, &m.in_flight, &m.mine] {
        let _ = prometheus::register(Box::new(c.clone()));
    }
    let _ = prometheus::register(Box::new(m.kv_usage.clone()));
    let _ = prometheus::register(Box::new(m.routed.clone()));
    let _ = prometheus::register(Box::new(m.retries.clone()));
    Ok(m)
}

static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| build().ok());

/// Replaces the per-worker gauges with the workers known now: `(name, record, this
/// gateway's requests on it)`.
pub fn publish<'a>(workers: impl Iterator<Item = (&'a str, &'a ServingInfo, u32)>) {
    let Some(m) = METRICS.as_ref() else { return };
    ADAPTER_RESIDENT.reset();
    m.queue_depth.reset();
    m.in_flight.reset();
    m.kv_usage.reset();
    m.mine.reset();
    for (name, s, mine) in workers {
        for d in &s.resident {
            ADAPTER_RESIDENT
                .with_label_values(&[d.to_hex().as_str(), name])
                .set(1);
        }
        m.queue_depth
            .with_label_values(&[name])
            .set(i64::from(s.queue_depth));
        m.in_flight
            .with_label_values(&[name])
            .set(i64::from(s.in_flight));
        let ratio = if s.kv_blocks == 0 {
            0.0
        } else {
            s.kv_blocks_used as f64 / s.kv_blocks as f64
        };
        m.kv_usage.with_label_values(&[name]).set(ratio);
        m.mine.with_label_values(&[name]).set(i64::from(mine));
    }
}

/// One request sent to `worker`, and how it went.
pub fn routed(worker: &str, outcome: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.routed.with_label_values(&[worker, outcome]).inc();
    }
}

/// One request moved (or failed mid-answer), and why.
pub fn retried(reason: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.retries.with_label_values(&[reason]).inc();
    }
}
