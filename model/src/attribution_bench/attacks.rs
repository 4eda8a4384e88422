//! The attacks, each measured as the attacker's share gain over the honest run.
//!
//! - **Exact copier**: a new identity re-uploads the first contributor's rows verbatim
//!   (trained on again, as if the datanet had accepted them; their duplicate key ties them
//!   to the originals).
//! - **Paraphrasing copier**: the same with synonyms and swapped words in every prompt,
//!   so no text key matches; only the gradient-cosine rule can tie them.
//! - **Sybil split**: the second contributor's rows spread over three identities (same
//!   data, same adapter).
//! - **Spammer**: the third contributor with 20 % of its completions corrupted, to garbage
//!   (characters scrambled) or to another of its rows' completions (a plausible wrong
//!   answer); self-influence should find them, and the spammer's share should fall below
//!   its honest share.
// Planted sets may be read from JSONL made elsewhere: index only through `get`.
#![deny(clippy::indexing_slicing)]

use super::planted::{PlantedRow, PlantedSet, paraphrase};
use super::run::{
    Setup, World, answer_example, build_world, score_query, self_influence_of, shares_for,
};
use super::{AttackResult, BenchOptions};
use crate::error::ModelError;
use tributary_attribution::metrics;
use tributary_attribution::shares::Shares;

fn contributors(set: &PlantedSet) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &set.data {
        if !out.contains(&r.contributor) {
            out.push(r.contributor.clone());
        }
    }
    out
}

/// Mean share of identities matching `who` over the queries owned by `owner`, in `world`.
fn mean_share(
    setup: Setup<'_>,
    set: &PlantedSet,
    world: &World,
    owner: &str,
    who: &dyn Fn(&str) -> bool,
    opts: &BenchOptions,
) -> Result<f64, ModelError> {
    let mut sum = 0.0;
    let mut n = 0;
    for q in set.queries.iter().filter(|q| q.owner == owner) {
        let (answer, text) = answer_example(setup, world, q, opts)?;
        let full = format!("{} {}", q.prompt, text);
        let s = score_query(setup, world, &answer, &full, opts)?.shares;
        sum += share_of(&s, who);
        n += 1;
    }
    Ok(sum / f64::from(n.max(1)))
}

fn share_of(s: &Shares, who: &dyn Fn(&str) -> bool) -> f64 {
    s.by_contributor
        .iter()
        .filter(|(k, _)| who(k))
        .map(|(_, v)| *v as f64)
        .sum::<f64>()
        / s.units.max(1) as f64
}

