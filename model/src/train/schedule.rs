//! Learning-rate schedules with linear warm-up, as transformers' `get_*_schedule_with_warmup`.

use serde::{Deserialize, Serialize};

/// What happens to the learning rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Stays at the peak.
    Constant,
    /// Falls linearly to 0 at `total_steps`.
    #[default]
    Linear,
    /// Half a cosine down to 0 at `total_steps`.
    Cosine,
}

impl Schedule {
    /// The multiplier of the peak rate for the step after `step` completed steps
    /// (transformers' `lr_lambda(current_step)`).
    pub fn factor(self, step: u64, warmup: u64, total: u64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / span;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (total.saturating_sub(step) as f64 / span).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "constant" => Ok(Schedule::Constant),
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(format!(
                "unknown schedule `{other}` (constant, linear, cosine)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        assert_eq!(Schedule::Linear.factor(0, 10, 110), 0.0);
        assert_eq!(Schedule::Linear.factor(5, 10, 110), 0.5);
        assert_eq!(Schedule::Linear.factor(10, 10, 110), 1.0);
        assert!((Schedule::Linear.factor(60, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Linear.factor(200, 10, 110), 0.0);
        assert!((Schedule::Cosine.factor(60, 10, 110) - 0.5).abs() < 1e-12);
        assert!(Schedule::Cosine.factor(110, 10, 110).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(1000, 10, 110), 1.0);
    }
}
