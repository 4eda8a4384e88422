//! Counterfactual truth for the attribution benchmark: retraining without data and
//! measuring what actually changed, against what the scores predicted.
//!
//! - **Linear datamodeling score** (LDS; Park et al. 2023, as Kronfluence and dattri compute
//!   it): `subsets` random halves of the training rows (seeded), an adapter retrained on
//!   each with the benchmark's own settings, and each answer's loss under it. For one
//!   answer and one method the prediction for half `S` is `Σ_{i∈S} score_i`; the LDS is
//!   Spearman's correlation, across the halves, of the prediction with the answer's
//!   *negated* loss (a positive score means the example made the answer more likely), then
//!   averaged over answers.
//! - **Contributor leave-one-out**: one adapter retrained without each contributor's rows;
//!   per answer, the rise of its loss when a contributor is left out against that
//!   contributor's summed positive score, Spearman across contributors, averaged over
//!   answers.
//!
//! Every retraining reuses the benchmark's seed (data order and adapter initialisation), so
//! what differs between runs is the data alone.
// Planted sets may be read from JSONL made elsewhere: index only through `get`.
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tributary_attribution::metrics::spearman;

use super::BenchOptions;
use super::train::train;
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::train::TrainExample;

/// One method's counterfactual agreement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodAgreement {
    /// The method.
    pub method: String,
    /// Mean over answers of the LDS (`None` without `--lds`).
    pub lds: Option<f64>,
    /// Mean over answers of the contributor leave-one-out Spearman (`None` without
    /// `--loo`).
    pub loo_spearman: Option<f64>,
}

/// What the retrainings found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CounterfactualReport {
    /// Random halves retrained for the LDS.
    pub subsets: usize,
    /// Contributors left out one at a time.
    pub left_out: usize,
    /// Per method.
    pub methods: Vec<MethodAgreement>,
    /// Seconds spent retraining and evaluating.
    pub seconds: f64,
    /// Which rows each half kept (`masks[j][i]`), for offline analysis.
    #[serde(skip)]
    pub masks: Vec<Vec<bool>>,
    /// `subset_losses[j][q]`: answer `q`'s loss under half `j`'s adapter.
    #[serde(skip)]
    pub subset_losses: Vec<Vec<f64>>,
}

/// What the counterfactual runs need from the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The base model.
    pub model: &'a CausalLm,
    /// The training rows as examples, in index order.
    pub examples: &'a [TrainExample],
    /// Who owns each row.
    pub contributors: &'a [String],
    /// The attributed answers.
    pub answers: &'a [TrainExample],
    /// `scores[q]`: `(method, scores over rows)` for answer `q`.
    pub scores: &'a [Vec<(String, Vec<f64>)>],
}

/// Each answer's loss under an adapter trained on `keep` of the rows.
fn losses_when_trained_on(
    inputs: &Inputs<'_>,
    keep: &[bool],
    opts: &BenchOptions,
) -> Result<Vec<f64>, ModelError> {
    let subset: Vec<TrainExample> = inputs
        .examples
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(e, _)| e.clone())
        .collect();
    let final_only = BenchOptions {
        checkpoints: 0,
        initial_checkpoint: false,
        base_gradient: true,
        ..opts.clone()
    };
    let trained = train(inputs.model, &subset, &final_only)?;
    let losses = crate::features::fit_losses(inputs.model, &trained.final_adapter, inputs.answers)?;
    Ok(losses.into_iter().map(f64::from).collect())
}

/// Random halves of `n` rows: each keeps exactly `n / 2`, chosen by a generator seeded
/// from `seed` and the half's number.
pub fn half_masks(n: usize, subsets: usize, seed: u64) -> Vec<Vec<bool>> {
    (0..subsets)
        .map(|j| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x4c44_5300 + j as u64));
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut rng);
            let mut keep = vec![false; n];
            for &i in order.iter().take(n / 2) {
                if let Some(k) = keep.get_mut(i) {
                    *k = true;
                }
            }
            keep
        })
        .collect()
}

