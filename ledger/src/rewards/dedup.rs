//! Exactly once per request id: the request ids already in the committed chain.
//!
//! The writer keeps the set of request ids of every committed entry, read from the
//! replicas after each reconciliation (at start-up, after an append whose outcome was
//! unknown, after adopting an older writer's entry), and drops from each batch the records
//! whose id is already there (and repeats inside the batch) before it writes. Because the
//! set is rebuilt from the chain itself, it is right across retries, a writer crash (the
//! next writer reads the whole chain when it opens) and an append that timed out: if that
//! entry reached any replica, reconciliation completes it and its ids are read back
//! before the retry is written; if it reached none, the retry writes it.
//!
//! Cost: one read per committed entry at start-up (the whole log) and one per new entry
//! afterwards. A log too long to read at start-up would need a persisted snapshot of the
//! set, chained like the entries; not built yet.

use std::collections::HashSet;

use bytes::Bytes;

use super::LogError;
use super::entry::{RewardEntry, RewardRecord, entry_key};
use super::replicas::Replicas;

/// The committed request ids and how far the chain has been read.
#[derive(Debug, Default)]
pub(crate) struct RequestIds {
    seen: HashSet<String>,
    upto: u64,
}

impl RequestIds {
    /// Reads entries `[upto, next_seq)` and records their request ids.
    pub(crate) async fn catch_up(
        &mut self,
        replicas: &Replicas,
        next_seq: u64,
    ) -> Result<(), LogError> {
        while self.upto < next_seq {
            let s = self.upto;
            let entry = read_committed(replicas, s).await?;
            for r in entry.batch {
                self.seen.insert(r.request_id);
            }
            self.upto = s + 1;
        }
        Ok(())
    }

    /// Whether `request_id` is already in the chain.
    pub(crate) fn contains(&self, request_id: &str) -> bool {
        self.seen.contains(request_id)
    }

    /// Records appended at `seq` by this writer.
    pub(crate) fn committed(&mut self, seq: u64, batch: &[RewardRecord]) {
        if seq == self.upto {
            self.seen.extend(batch.iter().map(|r| r.request_id.clone()));
            self.upto = seq + 1;
        }
    }

    /// Splits `batch` into records to write and the ids dropped as already recorded (or
    /// repeated inside the batch).
    pub(crate) fn filter(&self, batch: &[RewardRecord]) -> (Vec<RewardRecord>, Vec<String>) {
        let mut fresh = Vec::with_capacity(batch.len());
        let mut dropped = Vec::new();
        let mut here: HashSet<&str> = HashSet::new();
        for r in batch {
            if self.contains(&r.request_id) || !here.insert(&r.request_id) {
                dropped.push(r.request_id.clone());
            } else {
                fresh.push(r.clone());
            }
        }
        (fresh, dropped)
    }
}

/// The entry at `seq` as held by the most replicas (reconciliation has just made the
/// reachable majority agree).
async fn read_committed(replicas: &Replicas, seq: u64) -> Result<RewardEntry, LogError> {
    let reads = replicas.get_all(&entry_key(seq)).await;
    let mut counts: Vec<(Bytes, usize)> = Vec::new();
    for b in reads.into_iter().flatten().flatten() {
        match counts.iter_mut().find(|(x, _)| *x == b) {
            Some((_, c)) => *c += 1,
            None => counts.push((b, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    for (b, _) in counts {
        if let Ok(e) = RewardEntry::decode(&b)
            && e.seq == seq
        {
            return Ok(e);
        }
    }
    Err(LogError::Unresolved {
        seq,
        reason: "no replica returned a readable entry while reading request ids".into(),
    })
}
