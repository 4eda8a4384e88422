//! Job progress as records keep it; the arithmetic (throughput, ETA) is the training
//! driver's (`tributary_model::train::driver::progress`).

use serde::{Deserialize, Serialize};
use tributary_model::train::driver::RunProgress;

/// A job's progress as shown by `job status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub loss: Option<f32>,
    pub tokens: u64,
    pub tokens_per_sec: f64,
    pub eta_secs: Option<f64>,
}

impl From<RunProgress> for Progress {
    fn from(p: RunProgress) -> Self {
        Self {
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss,
            tokens: p.tokens,
            tokens_per_sec: p.tokens_per_sec,
            eta_secs: p.eta_secs,
        }
    }
}

/// Progress after `step` steps (of `total`) that took `elapsed_secs` and saw `tokens` tokens
/// since this run of the job started at `start_step` (the training driver's arithmetic).
pub fn progress(
    step: u64,
    total: u64,
    start_step: u64,
    loss: Option<f32>,
    tokens: u64,
    elapsed_secs: f64,
) -> Progress {
    tributary_model::train::driver::progress(step, total, start_step, loss, tokens, elapsed_secs)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_scales_with_remaining_steps() {
        let p = progress(30, 100, 10, Some(0.5), 4000, 2.0);
        assert_eq!(p.tokens_per_sec, 2000.0);
        assert!((p.eta_secs.unwrap() - 7.0).abs() < 1e-9);
        assert_eq!(progress(10, 100, 10, None, 0, 0.0).eta_secs, None);
    }
}
