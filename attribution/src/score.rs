//! Influence scores of every indexed training example on one query (an answer).
//!
//! - **TracIn-CP** (Pruthi et al. 2020): `Σ_c lr_c · ⟨q_c, g_ic⟩`, where `q_c` is the
//!   answer's loss gradient and `g_ic` example `i`'s, both at checkpoint `c`. A first-order
//!   estimate of how much the training steps on `i` lowered the answer's loss.
//! - **TracIn-cos**: the same with both gradients unit-normalised per checkpoint, so an
//!   example with a large loss (a large gradient) does not outrank better-matching ones
//!   merely by its size.
//! - **TracIn-ccos**: TracIn-cos after subtracting, at each checkpoint, the mean training
//!   feature from the answer's and every example's features. The mean is what every
//!   example pushes the adapter towards (the output format, the end-of-sequence token, the
//!   base model's bias); without it the cosine compares what is specific to each example.
//! - **DataInf** (Kwon et al. 2023): per layer `l`, the inverse damped Gauss–Newton matrix
//!   `(G_l + λ_l I)⁻¹` replaced by DataInf's closed form
//!   `(1/(nλ_l)) Σ_j (I − g_j g_jᵀ / (λ_l + ‖g_j‖²))`, giving
//!   `score_i = Σ_c lr_c Σ_l (n⟨q, g_i⟩ − ⟨u_l, g_i⟩) / (n λ_l)` with
//!   `u_l = Σ_j g_j ⟨q, g_j⟩ / (λ_l + ‖g_j‖²)`. `λ_l = damping · mean_j ‖g_jl‖²` (DataInf's
//!   default is 0.1). Costs three passes over the index, no n × n matrix.
//!
//! Sign: positive means the example made the answer more likely (DataInf's paper reports
//! the negative, the loss increase under up-weighting).

use serde::{Deserialize, Serialize};

use crate::index::AttributionIndex;
use crate::{AttributionError, dot};

/// Which score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// Σ lr × dot product.
    Tracin,
    /// Σ lr × cosine.
    TracinCos,
    /// Σ lr × cosine of mean-centred features.
    TracinCcos,
    /// DataInf's damped per-layer preconditioned score.
    Datainf { damping: f64 },
}

impl Method {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Tracin => "tracin",
            Method::TracinCos => "tracin_cos",
            Method::TracinCcos => "tracin_ccos",
            Method::Datainf { .. } => "datainf",
        }
    }
}

/// A method and its parameters, as recorded with every attribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreParams {
    /// The score.
    #[serde(flatten)]
    pub method: Method,
}

fn check_query<'q>(
    index: &AttributionIndex,
    query: &'q [Vec<f32>],
) -> Result<Vec<&'q [f32]>, AttributionError> {
    let k = index.checkpoints();
    if query.len() != k && query.len() != 1 {
        return Err(AttributionError::shape("query checkpoints", k, query.len()));
    }
    let mut out = Vec::with_capacity(k);
    for c in 0..k {
        let q = if query.len() == 1 {
            &query[0]
        } else {
            &query[c]
        };
        if q.len() != index.dims() {
            return Err(AttributionError::shape(
                "query feature length",
                index.dims(),
                q.len(),
            ));
        }
        out.push(q.as_slice());
    }
    Ok(out)
}

