//! From example scores to integer contributor shares, with the anti-gaming rules.
//!
//! 1. Negative scores are clipped to zero: an example that made the answer *less* likely
//!    earns nothing (and costs its contributor nothing).
//! 2. Clusters count once. Examples in the same duplicate cluster (the datanet's exact and
//!    near-duplicate clusters, given as `dup_key`) and examples whose mean-centred gradient
//!    features are near-identical (cosine ≥ `cosine_threshold`, default
//!    [`COSINE_THRESHOLD`]; see [`crate::AttributionIndex::centered`]) form one
//!    cluster; its score is its best member's score and it is credited to the member
//!    accepted first (lowest `order`), whoever uploaded the others. So a copy, exact or
//!    paraphrased, adds nothing and earns nothing. Clustering looks at the best
//!    `pool_factor × top_k` candidates (a copy scores like its original, so both are there).
//! 3. The `top_k` best clusters are kept (long tails of tiny scores are noise).
//! 4. Scores are summed per contributor and normalised; integer shares of `units` by the
//!    largest-remainder method, ties by contributor id.
//!
//! **Splitting never pays.** Nothing depends on who uploaded an example except the owner of
//! its cluster, and identities do not enter scores, clusters, or the top-k: splitting one
//! dataset across identities leaves every cluster's score unchanged and the sum over the
//! identities equals the single identity's share exactly (before rounding; the integer
//! rounding can move at most one unit per identity, one millionth of the whole by default).
//! There is no per-contributor cap for the same reason: any cap is escaped by splitting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AttributionError;

/// Cosine of mean-centred gradient features at or above which two examples are treated as
/// one. Chosen on the benchmark (`docs/attribution.md`): distinct examples of one skill
/// stay below it (99th percentile of same-contributor pairs), paraphrased copies (same
/// completion, prompt reworded) mostly above it.
pub const COSINE_THRESHOLD: f64 = 0.8;

/// One scored training example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Position in the attribution index.
    pub example: usize,
    /// Its influence score on the answer.
    pub score: f64,
    /// The identity credited for it (the datanet's owner of the example).
    pub contributor: String,
    /// Acceptance order in the datanet (earlier owns a shared cluster).
    pub order: u64,
    /// The datanet's duplicate cluster, when it has one.
    pub dup_key: Option<String>,
}

/// Parameters of the share computation (recorded with every attribution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShareParams {
    /// Clusters kept.
    pub top_k: usize,
    /// Gradient cosine that merges two examples; `None` turns this rule off.
    pub cosine_threshold: Option<f64>,
    /// Candidates clustered: `pool_factor × top_k` best.
    pub pool_factor: usize,
    /// Share units handed out (shares sum to exactly this, unless nothing scored).
    pub units: u64,
}

impl Default for ShareParams {
    fn default() -> Self {
        Self {
            top_k: 32,
            cosine_threshold: Some(COSINE_THRESHOLD),
            pool_factor: 4,
            units: 1_000_000,
        }
    }
}

/// A cluster that earned credit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    /// The credited contributor.
    pub contributor: String,
    /// The cluster's score (its best member's).
    pub score: f64,
    /// Index positions of its members, the credited (first-accepted) one first.
    pub members: Vec<usize>,
}

/// Shares of one answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shares {
    /// Units in total.
    pub units: u64,
    /// Integer shares, by contributor id (only contributors with a positive share).
    pub by_contributor: BTreeMap<String, u64>,
    /// The real-valued score mass per contributor before rounding.
    pub mass: BTreeMap<String, f64>,
    /// The kept clusters, best first.
    pub credits: Vec<Credit>,
}

impl Shares {
    /// Share of `contributor` as a fraction of the whole (0 when absent).
    pub fn fraction(&self, contributor: &str) -> f64 {
        self.by_contributor
            .get(contributor)
            .map_or(0.0, |&u| u as f64 / self.units.max(1) as f64)
    }
}

