//! The serving metrics, registered in the default registry on first use (so `/metrics`
//! exports them), and [`Tracker`]: one request's clock, which observes time to first
//! token, time per output token and end-to-end latency by adapter class (`base` or
//! `adapter`, never per adapter: the label set stays bounded), keeps the queue-depth gauge
//! honest, and meters tokens per API key.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use tributary_protocol::{InferenceEvent, ModelChoice};

/// The gateway's serving metrics.
pub struct ServeMetrics {
    /// `tributary_request_ttft_seconds{class}`.
    pub ttft: HistogramVec,
    /// `tributary_request_tpot_seconds{class}`: (end − first token) / (tokens − 1).
    pub tpot: HistogramVec,
    /// `tributary_request_e2e_seconds{class}`.
    pub e2e: HistogramVec,
    /// `tributary_gateway_queue_depth`: requests admitted by the gateway whose first event has not
    /// come back from the engine yet.
    pub queue_depth: IntGauge,
    /// `tributary_requests_in_flight`: requests holding an admission slot.
    pub in_flight: IntGauge,
    /// `tributary_requests_total{class,outcome}`: ok, error, cancelled.
    pub requests: IntCounterVec,
    /// `tributary_usage_tokens_total{key,direction}`: prompt (`in`) and completion (`out`)
    /// tokens per API key id.
    pub usage_tokens: IntCounterVec,
    /// `tributary_usage_requests_total{key}`.
    pub usage_requests: IntCounterVec,
    /// `tributary_rejected_total{reason}`: overloaded, too_large, invalid, unauthorized…
    pub rejected: IntCounterVec,
}

fn build() -> Result<ServeMetrics, prometheus::Error> {
    let latency = |name: &str, help: &str, start: f64| -> Result<HistogramVec, prometheus::Error> {
        HistogramVec::new(
            HistogramOpts::new(name, help)
                .buckets(prometheus::exponential_buckets(start, 2.0, 18)?),
            &["class"],
        )
    };
    let m = ServeMetrics {
        ttft: latency(
            "tributary_request_ttft_seconds",
            "Time from request arrival to its first generated text",
            0.001,
        )?,
        tpot: latency(
            "tributary_request_tpot_seconds",
            "Time per output token after the first",
            0.0005,
        )?,
        e2e: latency(
            "tributary_request_e2e_seconds",
            "Time from request arrival to its last token",
            0.001,
        )?,
        queue_depth: IntGauge::new(
            "tributary_gateway_queue_depth",
            "Requests admitted by the gateway and waiting for the engine to start them",
        )?,
        in_flight: IntGauge::new(
            "tributary_requests_in_flight",
            "Inference requests holding a gateway admission slot",
        )?,
        requests: IntCounterVec::new(
            Opts::new("tributary_requests_total", "Inference requests by outcome"),
            &["class", "outcome"],
        )?,
        usage_tokens: IntCounterVec::new(
            Opts::new(
                "tributary_usage_tokens_total",
                "Prompt (in) and completion (out) tokens per API key",
            ),
            &["key", "direction"],
        )?,
        usage_requests: IntCounterVec::new(
            Opts::new(
                "tributary_usage_requests_total",
                "Inference requests per API key",
            ),
            &["key"],
        )?,
        rejected: IntCounterVec::new(
            Opts::new(
                "tributary_rejected_total",
                "Requests refused before reaching the engine, by reason",
            ),
            &["reason"],
        )?,
    };
    let r = prometheus::default_registry();
    let _ = r.register(Box::new(m.ttft.clone()));
    let _ = r.register(Box::new(m.tpot.clone()));
    let _ = r.register(Box::new(m.e2e.clone()));
    let _ = r.register(Box::new(m.queue_depth.clone()));
    let _ = r.register(Box::new(m.in_flight.clone()));
    let _ = r.register(Box::new(m.requests.clone()));
    let _ = r.register(Box::new(m.usage_tokens.clone()));
    let _ = r.register(Box::new(m.usage_requests.clone()));
    let _ = r.register(Box::new(m.rejected.clone()));
    Ok(m)
}

/// The process-wide serving metrics (`None` only if a definition failed to validate, a
/// bug: metrics are then skipped rather than failing requests).
pub fn metrics() -> Option<&'static ServeMetrics> {
    static M: OnceLock<Option<ServeMetrics>> = OnceLock::new();
    M.get_or_init(|| build().ok()).as_ref()
}

/// Tokens and requests per API key id since the process started (`GET /v1/usage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

fn usage_book() -> &'static Mutex<HashMap<String, KeyUsage>> {
    static BOOK: OnceLock<Mutex<HashMap<String, KeyUsage>>> = OnceLock::new();
    BOOK.get_or_init(|| Mutex::new(HashMap::new()))
}

