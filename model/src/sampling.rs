//! Next-token choice from logits: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//!
//! The processors follow Hugging Face transformers' semantics and order: repetition
//! penalty first (over every token already in prompt and completion: positive logits are
//! divided by the penalty, negative ones multiplied), then temperature, top-k (ties with
//! the k-th value are kept), top-p (the smallest set whose probability reaches `top_p`,
//! at least one token). A temperature of 0 means greedy: the penalty still applies, then
//! the first highest logit wins. Random draws come from a ChaCha20 generator seeded from
//! [`SamplingConfig::seed`]; each row of a batch uses its own stream, so a prompt samples
//! the same completion alone or in a batch.
// Token ids and ranks come from requests and models: index only through `get`.
#![deny(clippy::indexing_slicing)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// A sampling parameter out of range, or logits that cannot be sampled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A parameter is outside its allowed range.
    #[error("sampling parameter `{field}` = {value} is out of range: {limit}")]
    OutOfRange {
        field: &'static str,
        value: String,
        limit: &'static str,
    },
    /// The logits are empty.
    #[error("cannot sample from an empty logits vector")]
    Empty,
    /// A logit is NaN.
    #[error("logit {index} is NaN")]
    NaN { index: usize },
}

/// How to choose each next token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `k` highest logits (`None` or 0: off).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0: off).
    pub top_p: f32,
    /// HF repetition penalty over prompt and completion (1.0: off).
    pub repetition_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingConfig {
    /// Greedy decoding, no penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// Whether this configuration always takes the highest logit.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::OutOfRange {
                field: "temperature",
                value: self.temperature.to_string(),
                limit: "must be finite and >= 0 (0 = greedy)",
            });
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::OutOfRange {
                field: "top_p",
                value: self.top_p.to_string(),
                limit: "must be in (0, 1]",
            });
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplingError::OutOfRange {
                field: "repetition_penalty",
                value: self.repetition_penalty.to_string(),
                limit: "must be finite and > 0 (1 = off)",
            });
        }
        Ok(())
    }
}

/// HF repetition penalty: for each distinct token in `context`, a positive logit is divided
/// by `penalty` and a negative one multiplied by it. Ids outside the logits are ignored.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in context {
        let i = id as usize;
        if let (Some(x), Some(seen)) = (logits.get_mut(i), seen.get_mut(i))
            && !*seen
        {
            *seen = true;
            *x = if *x < 0.0 { *x * penalty } else { *x / penalty };
        }
    }
}

/// Divides every logit by `temperature` (> 0).
pub fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        for x in logits.iter_mut() {
            *x /= temperature;
        }
    }
}

/// Sets every logit below the `k`-th highest to -inf (ties with the `k`-th are kept).
pub fn apply_top_k(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    // 0 < k < logits.len() here, so the k-th highest exists.
    let Some(&kth) = sorted.get(k - 1) else {
        return;
    };
    for x in logits.iter_mut() {
        if *x < kth {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// HF top-p: sorting ascending, tokens whose cumulative probability is at most `1 - top_p`
/// are removed (set to -inf); the most likely token always stays.
pub fn apply_top_p(logits: &mut [f32], top_p: f32) {
    if top_p >= 1.0 || logits.is_empty() {
        return;
    }
    let probs = softmax(logits);
    // (logit, index, probability), ascending by logit, ties: the higher index first.
    let mut order: Vec<(f32, usize, f64)> = logits
        .iter()
        .zip(probs)
        .enumerate()
        .map(|(i, (&x, p))| (x, i, p))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let threshold = 1.0 - f64::from(top_p);
    let mut cumulative = 0.0f64;
    let last = order.len() - 1;
    for (rank, &(_, i, p)) in order.iter().enumerate() {
        cumulative += p;
        if rank < last
            && cumulative <= threshold
            && let Some(x) = logits.get_mut(i)
        {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f64 (entries at -inf get probability 0).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let exps: Vec<f64> = logits
        .iter()
        .map(|&x| (f64::from(x) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Index of the first highest logit.
pub fn argmax(logits: &[f32]) -> Result<u32, SamplingError> {
    check(logits)?;
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if i == 0 || x > best.1 {
            best = (i, x);
        }
    }
    Ok(best.0 as u32)
}

fn check(logits: &[f32]) -> Result<(), SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::Empty);
    }
    match logits.iter().position(|x| x.is_nan()) {
        Some(index) => Err(SamplingError::NaN { index }),
        None => Ok(()),
    }
}

/// Draws an index from `probs` (summing to ~1) with the uniform number `u` in [0, 1).
fn draw(probs: &[f64], u: f64) -> usize {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last_nonzero = i;
            cumulative += p;
            if target < cumulative {
                return i;
            }
        }
    }
    last_nonzero
}

/// A seeded sampler for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha20Rng,
}

impl Sampler {
    /// A sampler for row 0 of a batch.
    pub fn new(config: SamplingConfig) -> Result<Self, SamplingError> {
        Self::for_row(config, 0)
    }

    /// A sampler for `row` of a batch: same seed, its own random stream.
    pub fn for_row(config: SamplingConfig, row: usize) -> Result<Self, SamplingError> {
        config.validate()?;
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        rng.set_stream(row as u64);
        Ok(Self { config, rng })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Chooses the next token from `logits` (modified in place by the processors), given
    /// every token so far (`context`: prompt then completion) for the repetition penalty.
    pub fn next_token(
        &mut self,
        logits: &mut [f32],
        context: &[u32],
    ) -> Result<u32, SamplingError> {
        check(logits)?;
        apply_repetition_penalty(logits, context, self.config.repetition_penalty);
        if self.config.is_greedy() {
            return argmax(logits);
        }
        apply_temperature(logits, self.config.temperature);
        if let Some(k) = self.config.top_k {
            apply_top_k(logits, k);
        }
        apply_top_p(logits, self.config.top_p);
        let probs = softmax(logits);
        let u: f64 = self.rng.random();
        Ok(draw(&probs, u) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_respects_zero_probabilities() {
        assert_eq!(draw(&[0.0, 0.5, 0.0, 0.5], 0.0), 1);
        assert_eq!(draw(&[0.0, 0.5, 0.0, 0.5], 0.75), 3);
        assert_eq!(draw(&[0.0, 0.5, 0.0, 0.5], 0.999_999_9), 3);
    }
}