/// Computes shares. `similar(i, j)` is the gradient cosine of index positions `i` and `j`
/// (e.g. [`crate::AttributionIndex::cosine`] on [`crate::AttributionIndex::centered`]).
pub fn shares(
    candidates: &[Candidate],
    params: &ShareParams,
    similar: impl Fn(usize, usize) -> f64,
) -> Result<Shares, AttributionError> {
    if params.top_k == 0 {
        return Err(AttributionError::invalid("top_k", "must be at least 1"));
    }
    if params.units == 0 {
        return Err(AttributionError::invalid("units", "must be at least 1"));
    }
    if let Some(t) = params.cosine_threshold
        && !(t > 0.0 && t <= 1.0)
    {
        return Err(AttributionError::invalid(
            "cosine_threshold",
            format!("{t} must be in (0, 1]"),
        ));
    }
    if let Some(c) = candidates.iter().find(|c| !c.score.is_finite()) {
        return Err(AttributionError::invalid(
            "score",
            format!("example {} has score {}", c.example, c.score),
        ));
    }
    let mut ranked: Vec<&Candidate> = candidates.iter().filter(|c| c.score > 0.0).collect();
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.order.cmp(&b.order))
            .then(a.example.cmp(&b.example))
    });
    ranked.truncate(params.top_k.saturating_mul(params.pool_factor.max(1)));

    // Clusters in order of their best member; each keeps its members.
    let mut clusters: Vec<Vec<&Candidate>> = Vec::new();
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for c in ranked {
        let mut home = c.dup_key.as_deref().and_then(|k| by_key.get(k).copied());
        if home.is_none()
            && let Some(t) = params.cosine_threshold
        {
            home = clusters
                .iter()
                .position(|m| m.iter().any(|o| similar(o.example, c.example) >= t));
        }
        let at = match home {
            Some(h) => {
                clusters[h].push(c);
                h
            }
            None => {
                clusters.push(vec![c]);
                clusters.len() - 1
            }
        };
        if let Some(k) = c.dup_key.as_deref() {
            by_key.entry(k).or_insert(at);
        }
    }
    let mut credits: Vec<Credit> = clusters
        .into_iter()
        .map(|mut m| {
            let score = m[0].score;
            m.sort_by_key(|c| (c.order, c.example));
            Credit {
                contributor: m[0].contributor.clone(),
                score,
                members: m.iter().map(|c| c.example).collect(),
            }
        })
        .collect();
    credits.truncate(params.top_k);

    let mut mass: BTreeMap<String, f64> = BTreeMap::new();
    for c in &credits {
        *mass.entry(c.contributor.clone()).or_default() += c.score;
    }
    let by_contributor = largest_remainder(&mass, params.units);
    Ok(Shares {
        units: params.units,
        by_contributor,
        mass,
        credits,
    })
}

/// Integer parts of `units` proportional to `weights` (non-negative): floors first, the
/// units left over to the largest remainders, ties by key (the map's order). Sums to
/// exactly `units` when any weight is positive; empty otherwise. Zero parts are left out.
pub fn largest_remainder(weights: &BTreeMap<String, f64>, units: u64) -> BTreeMap<String, u64> {
    let total: f64 = weights.values().filter(|w| **w > 0.0).sum();
    let mut out = BTreeMap::new();
    if total <= 0.0 || !total.is_finite() {
        return out;
    }
    let mut parts: Vec<(&String, u64, f64)> = weights
        .iter()
        .filter(|(_, w)| **w > 0.0)
        .map(|(k, w)| {
            let quota = w / total * units as f64;
            let floor = (quota.floor() as u64).min(units);
            (k, floor, quota - floor as f64)
        })
        .collect();
    let used: u64 = parts.iter().map(|p| p.1).sum();
    let mut left = units.saturating_sub(used);
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| {
        parts[b]
            .2
            .total_cmp(&parts[a].2)
            .then(parts[a].0.cmp(parts[b].0))
    });
    let mut i = 0;
    while left > 0 && !order.is_empty() {
        parts[order[i % order.len()]].1 += 1;
        left -= 1;
        i += 1;
    }
    for (k, u, _) in parts {
        if u > 0 {
            out.insert(k.clone(), u);
        }
    }
    out
}

#[cfg(test)]
mod tests;
