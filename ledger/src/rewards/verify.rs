//! The verifier: walks the chain on every replica (frame checksum, seq, prev hash, epoch
//! order, share arithmetic), compares the replicas seq by seq, and sums balances.
//! Faults carry the first bad sequence number.
//!
//! Limits, by construction: on a single replica, deleting the newest entries leaves a shorter
//! but valid chain; only comparison with other replicas (or a tip recorded elsewhere)
//! reveals it.

use std::collections::BTreeMap;

use futures::StreamExt;
use object_store::path::Path;
use serde::Serialize;

use super::LogError;
use super::entry::{GENESIS, RewardEntry, chain_hash, entry_key, parse_entry_name};
use super::replicas::Replicas;
use crate::store::Store;

/// Kinds of faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A sequence number with no object.
    Missing,
    /// The object does not decode or fails its checksum (modified, truncated).
    Corrupt,
    /// The object holds another seq's entry (e.g. swapped objects).
    Misplaced,
    /// `prev` does not match the previous entry's hash.
    ChainBreak,
    /// An entry's epoch is below its predecessor's.
    EpochRegression,
    /// A record's shares do not add up, or a balance overflows.
    Arithmetic,
    /// Replicas hold different entries at one seq.
    Fork,
    /// The replica could not be read.
    Unreachable,
    /// An object under `rewards/` whose name is not a sequence number.
    StrayObject,
}

/// One fault.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub replica: String,
    pub seq: Option<u64>,
    pub kind: FaultKind,
    pub detail: String,
}

/// Per-replica summary.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSummary {
    pub replica: String,
    /// Length of the valid chain prefix.
    pub valid_entries: u64,
    /// Objects listed under `rewards/`.
    pub objects: u64,
    /// Hex chain hash of the last valid entry.
    pub tip: Option<String>,
}

/// The verifier's report.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub first_bad_seq: Option<u64>,
    pub faults: Vec<Fault>,
    pub replicas: Vec<ReplicaSummary>,
    /// Entries in the longest chain the replicas agree on.
    pub entries: u64,
    pub records: u64,
    /// Contributor → total amount (micro-units), from the agreed chain.
    pub balances: BTreeMap<String, u64>,
}

struct Scan {
    summary: ReplicaSummary,
    hashes: Vec<[u8; 32]>,
    entries: Vec<RewardEntry>,
    faults: Vec<Fault>,
}

async fn scan(store: &Store, keep_entries: bool) -> Scan {
    let label = store.label().to_string();
    let fault = |seq: Option<u64>, kind, detail: String| Fault {
        replica: label.clone(),
        seq,
        kind,
        detail,
    };
    let mut out = Scan {
        summary: ReplicaSummary {
            replica: label.clone(),
            valid_entries: 0,
            objects: 0,
            tip: None,
        },
        hashes: Vec::new(),
        entries: Vec::new(),
        faults: Vec::new(),
    };
    let names = match store.list_names(&Path::from("rewards")).await {
        Ok(n) => n,
        Err(e) => {
            out.faults
                .push(fault(None, FaultKind::Unreachable, e.to_string()));
            return out;
        }
    };
    out.summary.objects = names.len() as u64;
    let mut seqs = Vec::with_capacity(names.len());
    for n in &names {
        match parse_entry_name(n) {
            Some(s) => seqs.push(s),
            None => out.faults.push(fault(
                None,
                FaultKind::StrayObject,
                format!("`rewards/{n}` is not a sequence number"),
            )),
        }
    }
    seqs.sort_unstable();
    let mut reads = futures::stream::iter(seqs.into_iter().map(|s| {
        let store = store.clone();
        async move { (s, store.get(&entry_key(s)).await) }
    }))
    .buffered(32);
    let mut expected = 0u64;
    let mut prev = GENESIS;
    let mut last_epoch = 0u64;
    while let Some((seq, read)) = reads.next().await {
        if seq != expected {
            out.faults.push(fault(
                Some(expected),
                FaultKind::Missing,
                format!("no object for seq {expected} (next present: {seq})"),
            ));
            break;
        }
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => {
                out.faults.push(fault(
                    Some(seq),
                    FaultKind::Missing,
                    "listed but vanished".into(),
                ));
                break;
            }
            Err(e) => {
                out.faults
                    .push(fault(Some(seq), FaultKind::Unreachable, e.to_string()));
                break;
            }
        };
        let entry = match RewardEntry::decode(&bytes) {
            Ok(e) => e,
            Err(e) => {
                out.faults
                    .push(fault(Some(seq), FaultKind::Corrupt, e.to_string()));
                break;
            }
        };
        if entry.seq != seq {
            out.faults.push(fault(
                Some(seq),
                FaultKind::Misplaced,
                format!("object holds the entry of seq {}", entry.seq),
            ));
            break;
        }
        if entry.prev != prev {
            out.faults.push(fault(
                Some(seq),
                FaultKind::ChainBreak,
                "prev hash does not match the hash of the entry before it".into(),
            ));
            break;
        }
        if entry.epoch < last_epoch {
            out.faults.push(fault(
                Some(seq),
                FaultKind::EpochRegression,
                format!("epoch {} after epoch {last_epoch}", entry.epoch),
            ));
            break;
        }
        if let Some(e) = entry.batch.iter().find_map(|r| r.check().err()) {
            out.faults
                .push(fault(Some(seq), FaultKind::Arithmetic, e.to_string()));
            break;
        }
        prev = chain_hash(&bytes);
        last_epoch = entry.epoch;
        out.hashes.push(prev);
        if keep_entries {
            out.entries.push(entry);
        }
        expected += 1;
    }
    out.summary.valid_entries = out.hashes.len() as u64;
    out.summary.tip = out
        .hashes
        .last()
        .map(|h| blake3::Hash::from(*h).to_hex().to_string());
    out
}

