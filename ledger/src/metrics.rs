//! Prometheus metrics of the ledger, registered in the default registry on first use so a
//! process that serves `/metrics` (the gateway) exports them with everything else.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};

/// The ledger's metrics.
pub struct Metrics {
    /// `tributary_ledger_appends_total`: reward-log entries acknowledged by a majority.
    pub appends: IntCounter,
    /// `tributary_ledger_append_ack_seconds`: time from append to majority acknowledgement.
    pub ack_seconds: Histogram,
    /// `tributary_ledger_fenced_total`: appends refused because a newer writer took over.
    pub fenced: IntCounter,
    /// `tributary_ledger_replica_write_failures_total{replica}`.
    pub replica_failures: IntCounterVec,
    /// `tributary_datanet_rows_total{outcome}`: uploaded rows by outcome.
    pub rows: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let m = Metrics {
        appends: IntCounter::new(
            "tributary_ledger_appends_total",
            "Reward-log entries acknowledged by a majority of replicas",
        )?,
        ack_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "tributary_ledger_append_ack_seconds",
                "Time from append to majority acknowledgement",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
        )?,
        fenced: IntCounter::new(
            "tributary_ledger_fenced_total",
            "Appends refused because a newer writer epoch took over",
        )?,
        replica_failures: IntCounterVec::new(
            Opts::new(
                "tributary_ledger_replica_write_failures_total",
                "Failed or skipped writes per replica",
            ),
            &["replica"],
        )?,
        rows: IntCounterVec::new(
            Opts::new(
                "tributary_datanet_rows_total",
                "Uploaded datanet rows by outcome",
            ),
            &["outcome"],
        )?,
    };
    let r = prometheus::default_registry();
    // A second registration (another instance in the same process) is harmless to ignore.
    let _ = r.register(Box::new(m.appends.clone()));
    let _ = r.register(Box::new(m.ack_seconds.clone()));
    let _ = r.register(Box::new(m.fenced.clone()));
    let _ = r.register(Box::new(m.replica_failures.clone()));
    let _ = r.register(Box::new(m.rows.clone()));
    Ok(m)
}

/// The process-wide ledger metrics (`None` only if the definitions failed to validate,
/// which would be a bug; metrics are then skipped rather than failing the ledger).
pub fn metrics() -> Option<&'static Metrics> {
    static M: OnceLock<Option<Metrics>> = OnceLock::new();
    M.get_or_init(|| build().ok()).as_ref()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_are_registered_with_the_tributary_prefix() {
        super::metrics().expect("metrics build").appends.inc();
        let names: Vec<String> = prometheus::default_registry()
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(
            names.iter().any(|n| n == "tributary_ledger_appends_total"),
            "{names:?}"
        );
        assert!(
            names.iter().all(|n| n.starts_with("tributary_")),
            "{names:?}"
        );
    }
}
