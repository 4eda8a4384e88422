//! Reconciling the replicas: find the committed chain after a crash or an outage, copy
//! entries to replicas that lack them, and replace losing writes that never reached a
//! majority.
//!
//! A writer writes seq `s` only after `s-1` was acknowledged by a majority, and the
//! reachable replicas always include a majority, so every acknowledged entry is seen. At each
//! seq the value chosen is the valid one (decodes, right seq, chains on the previous choice,
//! epoch not decreasing) held by the most replicas; it is only chosen when no other value
//! could have a majority counting the unreachable replicas, otherwise the seq is
//! [`LogError::Unresolved`] until more replicas answer.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use object_store::path::Path;
use serde::Serialize;

use super::LogError;
use super::entry::{GENESIS, RewardEntry, chain_hash, entry_key, parse_entry_name};
use super::replicas::Replicas;
use crate::store::Created;

/// Where the committed chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub next_seq: u64,
    pub prev: [u8; 32],
    pub last_epoch: u64,
}

/// What a repair did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RepairReport {
    /// Entries copied to replicas that lacked them.
    pub copied: u64,
    /// Losing (never acknowledged) or corrupt entries replaced by the committed ones.
    pub replaced: u64,
    /// The next sequence number after the committed chain.
    pub next_seq: u64,
    /// Replicas that could not be reached (not repaired).
    pub unreachable: Vec<String>,
    /// Errors met while writing fixes (the repair can be run again).
    pub errors: Vec<String>,
}

/// How much a reconciliation may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Writer start-up: copy, replace losing writes; leave corrupt objects for the verifier.
    Writer,
    /// Operator repair: also replace corrupt objects; `full` rescans from seq 0.
    Repair { full: bool },
}

/// Copies missing entries to replicas that were down and replaces divergent minority
/// entries. Run it when every replica is back; `full` also rescans entries every replica
/// already lists (to fix tampered or corrupt objects from the majority).
pub async fn repair(replicas: &Replicas, full: bool) -> Result<RepairReport, LogError> {
    reconcile(replicas, Mode::Repair { full })
        .await
        .map(|(_, r)| r)
}

