//! Step timing seen from the coordinator's side of its worker links: [`TimedLinks`] wraps any
//! [`LinkFactory`] and notes, per training step, when the first `Gradients` command left and
//! when the last `Apply` reply came back, plus the gradient tensor bytes the workers
//! returned. The same wrapper times an in-process worker and workers over QUIC, so the two
//! figures differ only by what lies behind the links.
// A load generator measures real latency and waits on real deadlines.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_protocol::link::{BoxFuture, LinkFactory, WorkerLink};
use tributary_protocol::metrics::{BytesTotals, quic_bytes};
use tributary_protocol::{Command, CommandBody, Payload, ProtocolError, Reply, WorkerInfo};

/// What was seen of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTimes {
    /// The first `Gradients` command of the step was sent.
    pub started: Instant,
    /// The last `Apply` reply of the step came back (`None` until one did).
    pub applied: Option<Instant>,
    /// f32 bytes of gradient tensors returned for the step.
    pub gradient_bytes: u64,
    /// This process's QUIC stream byte counters when the step started and was applied.
    pub quic_started: BytesTotals,
    pub quic_applied: Option<BytesTotals>,
}

impl StepTimes {
    /// Wall time of the step, once applied.
    pub fn duration(&self) -> Option<Duration> {
        self.applied
            .map(|a| a.saturating_duration_since(self.started))
    }
}

/// Per-step records, shared between the links and the bench.
#[derive(Debug, Default)]
pub struct StepLog {
    steps: Mutex<BTreeMap<u64, StepTimes>>,
}

impl StepLog {
    fn started(&self, step: u64, at: Instant) {
        if let Ok(mut s) = self.steps.lock() {
            s.entry(step)
                .and_modify(|t| t.started = t.started.min(at))
                .or_insert(StepTimes {
                    started: at,
                    applied: None,
                    gradient_bytes: 0,
                    quic_started: quic_bytes(),
                    quic_applied: None,
                });
        }
    }

    fn gradients(&self, step: u64, bytes: u64) {
        if let Ok(mut s) = self.steps.lock()
            && let Some(t) = s.get_mut(&step)
        {
            t.gradient_bytes += bytes;
        }
    }

    fn applied(&self, step: u64, at: Instant) {
        if let Ok(mut s) = self.steps.lock()
            && let Some(t) = s.get_mut(&step)
            && t.applied.is_none_or(|a| a <= at)
        {
            t.applied = Some(at);
            t.quic_applied = Some(quic_bytes());
        }
    }

    /// A copy of every step seen so far, in step order.
    pub fn snapshot(&self) -> BTreeMap<u64, StepTimes> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// When the first step was applied, if any was.
    pub fn first_applied(&self) -> Option<Instant> {
        self.snapshot().values().filter_map(|t| t.applied).min()
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Durations in seconds of the applied steps, skipping the first `warmup` of them.
pub fn step_seconds(steps: &BTreeMap<u64, StepTimes>, warmup: usize) -> Vec<f64> {
    steps
        .values()
        .filter_map(StepTimes::duration)
        .skip(warmup)
        .map(|d| d.as_secs_f64())
        .collect()
}

/// Wraps a [`LinkFactory`] so every link it opens records into one [`StepLog`].
pub struct TimedLinks {
    inner: Arc<dyn LinkFactory>,
    log: Arc<StepLog>,
}

impl TimedLinks {
    pub fn new(inner: Arc<dyn LinkFactory>, log: Arc<StepLog>) -> Self {
        Self { inner, log }
    }
}

impl LinkFactory for TimedLinks {
    fn connect<'a>(
        &'a self,
        info: &'a WorkerInfo,
    ) -> BoxFuture<'a, Result<Arc<dyn WorkerLink>, ProtocolError>> {
        Box::pin(async move {
            let link = self.inner.connect(info).await?;
            Ok(Arc::new(TimedLink {
                inner: link,
                log: self.log.clone(),
            }) as Arc<dyn WorkerLink>)
        })
    }
}

struct TimedLink {
    inner: Arc<dyn WorkerLink>,
    log: Arc<StepLog>,
}

impl WorkerLink for TimedLink {
    fn call(&self, cmd: Payload<Command>) -> BoxFuture<'_, Result<Payload<Reply>, ProtocolError>> {
        Box::pin(async move {
            let body = cmd.msg.body.clone();
            if let CommandBody::Gradients { step, .. } = body {
                self.log.started(step, Instant::now());
            }
            let reply = self.inner.call(cmd).await;
            if let Ok(p) = &reply {
                match (&body, &p.msg) {
                    (CommandBody::Gradients { step, .. }, Reply::Gradients { .. }) => {
                        let elems: usize = p.tensors.iter().map(Vec::len).sum();
                        self.log.gradients(*step, elems as u64 * 4);
                    }
                    (CommandBody::Apply { step, .. }, Reply::Ok { .. }) => {
                        self.log.applied(*step, Instant::now());
                    }
                    _ => {}
                }
            }
            reply
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn a_step_spans_first_gradients_to_last_apply() {
        let log = StepLog::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        log.started(0, t0 + ms(5));
        log.started(0, t0);
        log.gradients(0, 400);
        log.gradients(0, 400);
        log.applied(0, t0 + ms(30));
        log.applied(0, t0 + ms(20));
        log.started(1, t0 + ms(40));
        let steps = log.snapshot();
        assert_eq!(steps[&0].duration(), Some(ms(30)));
        assert_eq!(steps[&0].gradient_bytes, 800);
        assert_eq!(steps[&1].duration(), None, "step 1 was never applied");
        assert_eq!(step_seconds(&steps, 0), vec![0.03]);
        assert!(step_seconds(&steps, 1).is_empty());
        assert_eq!(log.first_applied(), Some(t0 + ms(30)));
    }
}
