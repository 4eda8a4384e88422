//! Verifying a datanet, erasures included: every version's manifest matches its digest and
//! chains on its parent; every entry's text is present and hashes to its content id, or is
//! absent with a tombstone (erased by a takedown) — and a tombstoned, erased text that is
//! still present is a fault (an unfinished erasure); the takedown log is contiguous, each
//! entry holds the BLAKE3 of the previous entry's bytes, and each is applied by exactly one
//! version whose event names it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::manifest::Event;
use super::{DatanetError, Datanets, read_example_or_tombstone, text};

/// The outcome of [`Datanets::verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub datanet: String,
    pub versions: u64,
    /// Distinct example ids checked, and how many of them are erased (tombstoned).
    pub examples: u64,
    pub erased: u64,
    pub takedowns: u64,
    /// Every fault found; empty means the datanet verifies.
    pub faults: Vec<String>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.faults.is_empty()
    }
}

impl Datanets {
    /// Checks versions, texts, tombstones and the takedown log of `name`.
    pub async fn verify(&self, name: &str) -> Result<AuditReport, DatanetError> {
        let mut r = AuditReport {
            datanet: name.to_string(),
            ..Default::default()
        };
        let versions = self.versions(name).await?;
        let mut prev: Option<String> = None;
        let mut ids: BTreeSet<String> = BTreeSet::new();
        let mut applied: BTreeMap<u64, String> = BTreeMap::new();
        let mut erased_ids: BTreeSet<String> = BTreeSet::new();
        for (i, v) in versions.iter().enumerate() {
            r.versions += 1;
            if v.number != i as u64 + 1 {
                r.faults.push(format!(
                    "version {} found where {} was expected",
                    v.number,
                    i + 1
                ));
            }
            if v.parent != prev {
                r.faults.push(format!(
                    "version {} does not chain on the previous version",
                    v.number
                ));
            }
            // `manifest` checks the bytes against the digest.
            let m = match self.manifest(name, &v.version).await {
                Ok(m) => m,
                Err(e) => {
                    r.faults.push(format!("version {}: {e}", v.number));
                    prev = Some(v.version.clone());
                    continue;
                }
            };
            if let Some(Event::Takedown { seq }) = &m.event
                && let Some(other) = applied.insert(*seq, v.version.clone())
            {
                r.faults.push(format!(
                    "takedown {seq} is applied twice ({other} and {})",
                    v.version
                ));
            }
            erased_ids.extend(
                m.withdrawn
                    .iter()
                    .filter(|w| w.erased)
                    .map(|w| w.id.clone()),
            );
            ids.extend(m.examples.iter().map(|e| e.id.clone()));
            prev = Some(v.version.clone());
        }
        for id in &ids {
            r.examples += 1;
            match read_example_or_tombstone(&self.store, id).await {
                Ok(Some(ex)) => {
                    let msgs: Vec<(String, String)> = ex
                        .messages
                        .into_iter()
                        .map(|m| (m.role, m.content))
                        .collect();
                    if text::content_id(&msgs) != *id {
                        r.faults
                            .push(format!("example {id}: text does not hash to its id"));
                    }
                    if erased_ids.contains(id) {
                        r.faults.push(format!(
                            "example {id} was erased by a takedown but its text is still stored \
                             (rerun `tributary datanet takedown {name} --resume`)"
                        ));
                    }
                }
                Ok(None) => r.erased += 1,
                Err(e) => r.faults.push(e.to_string()),
            }
        }
        let log = self.takedown_log(name).await?;
        let mut prev_digest: Option<String> = None;
        for (i, (e, digest)) in log.iter().enumerate() {
            r.takedowns += 1;
            if e.seq != i as u64 + 1 {
                r.faults.push(format!(
                    "takedown log: entry {} found where {} was expected",
                    e.seq,
                    i + 1
                ));
            }
            if e.prev != prev_digest {
                r.faults.push(format!(
                    "takedown log: entry {} does not hold the digest of entry {}",
                    e.seq,
                    e.seq.saturating_sub(1)
                ));
            }
            if e.datanet != name {
                r.faults.push(format!(
                    "takedown log: entry {} names datanet `{}`",
                    e.seq, e.datanet
                ));
            }
            if !applied.contains_key(&e.seq) {
                r.faults.push(format!(
                    "takedown {} is logged but no version applies it (rerun `tributary datanet takedown {name} --resume`)",
                    e.seq
                ));
            }
            prev_digest = Some(digest.clone());
        }
        for seq in applied.keys() {
            if *seq == 0 || *seq > log.len() as u64 {
                r.faults.push(format!(
                    "a version applies takedown {seq}, which is not in the log"
                ));
            }
        }
        Ok(r)
    }
}