fn record_usage(key: &str, u: Usage) {
    if let Ok(mut book) = usage_book().lock() {
        let row = book.entry(key.to_string()).or_default();
        row.requests += 1;
        row.prompt_tokens += u64::from(u.prompt_tokens);
        row.completion_tokens += u64::from(u.completion_tokens);
    }
}

/// The usage of every key (`None`) or one key.
pub fn usage_of(key: Option<&str>) -> Vec<(String, KeyUsage)> {
    let Ok(book) = usage_book().lock() else {
        return Vec::new();
    };
    let mut rows: Vec<(String, KeyUsage)> = book
        .iter()
        .filter(|(k, _)| key.is_none_or(|want| want == k.as_str()))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// Counts a refusal.
pub fn rejected(reason: &str) {
    if let Some(m) = metrics() {
        m.rejected.with_label_values(&[reason]).inc();
    }
}

/// The adapter-class label.
pub fn class_of(model: &ModelChoice) -> &'static str {
    match model {
        ModelChoice::Base => "base",
        ModelChoice::Adapter(_) => "adapter",
    }
}

/// Token counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One request's clock and meter. Dropped before [`Tracker::finish`], it counts the
/// request as cancelled (a client that went away).
pub struct Tracker {
    class: &'static str,
    key: String,
    t0: Instant,
    first: Option<Instant>,
    queued: bool,
    finished: bool,
    pub usage: Usage,
}

impl Tracker {
    /// Starts the clock at `t0` (the request's arrival); the request counts as queued.
    pub fn start(class: &'static str, key: &str, t0: Instant) -> Self {
        if let Some(m) = metrics() {
            m.queue_depth.inc();
            m.usage_requests.with_label_values(&[key]).inc();
        }
        Self {
            class,
            key: key.to_string(),
            t0,
            first: None,
            queued: true,
            finished: false,
            usage: Usage::default(),
        }
    }

    fn dequeue(&mut self) {
        if std::mem::take(&mut self.queued)
            && let Some(m) = metrics()
        {
            m.queue_depth.dec();
        }
    }

    /// Observes one event from the engine.
    #[allow(clippy::disallowed_methods)] // latency metrics measure real time
    pub fn on_event(&mut self, ev: &InferenceEvent) {
        match ev {
            InferenceEvent::Started { prompt_tokens } => {
                self.dequeue();
                self.usage.prompt_tokens = *prompt_tokens;
            }
            InferenceEvent::Text { .. } => {
                self.dequeue();
                if self.first.is_none() {
                    let now = Instant::now();
                    self.first = Some(now);
                    if let Some(m) = metrics() {
                        m.ttft
                            .with_label_values(&[self.class])
                            .observe((now - self.t0).as_secs_f64());
                    }
                }
            }
            InferenceEvent::Finished {
                completion_tokens, ..
            } => {
                self.dequeue();
                self.usage.completion_tokens += completion_tokens;
            }
            InferenceEvent::Failed(_) => self.dequeue(),
        }
    }

    /// The request ended (`ok`: every choice finished); records latency and usage.
    #[allow(clippy::disallowed_methods)] // latency metrics measure real time
    pub fn finish(mut self, ok: bool) -> Usage {
        self.dequeue();
        self.finished = true;
        if let Some(m) = metrics() {
            let now = Instant::now();
            let outcome = if ok { "ok" } else { "error" };
            m.requests.with_label_values(&[self.class, outcome]).inc();
            if ok {
                m.e2e
                    .with_label_values(&[self.class])
                    .observe((now - self.t0).as_secs_f64());
                if let Some(first) = self.first
                    && self.usage.completion_tokens > 1
                {
                    let per =
                        (now - first).as_secs_f64() / f64::from(self.usage.completion_tokens - 1);
                    m.tpot.with_label_values(&[self.class]).observe(per);
                }
            }
            self.meter(m);
        }
        self.usage
    }

    fn meter(&self, m: &ServeMetrics) {
        record_usage(&self.key, self.usage);
        m.usage_tokens
            .with_label_values(&[&self.key, "in"])
            .inc_by(u64::from(self.usage.prompt_tokens));
        m.usage_tokens
            .with_label_values(&[&self.key, "out"])
            .inc_by(u64::from(self.usage.completion_tokens));
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.dequeue();
        if !self.finished
            && let Some(m) = metrics()
        {
            m.requests
                .with_label_values(&[self.class, "cancelled"])
                .inc();
            // Tokens already spent are still metered.
            self.meter(m);
        }
    }
}