/// Mean of the defined values (`None` when none is).
fn mean(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = xs.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Runs `subsets` half-retrainings (LDS) and, when `loo`, one retraining per contributor
/// left out, with `full_losses` the answers' losses under the adapter trained on everything.
pub fn run(
    inputs: Inputs<'_>,
    full_losses: &[f64],
    subsets: usize,
    loo: bool,
    opts: &BenchOptions,
) -> Result<CounterfactualReport, ModelError> {
    let t0 = Instant::now();
    let n = inputs.examples.len();
    let masks = half_masks(n, subsets, opts.seed);
    let mut subset_losses = Vec::with_capacity(subsets);
    for (j, keep) in masks.iter().enumerate() {
        subset_losses.push(losses_when_trained_on(&inputs, keep, opts)?);
        tracing::info!(half = j + 1, of = subsets, "retrained (LDS)");
    }
    let mut owners: Vec<&String> = inputs.contributors.iter().collect();
    owners.sort();
    owners.dedup();
    // loo_rise[c][q]: answer q's loss rise when contributor c is left out.
    let mut loo_rise = Vec::new();
    if loo {
        for (ci, c) in owners.iter().enumerate() {
            let keep: Vec<bool> = inputs.contributors.iter().map(|o| o != *c).collect();
            let losses = losses_when_trained_on(&inputs, &keep, opts)?;
            loo_rise.push(
                losses
                    .iter()
                    .zip(full_losses)
                    .map(|(l, f)| l - f)
                    .collect::<Vec<f64>>(),
            );
            tracing::info!(
                left_out = ci + 1,
                of = owners.len(),
                "retrained (leave one out)"
            );
        }
    }
    let methods = agreement(
        inputs.scores,
        inputs.contributors,
        &masks,
        &subset_losses,
        &loo_rise,
    );
    Ok(CounterfactualReport {
        subsets,
        left_out: if loo { owners.len() } else { 0 },
        methods,
        seconds: t0.elapsed().as_secs_f64(),
        masks,
        subset_losses,
    })
}

/// Each method's LDS and leave-one-out Spearman from the retrainings' results:
/// `subset_losses[j][q]` is answer `q`'s loss after training on `masks[j]`; `loo_rise[c][q]`
/// its loss rise when the `c`-th contributor (in sorted order) is left out.
pub fn agreement(
    scores: &[Vec<(String, Vec<f64>)>],
    contributors: &[String],
    masks: &[Vec<bool>],
    subset_losses: &[Vec<f64>],
    loo_rise: &[Vec<f64>],
) -> Vec<MethodAgreement> {
    let mut owners: Vec<&String> = contributors.iter().collect();
    owners.sort();
    owners.dedup();
    let subsets = masks.len();
    // Per method: each answer's LDS and leave-one-out Spearman.
    type PerAnswer = (Vec<Option<f64>>, Vec<Option<f64>>);
    let mut per_method: BTreeMap<&str, PerAnswer> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (q, by_method) in scores.iter().enumerate() {
        for (name, s) in by_method {
            if !per_method.contains_key(name.as_str()) {
                order.push(name);
            }
            let entry = per_method.entry(name).or_default();
            if subsets >= 2 {
                let predicted: Vec<f64> = masks
                    .iter()
                    .map(|keep| {
                        s.iter()
                            .zip(keep)
                            .filter(|(_, k)| **k)
                            .map(|(v, _)| v)
                            .sum()
                    })
                    .collect();
                let actual: Vec<f64> = subset_losses
                    .iter()
                    .map(|l| -l.get(q).copied().unwrap_or(f64::NAN))
                    .collect();
                entry.0.push(spearman(&predicted, &actual));
            }
            if !loo_rise.is_empty() {
                let predicted: Vec<f64> = owners
                    .iter()
                    .map(|c| {
                        s.iter()
                            .zip(contributors)
                            .filter(|(v, o)| o == c && **v > 0.0)
                            .map(|(v, _)| v)
                            .sum()
                    })
                    .collect();
                let actual: Vec<f64> = loo_rise
                    .iter()
                    .map(|r| r.get(q).copied().unwrap_or(f64::NAN))
                    .collect();
                entry.1.push(spearman(&predicted, &actual));
            }
        }
    }
    order
        .into_iter()
        .map(|name| {
            let (lds, loo_s) = per_method.remove(name).unwrap_or_default();
            MethodAgreement {
                method: name.to_owned(),
                lds: mean(lds.into_iter()),
                loo_spearman: mean(loo_s.into_iter()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_that_predict_the_retrainings_agree_and_their_negation_disagrees() {
        // Three rows: a (contributor x) lowers the answer's loss by 3 when trained on,
        // b (y) by 1, c (z) by nothing; the loss is 10 minus what was kept.
        let contributors: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let effect = [3.0, 1.0, 0.0];
        let masks: Vec<Vec<bool>> = [
            [true, false, true],
            [false, true, true],
            [true, true, false],
        ]
        .map(|m| m.to_vec())
        .to_vec();
        let losses: Vec<Vec<f64>> = masks
            .iter()
            .map(|m| {
                vec![
                    10.0 - m
                        .iter()
                        .zip(effect)
                        .filter(|(k, _)| **k)
                        .map(|(_, e)| e)
                        .sum::<f64>(),
                ]
            })
            .collect();
        // Leaving x out raises the loss by 3, y by 1, z by 0.
        let loo: Vec<Vec<f64>> = effect.iter().map(|e| vec![*e]).collect();
        let scores = vec![vec![
            ("right".to_owned(), vec![2.0, 0.5, 0.1]),
            ("negated".to_owned(), vec![-2.0, -0.5, -0.1]),
        ]];
        let a = agreement(&scores, &contributors, &masks, &losses, &loo);
        assert_eq!(a[0].method, "right");
        assert!((a[0].lds.unwrap() - 1.0).abs() < 1e-12, "{a:?}");
        assert!((a[0].loo_spearman.unwrap() - 1.0).abs() < 1e-12, "{a:?}");
        assert!((a[1].lds.unwrap() + 1.0).abs() < 1e-12, "{a:?}");
        // Negative scores count as nothing for shares: all three contributors tie at 0.
        assert_eq!(a[1].loo_spearman, None, "{a:?}");
    }

    #[test]
    fn halves_keep_half_and_differ() {
        let m = half_masks(11, 3, 7);
        assert_eq!(m.len(), 3);
        for keep in &m {
            assert_eq!(keep.iter().filter(|k| **k).count(), 5);
        }
        assert_ne!(m[0], m[1]);
        assert_eq!(m, half_masks(11, 3, 7), "seeded");
    }
}
