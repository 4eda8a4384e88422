//! Job progress arithmetic: throughput and ETA from step times.

use serde::{Deserialize, Serialize};

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

/// Progress after `step` steps (of `total`) that took `elapsed_secs` and saw `tokens` tokens
/// since this run of the job started at `start_step`.
pub fn progress(
    step: u64,
    total: u64,
    start_step: u64,
    loss: Option<f32>,
    tokens: u64,
    elapsed_secs: f64,
) -> Progress {
    let done = step.saturating_sub(start_step);
    let (tps, eta) = if elapsed_secs > 0.0 && done > 0 {
        let per_step = elapsed_secs / done as f64;
        (
            tokens as f64 / elapsed_secs,
            Some(per_step * total.saturating_sub(step) as f64),
        )
    } else {
        (0.0, None)
    };
    Progress {
        step,
        total_steps: total,
        loss,
        tokens,
        tokens_per_sec: tps,
        eta_secs: eta,
    }
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