/// Scores of every indexed example for a query. `query[c]` is the answer's features at
/// checkpoint `c` (projected like the index); a single vector stands for every checkpoint
/// (the served adapter's gradient only: cheaper, an approximation).
pub fn scores(
    index: &AttributionIndex,
    query: &[Vec<f32>],
    method: Method,
) -> Result<Vec<f64>, AttributionError> {
    let q = check_query(index, query)?;
    let n = index.len();
    let mut out = vec![0.0f64; n];
    match method {
        Method::TracinCcos => {
            for (c, qc) in q.iter().enumerate() {
                let lr = index.header.checkpoints[c].lr;
                let mean = mean_feature(index, c);
                let qv: Vec<f32> = qc.iter().zip(&mean).map(|(a, m)| a - m).collect();
                let qn = dot(&qv, &qv).sqrt();
                let mut g = vec![0.0f32; mean.len()];
                for (i, o) in out.iter_mut().enumerate() {
                    for ((x, f), m) in g.iter_mut().zip(index.feature(c, i)).zip(&mean) {
                        *x = f - m;
                    }
                    let gn = dot(&g, &g).sqrt();
                    if gn > 0.0 && qn > 0.0 {
                        *o += lr * dot(&qv, &g) / (gn * qn);
                    }
                }
            }
        }
        Method::Tracin | Method::TracinCos => {
            for (c, qc) in q.iter().enumerate() {
                let lr = index.header.checkpoints[c].lr;
                let qn = dot(qc, qc).sqrt();
                for (i, o) in out.iter_mut().enumerate() {
                    let g = index.feature(c, i);
                    let d = dot(qc, g);
                    *o += lr
                        * if method == Method::TracinCos {
                            let gn = dot(g, g).sqrt();
                            if gn > 0.0 && qn > 0.0 {
                                d / (gn * qn)
                            } else {
                                0.0
                            }
                        } else {
                            d
                        };
                }
            }
        }
        Method::Datainf { damping } => {
            if !(damping > 0.0 && damping.is_finite()) {
                return Err(AttributionError::invalid(
                    "damping",
                    format!("{damping} must be positive and finite"),
                ));
            }
            let ranges = index.header.feature_layout.ranges();
            for (c, qc) in q.iter().enumerate() {
                let lr = index.header.checkpoints[c].lr;
                for r in &ranges {
                    let ql = &qc[r.clone()];
                    let norms: Vec<f64> = (0..n)
                        .map(|i| {
                            let g = &index.feature(c, i)[r.clone()];
                            dot(g, g)
                        })
                        .collect();
                    let mean = norms.iter().sum::<f64>() / n.max(1) as f64;
                    let lambda = damping * mean;
                    if lambda <= 0.0 {
                        continue;
                    }
                    let dots: Vec<f64> = (0..n)
                        .map(|i| dot(ql, &index.feature(c, i)[r.clone()]))
                        .collect();
                    let mut u = vec![0.0f64; r.len()];
                    for i in 0..n {
                        let w = dots[i] / (lambda + norms[i]);
                        for (uj, gj) in u.iter_mut().zip(&index.feature(c, i)[r.clone()]) {
                            *uj += w * f64::from(*gj);
                        }
                    }
                    let scale = lr / (n as f64 * lambda);
                    for (i, o) in out.iter_mut().enumerate() {
                        let g = &index.feature(c, i)[r.clone()];
                        let ug: f64 = u.iter().zip(g).map(|(a, b)| a * f64::from(*b)).sum();
                        *o += scale * (n as f64 * dots[i] - ug);
                    }
                }
            }
        }
    }
    if let Some(bad) = suspects(index) {
        for (o, bad) in out.iter_mut().zip(bad) {
            if bad {
                *o = 0.0;
            }
        }
    }
    Ok(out)
}

/// How many scaled median absolute deviations (MAD × 1.4826, the normal's σ) above the
/// median fit loss make an example a suspect.
pub const SUSPECT_MADS: f64 = 4.0;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Fewest examples a contributor needs before its outliers are judged.
pub const SUSPECT_MIN_GROUP: usize = 5;

/// Examples the trained adapter fits far worse than the same contributor's other examples:
/// fit loss above the contributor's median by more than [`SUSPECT_MADS`] robust standard
/// deviations (contributors are read from the provenance's `contributors`, one per example;
/// without them the whole index is one group). Training could not make them agree with the
/// rest of their owner's data (a scrambled or corrupted output); [`scores`] gives them no
/// credit. Groups are per contributor because skills differ in how well they can be fit.
/// `None` when the index records no fit losses (indexes built before them).
pub fn suspects(index: &AttributionIndex) -> Option<Vec<bool>> {
    let losses = index.header.fit_losses.as_ref()?;
    if losses.len() != index.len() || losses.is_empty() {
        return None;
    }
    let owners = contributors_of(index);
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for i in 0..losses.len() {
        groups.entry(owner_at(&owners, i)).or_default().push(i);
    }
    let mut bad = vec![false; losses.len()];
    for rows in groups.values().filter(|r| r.len() >= SUSPECT_MIN_GROUP) {
        let v: Vec<f64> = rows.iter().map(|&i| f64::from(losses[i])).collect();
        let med = median(&mut v.clone());
        let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
        let sigma = 1.4826 * median(&mut dev);
        let cut = med + SUSPECT_MADS * sigma.max(1e-6 * med.abs().max(1e-6));
        for (&i, &x) in rows.iter().zip(&v) {
            bad[i] = x > cut;
        }
    }
    Some(bad)
}