/// Verifies every replica and the balances.
#[tracing::instrument(skip(replicas), fields(replicas = replicas.len()))]
pub async fn verify(replicas: &Replicas) -> Result<VerifyReport, LogError> {
    let mut scans = Vec::with_capacity(replicas.len());
    // One replica's entries are decoded for the balances; keep them for every scan so the
    // chosen chain is available whichever replica it comes from.
    for store in replicas.stores() {
        scans.push(scan(store, true).await);
    }
    let mut faults: Vec<Fault> = scans.iter().flat_map(|s| s.faults.clone()).collect();
    let longest = scans.iter().map(|s| s.hashes.len()).max().unwrap_or(0);
    // The agreed chain: at each seq the hash most replicas hold.
    let mut agreed: Vec<[u8; 32]> = Vec::with_capacity(longest);
    for seq in 0..longest {
        let mut counts: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for s in &scans {
            if let Some(h) = s.hashes.get(seq) {
                *counts.entry(*h).or_default() += 1;
            }
        }
        let best = counts.iter().max_by_key(|(_, c)| **c).map(|(h, _)| *h);
        let Some(best) = best else { break };
        if counts.len() > 1 {
            for s in &scans {
                if let Some(h) = s.hashes.get(seq)
                    && *h != best
                {
                    faults.push(Fault {
                        replica: s.summary.replica.clone(),
                        seq: Some(seq as u64),
                        kind: FaultKind::Fork,
                        detail: "differs from the entry the other replicas hold".into(),
                    });
                }
            }
        }
        agreed.push(best);
    }
    for s in &scans {
        let len = s.hashes.len();
        if len < agreed.len() && s.faults.is_empty() {
            faults.push(Fault {
                replica: s.summary.replica.clone(),
                seq: Some(len as u64),
                kind: FaultKind::Missing,
                detail: format!(
                    "chain ends at {len} entries; other replicas have {}",
                    agreed.len()
                ),
            });
        }
    }
    // Balances from the replica whose chain matches the agreed one furthest.
    let source = scans.iter().max_by_key(|s| {
        s.hashes
            .iter()
            .zip(&agreed)
            .take_while(|(a, b)| a == b)
            .count()
    });
    let mut balances: BTreeMap<String, u64> = BTreeMap::new();
    let mut records = 0u64;
    let mut entries = 0u64;
    if let Some(src) = source {
        let agreeing = src
            .hashes
            .iter()
            .zip(&agreed)
            .take_while(|(a, b)| a == b)
            .count();
        for e in src.entries.iter().take(agreeing) {
            entries += 1;
            for r in &e.batch {
                records += 1;
                for share in &r.shares {
                    let b = balances.entry(share.contributor.clone()).or_default();
                    match b.checked_add(share.amount) {
                        Some(v) => *b = v,
                        None => faults.push(Fault {
                            replica: src.summary.replica.clone(),
                            seq: Some(e.seq),
                            kind: FaultKind::Arithmetic,
                            detail: format!("balance of `{}` overflows u64", share.contributor),
                        }),
                    }
                }
            }
        }
    }
    faults.sort_by_key(|f| f.seq.unwrap_or(u64::MAX));
    let first_bad_seq = faults.iter().filter_map(|f| f.seq).min();
    Ok(VerifyReport {
        ok: faults.is_empty(),
        first_bad_seq,
        faults,
        replicas: scans.into_iter().map(|s| s.summary).collect(),
        entries,
        records,
        balances,
    })
}

/// Contributor balances from the verified, agreed chain.
pub async fn balances(replicas: &Replicas) -> Result<BTreeMap<String, u64>, LogError> {
    Ok(verify(replicas).await?.balances)
}