fn honest_mean(
    set: &PlantedSet,
    honest: &[Shares],
    owner: &str,
    who: &dyn Fn(&str) -> bool,
) -> f64 {
    let v: Vec<f64> = set
        .queries
        .iter()
        .zip(honest)
        .filter(|(q, _)| q.owner == owner)
        .map(|(_, s)| share_of(s, who))
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn result(attack: &str, honest_share: f64, attack_share: f64) -> AttackResult {
    AttackResult {
        attack: attack.to_owned(),
        honest_share,
        attack_share,
        gain_pct: 100.0 * (attack_share - honest_share),
        detection_auc: None,
        copy_cosine: None,
    }
}

/// Runs the four attacks against the honest `world` (whose per-query shares are `honest`).
pub fn run_all(
    setup: Setup<'_>,
    set: &PlantedSet,
    world: &World,
    honest: &[Shares],
    opts: &BenchOptions,
) -> Result<Vec<AttackResult>, ModelError> {
    let names = contributors(set);
    let [victim, target, spammer_name, ..] = names.as_slice() else {
        return Err(ModelError::Input(
            "the attacks need at least three contributors".into(),
        ));
    };
    let mut out = Vec::new();

    // Copiers of contributor 0.
    let victim = victim.clone();
    let victim_rows: Vec<&PlantedRow> = set
        .data
        .iter()
        .filter(|r| r.contributor == victim)
        .collect();
    for (attack, who, para) in [
        ("exact_copier", "mallory-copy", false),
        ("paraphrase_copier", "mallory-para", true),
    ] {
        let mut rows = set.data.clone();
        let first_copy = rows.len();
        rows.extend(victim_rows.iter().map(|r| PlantedRow {
            contributor: who.to_owned(),
            prompt: if para {
                paraphrase(&r.prompt)
            } else {
                r.prompt.clone()
            },
            completion: r.completion.clone(),
        }));
        let w = build_world(setup, rows, opts)?;
        let is = |k: &str| k == who;
        let share = mean_share(setup, set, &w, &victim, &is, opts)?;
        let mut r = result(attack, 0.0, share);
        if para {
            let originals: Vec<usize> = (set.data.iter().enumerate())
                .filter(|(_, row)| row.contributor == victim)
                .map(|(i, _)| i)
                .collect();
            let mut cos: Vec<f64> = originals
                .iter()
                .enumerate()
                .map(|(j, &i)| w.cos(i, first_copy + j))
                .collect();
            cos.sort_by(f64::total_cmp);
            let median = cos.get(cos.len() / 2).copied().unwrap_or(0.0);
            r.copy_cosine = Some((cos.first().copied().unwrap_or(0.0), median));
        }
        tracing::info!(attack, gain_pct = r.gain_pct, "attack measured");
        out.push(r);
    }

    // Sybil split of contributor 1: same data, three identities.
    let target = target.clone();
    let mut split: Vec<String> = Vec::new();
    let mut j = 0;
    for r in &world.rows {
        if r.contributor == target {
            split.push(format!("{target}-sybil{}", j % 3));
            j += 1;
        } else {
            split.push(r.contributor.clone());
        }
    }
    let prefix = format!("{target}-sybil");
    let honest_share = honest_mean(set, honest, &target, &|k| k == target);
    let mut sum = 0.0;
    let mut n = 0;
    for (q, _) in set
        .queries
        .iter()
        .zip(honest)
        .filter(|(q, _)| q.owner == target)
    {
        let (answer, text) = answer_example(setup, world, q, opts)?;
        let full = format!("{} {}", q.prompt, text);
        let qs = score_query(setup, world, &answer, &full, opts)?;
        let main = &qs
            .by_method
            .iter()
            .find(|(m, _)| m == opts.share_method.name())
            .ok_or_else(|| ModelError::Input("share method missing".into()))?
            .1;
        let s = shares_for(world, main, &split, opts)?;
        sum += share_of(&s, &|k| k.starts_with(&prefix));
        n += 1;
    }
    out.push(result(
        "sybil_split",
        honest_share,
        sum / f64::from(n.max(1)),
    ));

    for swapped in [false, true] {
        out.push(spammer(setup, set, honest, spammer_name, swapped, opts)?);
    }
    Ok(out)
}

/// A spammer: `who` with every fifth completion corrupted, either to garbage (its
/// characters scrambled) or, `swapped`, to another of its rows' completions (a plausible
/// wrong answer). Self-influence ranks its rows; the corrupted ones are the positives.
fn spammer(
    setup: Setup<'_>,
    set: &PlantedSet,
    honest: &[Shares],
    who: &str,
    swapped: bool,
    opts: &BenchOptions,
) -> Result<AttackResult, ModelError> {
    let mut rows = set.data.clone();
    let mine: Vec<usize> = (rows.iter().enumerate())
        .filter(|(_, row)| row.contributor == who)
        .map(|(i, _)| i)
        .collect();
    let corrupted: Vec<usize> = mine.iter().copied().step_by(5).collect();
    if corrupted.len() < 2 {
        return Err(ModelError::Input(
            "the spammer needs at least 10 rows".into(),
        ));
    }
    // Each corrupted row gets the next one's completion (the last, the first's).
    let next = corrupted.iter().cycle().skip(1);
    for (j, (&i, &n)) in corrupted.iter().zip(next).enumerate() {
        let completion = if swapped {
            set.data.get(n).map(|row| row.completion.clone())
        } else {
            set.data
                .get(i)
                .map(|row| scramble(&row.completion, j as u64))
        };
        if let (Some(row), Some(c)) = (rows.get_mut(i), completion) {
            row.completion = c;
        }
    }
    let w = build_world(setup, rows, opts)?;
    let si = self_influence_of(&w);
    let own: Vec<f64> = mine
        .iter()
        .map(|&i| si.get(i).copied().unwrap_or(0.0))
        .collect();
    let positive: Vec<bool> = mine.iter().map(|i| corrupted.contains(i)).collect();
    if let Some(bad) = tributary_attribution::score::suspects(&w.index) {
        let flagged = |rows: &mut dyn Iterator<Item = usize>| {
            rows.filter(|&i| bad.get(i).copied().unwrap_or(false))
                .count()
        };
        tracing::info!(
            corrupted = corrupted.len(),
            corrupted_suspects = flagged(&mut corrupted.iter().copied()),
            all_suspects = flagged(&mut (0..bad.len())),
            "suspects (fit loss outliers)"
        );
    }
    let honest_share = honest_mean(set, honest, who, &|k| k == who);
    let attack_share = mean_share(setup, set, &w, who, &|k| k == who, opts)?;
    let name = if swapped {
        "spammer_swapped"
    } else {
        "spammer_garbage"
    };
    let mut r = result(name, honest_share, attack_share);
    r.detection_auc = metrics::auc(&own, &positive);
    tracing::info!(attack = name, gain_pct = r.gain_pct, detection = ?r.detection_auc, "attack measured");
    Ok(r)
}

/// `text`'s characters in a seeded random order (garbage of the same length and alphabet).
fn scramble(text: &str, seed: u64) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut x = seed ^ 0x5eed;
    for i in (1..chars.len()).rev() {
        x = tributary_attribution::splitmix64(x);
        chars.swap(i, (x % (i as u64 + 1)) as usize);
    }
    chars.into_iter().collect()
}