fn contributors_of(index: &AttributionIndex) -> Option<Vec<&str>> {
    index
        .header
        .provenance
        .get("contributors")
        .and_then(|v| v.as_array())
        .filter(|a| a.len() == index.len())
        .map(|a| a.iter().map(|v| v.as_str().unwrap_or("")).collect())
}

fn owner_at<'a>(owners: &Option<Vec<&'a str>>, i: usize) -> &'a str {
    owners
        .as_ref()
        .and_then(|o| o.get(i).copied())
        .unwrap_or("")
}

/// How badly training fit each example, the larger the worse: its fit loss when the index
/// records them, else TracIn self-influence ([`self_influence`]).
pub fn misfit(index: &AttributionIndex) -> Vec<f64> {
    match &index.header.fit_losses {
        Some(l) if l.len() == index.len() => l.iter().map(|&x| f64::from(x)).collect(),
        _ => self_influence(index),
    }
}

/// The mean training feature at checkpoint `c`.
pub fn mean_feature(index: &AttributionIndex, c: usize) -> Vec<f32> {
    let mut sum = vec![0.0f64; index.dims()];
    for i in 0..index.len() {
        for (s, x) in sum.iter_mut().zip(index.feature(c, i)) {
            *s += f64::from(*x);
        }
    }
    let n = index.len().max(1) as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

/// TracIn self-influence of every example, `Σ_c lr_c ‖g_ic‖²`: large for examples the model
/// found hard to fit (mislabelled or corrupted ones stand out).
pub fn self_influence(index: &AttributionIndex) -> Vec<f64> {
    (0..index.len())
        .map(|i| {
            (0..index.checkpoints())
                .map(|c| {
                    let g = index.feature(c, i);
                    index.header.checkpoints[c].lr * dot(g, g)
                })
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{IndexCheckpoint, IndexHeader};
    use crate::project::{BlockLayout, Projection};

    fn index(features: Vec<Vec<f32>>, layout: BlockLayout) -> AttributionIndex {
        let header = IndexHeader {
            projection: Projection::Exact,
            gradient_layout: layout.clone(),
            feature_layout: layout,
            checkpoints: vec![IndexCheckpoint { step: 1, lr: 0.1 }],
            example_ids: (0..features.len()).map(|i| i.to_string()).collect(),
            provenance: serde_json::Value::Null,
            fit_losses: None,
        };
        AttributionIndex::new(header, vec![features]).unwrap()
    }

    #[test]
    fn an_example_its_owner_fits_far_worse_gets_no_credit() {
        // Two contributors, six examples each; every example points the same way as the
        // query. Contributor b's losses sit higher than a's (a harder skill), which alone
        // flags nothing; a's fifth example is far above a's others.
        let layout = BlockLayout::new(vec![("layers.0".into(), 2)]);
        let mut idx = index(vec![vec![1.0, 0.5]; 12], layout);
        let q = vec![vec![1.0f32, 0.5]];
        let before = scores(&idx, &q, Method::Tracin).unwrap();
        let owners: Vec<&str> = (0..12).map(|i| if i < 6 { "a" } else { "b" }).collect();
        idx.header.provenance = serde_json::json!({ "contributors": owners });
        let mut losses = vec![0.50, 0.52, 0.49, 0.51, 0.50, 0.50];
        losses[4] = 2.0;
        losses.extend([1.50, 1.52, 1.49, 1.51, 1.50, 1.53]);
        idx.header.fit_losses = Some(losses.iter().map(|&x| x as f32).collect());
        let bad = suspects(&idx).unwrap();
        assert_eq!(bad.iter().filter(|b| **b).count(), 1);
        assert!(bad[4]);
        let after = scores(&idx, &q, Method::TracinCcos).unwrap();
        assert_eq!(after[4], 0.0);
        let after = scores(&idx, &q, Method::Tracin).unwrap();
        assert_eq!(after[4], 0.0);
        assert_eq!(after[3], before[3]);
        assert_eq!(misfit(&idx)[4], 2.0);
        // One global group (no contributors recorded): b's ordinary losses are not
        // outliers of a group of twelve whose median sits between the two skills either.
        idx.header.provenance = serde_json::Value::Null;
        assert!(suspects(&idx).is_some());
        // Without fit losses nothing changes.
        idx.header.fit_losses = None;
        assert_eq!(suspects(&idx), None);
        assert_eq!(scores(&idx, &q, Method::Tracin).unwrap(), before);
    }

    #[test]
    fn tracin_is_lr_weighted_dot_over_checkpoints() {
        let idx = crate::index::tests::small_index();
        let q = vec![vec![1.0, 1.0, 1.0], vec![0.0, 0.0, 1.0]];
        let s = scores(&idx, &q, Method::Tracin).unwrap();
        // ex a: 0.5·(1+0+2) + 0.25·4 = 2.5; ex b: 0.5·(0+1-1) + 0.25·0.5 = 0.125
        assert!(
            (s[0] - 2.5).abs() < 1e-12 && (s[1] - 0.125).abs() < 1e-12,
            "{s:?}"
        );
        let one = scores(&idx, &q[..1], Method::Tracin).unwrap();
        // the single query stands for both checkpoints: a: 1.5 + 0.25·6 = 3.0
        assert!((one[0] - 3.0).abs() < 1e-12);
        assert!(scores(&idx, &[vec![1.0]], Method::Tracin).is_err());
    }

    #[test]
    fn datainf_matches_the_explicit_inverse_formula() {
        // One block, n = 3, d = 2: compare with (1/(nλ)) Σ_j (I - g_j g_jᵀ/(λ+‖g_j‖²)) built
        // as a matrix.
        let g = vec![vec![1.0f32, 0.5], vec![-0.5, 2.0], vec![0.25, 0.25]];
        let idx = index(g.clone(), BlockLayout::new(vec![("l".into(), 2)]));
        let q = vec![vec![0.3f32, -0.7]];
        let damping = 0.1;
        let s = scores(&idx, &q, Method::Datainf { damping }).unwrap();
        let norms: Vec<f64> = g.iter().map(|v| dot(v, v)).collect();
        let lambda = damping * norms.iter().sum::<f64>() / 3.0;
        let mut m = [[0.0f64; 2]; 2];
        for (j, gj) in g.iter().enumerate() {
            for a in 0..2 {
                for b in 0..2 {
                    let id = if a == b { 1.0 } else { 0.0 };
                    m[a][b] += (id - f64::from(gj[a]) * f64::from(gj[b]) / (lambda + norms[j]))
                        / (3.0 * lambda);
                }
            }
        }
        for (i, gi) in g.iter().enumerate() {
            let mut want = 0.0;
            for a in 0..2 {
                for b in 0..2 {
                    want += f64::from(q[0][a]) * m[a][b] * f64::from(gi[b]);
                }
            }
            assert!(
                (s[i] - 0.1 * want).abs() < 1e-9,
                "{i}: {} vs {}",
                s[i],
                0.1 * want
            );
        }
        assert!(scores(&idx, &q, Method::Datainf { damping: 0.0 }).is_err());
    }

    #[test]
    fn centring_removes_the_direction_every_example_shares() {
        // Every example = common + its own direction; the query is example 1's own
        // direction plus the common part. Plain cosine is dominated by the common part.
        let lay = BlockLayout::new(vec![("l".into(), 3)]);
        let idx = index(
            vec![
                vec![10.0, 1.0, 0.0],
                vec![10.0, 0.0, 1.0],
                vec![10.0, -1.0, -1.0],
            ],
            lay,
        );
        let q = vec![vec![10.0f32, 0.0, 1.0]];
        let c = scores(&idx, &q, Method::TracinCcos).unwrap();
        assert!(c[1] > 0.0 && c[0] < c[1] && c[2] < c[1], "{c:?}");
        let mean = mean_feature(&idx, 0);
        assert_eq!(mean, vec![10.0, 0.0, 0.0]);
    }

    #[test]
    fn cosine_ignores_gradient_size_and_self_influence_sees_it() {
        let lay = BlockLayout::new(vec![("l".into(), 2)]);
        let idx = index(vec![vec![10.0, 1.0], vec![0.1, 0.1]], lay);
        let q = vec![vec![1.0f32, 1.0]];
        let dotted = scores(&idx, &q, Method::Tracin).unwrap();
        let cos = scores(&idx, &q, Method::TracinCos).unwrap();
        assert!(dotted[0] > dotted[1]);
        assert!(cos[1] > cos[0]);
        let si = self_influence(&idx);
        assert!(si[0] > 100.0 * si[1]);
    }
}