#[tracing::instrument(skip(replicas), fields(replicas = replicas.len()))]
pub(crate) async fn reconcile(
    replicas: &Replicas,
    mode: Mode,
) -> Result<(Tip, RepairReport), LogError> {
    let n = replicas.len();
    let majority = replicas.majority();
    let mut report = RepairReport::default();
    let listed = replicas.list_all(&Path::from("rewards")).await;
    let mut seqs: Vec<Option<BTreeSet<u64>>> = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for (i, r) in listed.into_iter().enumerate() {
        match r {
            Ok(names) => seqs.push(Some(
                names.iter().filter_map(|n| parse_entry_name(n)).collect(),
            )),
            Err(e) => {
                errors.push(e.to_string());
                report.unreachable.push(label_of(replicas, i));
                seqs.push(None);
            }
        }
    }
    let reachable = seqs.iter().filter(|s| s.is_some()).count();
    if reachable < majority {
        return Err(LogError::NoQuorum {
            op: "list the reward log",
            seq: None,
            reached: reachable,
            needed: majority,
            errors,
        });
    }
    let top = seqs
        .iter()
        .flatten()
        .filter_map(|s| s.last().copied())
        .max();
    let Some(top) = top else {
        return Ok((
            Tip {
                next_seq: 0,
                prev: GENESIS,
                last_epoch: 0,
            },
            report,
        ));
    };
    let contiguous = |set: &BTreeSet<u64>| {
        let mut p = 0u64;
        for s in set {
            if *s != p {
                break;
            }
            p += 1;
        }
        p
    };
    let low = match mode {
        Mode::Repair { full: true } => 0,
        _ => seqs.iter().flatten().map(contiguous).min().unwrap_or(0),
    };
    let start = low.saturating_sub(1);
    // For `start > 0` the entry before `start` is not re-checked: it is on every replica.
    let mut prev: Option<[u8; 32]> = if start == 0 { Some(GENESIS) } else { None };
    let mut last_epoch = 0u64;
    for s in start..=top {
        let key = entry_key(s);
        let reads = replicas.get_all(&key).await;
        let mut present: BTreeMap<Bytes, Vec<usize>> = BTreeMap::new();
        let mut missing = Vec::new();
        let mut answered = 0usize;
        for (i, r) in reads.into_iter().enumerate() {
            match r {
                Ok(Some(b)) => {
                    answered += 1;
                    present.entry(b).or_default().push(i);
                }
                Ok(None) => {
                    answered += 1;
                    missing.push(i);
                }
                Err(e) => tracing::warn!(seq = s, error = %e, "replica unreadable"),
            }
        }
        let unreachable = n - answered;
        let mut valid: Vec<(Bytes, Vec<usize>, RewardEntry)> = Vec::new();
        let mut corrupt: Vec<(usize, String)> = Vec::new();
        for (bytes, holders) in present {
            let verdict = match RewardEntry::decode(&bytes) {
                Err(e) => Err(e.to_string()),
                Ok(e) if e.seq != s => Err(format!("holds the entry of seq {}", e.seq)),
                Ok(e) if prev.is_some_and(|p| p != e.prev) => {
                    Err("prev hash does not match the committed entry before it".to_string())
                }
                Ok(e) if e.epoch < last_epoch => Err(format!(
                    "epoch {} is below the previous entry's {last_epoch}",
                    e.epoch
                )),
                Ok(e) => Ok(e),
            };
            match verdict {
                Ok(e) => valid.push((bytes, holders, e)),
                Err(reason) => corrupt.extend(holders.into_iter().map(|i| (i, reason.clone()))),
            }
        }
        valid.sort_by(|a, b| {
            (a.1.len(), a.2.epoch, &a.0)
                .cmp(&(b.1.len(), b.2.epoch, &b.0))
                .reverse()
        });
        let Some((chosen, _, entry)) = valid.first().cloned() else {
            let (replica, reason) = match corrupt.first() {
                Some((i, r)) => (label_of(replicas, *i), r.clone()),
                None => (
                    "every reachable replica".to_string(),
                    format!("missing, but later entries up to seq {top} exist (a hole)"),
                ),
            };
            return Err(LogError::Corrupt {
                replica,
                seq: s,
                reason,
            });
        };
        for (_, others, e) in valid.iter().skip(1) {
            if others.len() + unreachable >= majority {
                return Err(LogError::Unresolved {
                    seq: s,
                    reason: format!(
                        "two different entries (epochs {} and {}) and {unreachable} replica(s) \
                         unreachable: either may hold a majority; retry when they answer",
                        entry.epoch, e.epoch
                    ),
                });
            }
        }
        for i in missing {
            let Some(store) = replicas.stores().get(i) else {
                continue;
            };
            match store.create(&key, chosen.clone()).await {
                Ok(Created::New) => report.copied += 1,
                Ok(Created::Existing(b)) if b == chosen => {}
                Ok(Created::Existing(_)) => {
                    report
                        .errors
                        .push(format!("{store}: seq {s} appeared while repairing"));
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        let mut to_replace: Vec<usize> = valid
            .iter()
            .skip(1)
            .flat_map(|(_, h, _)| h.iter().copied())
            .collect();
        if matches!(mode, Mode::Repair { .. }) {
            to_replace.extend(corrupt.iter().map(|(i, _)| *i));
        } else {
            for (i, reason) in &corrupt {
                tracing::warn!(seq = s, replica = %label_of(replicas, *i), %reason,
                    "corrupt entry left for `tributary ledger repair`");
            }
        }
        for i in to_replace {
            let Some(store) = replicas.stores().get(i) else {
                continue;
            };
            let fixed = async {
                store.delete(&key).await?;
                store.create(&key, chosen.clone()).await
            }
            .await;
            match fixed {
                Ok(Created::New) => report.replaced += 1,
                Ok(Created::Existing(b)) if b == chosen => report.replaced += 1,
                Ok(Created::Existing(_)) => report
                    .errors
                    .push(format!("{store}: seq {s} rewritten by someone else")),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        prev = Some(chain_hash(&chosen));
        last_epoch = entry.epoch;
    }
    report.next_seq = top + 1;
    if report.copied > 0 || report.replaced > 0 {
        tracing::info!(
            copied = report.copied,
            replaced = report.replaced,
            "reconciled replicas"
        );
    }
    Ok((
        Tip {
            next_seq: top + 1,
            prev: prev.unwrap_or(GENESIS),
            last_epoch,
        },
        report,
    ))
}

/// The label of replica `i` (indices come from iterating the same replica list).
fn label_of(replicas: &Replicas, i: usize) -> String {
    replicas
        .stores()
        .get(i)
        .map_or_else(|| format!("replica #{i}"), |s| s.label().to_string())
}
