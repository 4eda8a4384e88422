//! [`LogWriter`]: the single, fenced writer of the reward log.
//!
//! Opening a writer: self-test every replica's conditional create, claim an epoch,
//! reconcile the replicas to find the committed tip, then append an empty fence entry at the
//! next slot. Appending: conditional create of `rewards/<seq>` on every replica, acknowledged
//! once a majority holds our bytes. A slot found holding a newer epoch's entry fences this
//! writer for good; a slot lost to an older writer's in-flight entry is reconciled and the
//! batch retried at the next slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::LogError;
use super::dedup::RequestIds;
use super::entry::{RewardEntry, RewardRecord, chain_hash, entry_key};
use super::epoch::{self, Fencing};
use super::reconcile::{self, Mode, RepairReport, Tip};
use super::replicas::{Replicas, SlotResult};
use crate::clock::{self, Clock};
use crate::metrics::metrics;

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub fencing: Fencing,
    pub clock: Arc<dyn Clock>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            fencing: Fencing::Embedded,
            clock: clock::system(),
        }
    }
}

/// What [`LogWriter::append_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The entry written, or `None` when every record was already in the log.
    pub appended: Option<Appended>,
    /// Request ids left out because the log already holds them (or the batch repeated them).
    pub already_recorded: Vec<String>,
}

/// An acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Chain hash of the entry (BLAKE3 of its stored bytes).
    pub hash: [u8; 32],
    /// Replicas holding it when acknowledged (at least a majority).
    pub acks: usize,
    pub latency: Duration,
}

enum WriteError {
    /// An older writer's entry took the slot: retry at the next one (tip already moved
    /// when that entry holds a majority, else reconcile first).
    LostSlot,
    Fatal(LogError),
}

/// How long an append keeps retrying slots lost to an older writer.
const SLOT_RETRY_LIMIT: Duration = Duration::from_secs(20);

/// How often a writer looks for a newer epoch claim (so it gives way to a new writer
/// promptly instead of racing it for slots).
const EPOCH_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The fenced single writer. Not `Clone`: one per process, owned by the attribution actor.
#[derive(Debug)]
pub struct LogWriter {
    replicas: Replicas,
    epoch: u64,
    tip: Tip,
    needs_reconcile: bool,
    fenced: Option<(u64, u64)>,
    clock: Arc<dyn Clock>,
    background: Vec<tokio::task::JoinHandle<()>>,
    last_epoch_check: Instant,
    ids: RequestIds,
}

impl LogWriter {
    /// Opens the log for writing: self-test, claim an epoch, reconcile, write the fence.
    #[tracing::instrument(skip_all, fields(replicas = replicas.len(), fencing = ?opts.fencing))]
    #[allow(clippy::disallowed_methods)] // measures append latency and paces the epoch check; entries take their time from the injected `Clock`
    pub async fn open(replicas: Replicas, opts: WriterOptions) -> Result<Self, LogError> {
        replicas.self_test().await?;
        let epoch = epoch::claim(&replicas, opts.fencing, opts.clock.now_ms()).await?;
        let mut w = Self {
            replicas,
            epoch,
            tip: Tip {
                next_seq: 0,
                prev: super::entry::GENESIS,
                last_epoch: 0,
            },
            needs_reconcile: true,
            fenced: None,
            clock: opts.clock,
            background: Vec::new(),
            last_epoch_check: Instant::now(),
            ids: RequestIds::default(),
        };
        w.append_inner(Vec::new()).await?;
        tracing::info!(epoch, next_seq = w.tip.next_seq, "reward-log writer open");
        Ok(w)
    }

    /// This writer's epoch (fencing token).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sequence number the next append will get (if no slot is lost).
    pub fn next_seq(&self) -> u64 {
        self.tip.next_seq
    }

    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The writer's clock (for stamping records).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Appends one batch of reward records. Returns once a majority of replicas holds it.
    /// Records whose request id the log already holds are left out (see
    /// [`LogWriter::append_once`]); a batch of nothing but such records is
    /// [`LogError::AlreadyRecorded`].
    ///
    /// On [`LogError::NoQuorum`] the outcome is unknown: the entry may be completed by a
    /// later reconciliation. Retry with the same `request_id`s: the retry writes only what
    /// the log does not hold by then.
    pub async fn append(&mut self, batch: Vec<RewardRecord>) -> Result<Appended, LogError> {
        // An empty batch is written as an empty entry, as it always was.
        let out = if batch.is_empty() {
            self.append_inner(batch).await?
        } else {
            self.append_once(batch).await?
        };
        out.appended.ok_or(LogError::AlreadyRecorded {
            request_ids: out.already_recorded,
        })
    }

    /// Appends the records of `batch` whose request ids are not in the log yet, exactly
    /// once per request id across retries, writer restarts and appends whose outcome was
    /// unknown (`rewards::dedup`). An empty batch writes nothing.
    pub async fn append_once(
        &mut self,
        batch: Vec<RewardRecord>,
    ) -> Result<AppendOutcome, LogError> {
        for r in &batch {
            r.check()?;
        }
        if batch.is_empty() {
            if let Some((seq, found_epoch)) = self.fenced {
                return Err(LogError::Fenced {
                    epoch: self.epoch,
                    seq,
                    found_epoch,
                });
            }
            return Ok(AppendOutcome {
                appended: None,
                already_recorded: Vec::new(),
            });
        }
        self.append_inner(batch).await
    }

    /// Waits until writes still running on slow replicas have finished (or failed).
    pub async fn flush(&mut self) {
        for h in self.background.drain(..) {
            let _ = h.await;
        }
    }

    /// Copies missing entries to replicas that were down and replaces divergent entries.
    pub async fn repair(&mut self) -> Result<RepairReport, LogError> {
        let (tip, report) =
            reconcile::reconcile(&self.replicas, Mode::Repair { full: false }).await?;
        if tip.next_seq > self.tip.next_seq {
            // Someone else wrote after us: only possible if we were fenced.
            self.needs_reconcile = true;
        }
        Ok(report)
    }

    /// Writes `batch` (minus what the log already holds) at the next free slot; an empty
    /// `batch` is a fence entry and is always written.
    #[allow(clippy::disallowed_methods)] // measures append latency and paces the epoch check; entries take their time from the injected `Clock`
    async fn append_inner(&mut self, batch: Vec<RewardRecord>) -> Result<AppendOutcome, LogError> {
        let fence = batch.is_empty();
        if let Some((seq, found_epoch)) = self.fenced {
            return Err(LogError::Fenced {
                epoch: self.epoch,
                seq,
                found_epoch,
            });
        }
        let started = Instant::now();
        let mut lost = 0u32;
        while started.elapsed() < SLOT_RETRY_LIMIT {
            if self.last_epoch_check.elapsed() >= EPOCH_CHECK_INTERVAL {
                self.last_epoch_check = Instant::now();
                if let Some(newer) = epoch::newer_than(&self.replicas, self.epoch).await {
                    return Err(self.fence(self.tip.next_seq, newer));
                }
            }
            if self.needs_reconcile {
                let (tip, _) = reconcile::reconcile(&self.replicas, Mode::Writer).await?;
                if tip.last_epoch > self.epoch {
                    return Err(self.fence(tip.next_seq - 1, tip.last_epoch));
                }
                self.tip = tip;
                self.needs_reconcile = false;
            }
            // The tip may have moved (reconciliation, an adopted entry): read the new
            // entries' request ids and leave out what they already hold.
            self.ids.catch_up(&self.replicas, self.tip.next_seq).await?;
            let (fresh, already_recorded) = self.ids.filter(&batch);
            if fresh.is_empty() && !fence {
                return Ok(AppendOutcome {
                    appended: None,
                    already_recorded,
                });
            }
            match self.write(&fresh).await {
                Ok(a) => {
                    self.ids.committed(a.seq, &fresh);
                    return Ok(AppendOutcome {
                        appended: Some(a),
                        already_recorded,
                    });
                }
                Err(WriteError::LostSlot) => {
                    lost += 1;
                    if lost > 4 {
                        let ms = 1u64 << (lost - 4).min(6);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
                Err(WriteError::Fatal(e)) => return Err(e),
            }
        }
        Err(LogError::Contended {
            attempts: lost as usize,
            reason: "older writers kept taking the next slot".into(),
        })
    }

    fn fence(&mut self, seq: u64, found_epoch: u64) -> LogError {
        self.fenced = Some((seq, found_epoch));
        if let Some(m) = metrics() {
            m.fenced.inc();
        }
        tracing::warn!(epoch = self.epoch, seq, found_epoch, "writer fenced");
        LogError::Fenced {
            epoch: self.epoch,
            seq,
            found_epoch,
        }
    }

    #[tracing::instrument(skip_all, fields(seq = self.tip.next_seq, epoch = self.epoch))]
    #[allow(clippy::disallowed_methods)] // measures append latency and paces the epoch check; entries take their time from the injected `Clock`
    async fn write(&mut self, batch: &[RewardRecord]) -> Result<Appended, WriteError> {
        let seq = self.tip.next_seq;
        let entry = RewardEntry {
            seq,
            epoch: self.epoch,
            prev: self.tip.prev,
            batch: batch.to_vec(),
        };
        let bytes = entry
            .encode()
            .map_err(|e| WriteError::Fatal(LogError::Invalid(e)))?;
        let key = entry_key(seq);
        let started = Instant::now();
        let r = self.replicas.create_on_majority(&key, &bytes).await;
        let latency = started.elapsed();
        if let Some(m) = metrics() {
            for (i, _) in &r.failed {
                if let Some(s) = self.replicas.stores().get(*i) {
                    m.replica_failures.with_label_values(&[s.label()]).inc();
                }
            }
        }
        let mut newer: Option<u64> = None;
        let mut older = Vec::new();
        for (i, theirs) in &r.theirs {
            match RewardEntry::decode(theirs) {
                Ok(e) if e.epoch > self.epoch => newer = Some(newer.unwrap_or(0).max(e.epoch)),
                _ => older.push(*i),
            }
        }
        let majority = self.replicas.majority();
        if r.ours.len() >= majority {
            let hash = chain_hash(&bytes);
            self.tip = Tip {
                next_seq: seq + 1,
                prev: hash,
                last_epoch: self.epoch,
            };
            // Losing writes from an older writer on a minority never counted: replace them,
            // now or when the replica answers.
            for i in older {
                replace(&self.replicas, i, &key, &bytes).await;
            }
            self.background.retain(|h| !h.is_finished());
            if !r.pending.is_empty() {
                let replicas = self.replicas.clone();
                let epoch = self.epoch;
                let pending = r.pending;
                self.background.push(tokio::spawn(async move {
                    for h in pending {
                        if let Ok((i, SlotResult::Theirs(b))) = h.await
                            && RewardEntry::decode(&b).is_ok_and(|e| e.epoch < epoch)
                        {
                            replace(&replicas, i, &key, &bytes).await;
                        }
                    }
                }));
            }
            if let Some(m) = metrics() {
                m.appends.inc();
                m.ack_seconds.observe(latency.as_secs_f64());
            }
            return Ok(Appended {
                seq,
                hash,
                acks: r.ours.len(),
                latency,
            });
        }
        if let Some(found_epoch) = newer {
            return Err(WriteError::Fatal(self.fence(seq, found_epoch)));
        }
        if !r.theirs.is_empty() {
            // An older writer's entry: if a majority holds it, it is committed; adopt it and
            // move to the next slot without a full reconciliation.
            let mut counts: Vec<(&Bytes, usize)> = Vec::new();
            for (_, b) in &r.theirs {
                match counts.iter_mut().find(|(x, _)| *x == b) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((b, 1)),
                }
            }
            let adopted = counts
                .iter()
                .find(|(_, c)| *c >= majority)
                .and_then(|(b, _)| {
                    RewardEntry::decode(b)
                        .ok()
                        .filter(|e| e.seq == seq && e.prev == self.tip.prev)
                        .map(|e| (chain_hash(b), e.epoch))
                });
            match adopted {
                Some((hash, epoch)) => {
                    self.tip = Tip {
                        next_seq: seq + 1,
                        prev: hash,
                        last_epoch: epoch,
                    };
                    for i in &r.ours {
                        if let Some((_, b)) = r.theirs.first() {
                            replace(&self.replicas, *i, &key, b).await;
                        }
                    }
                }
                None => self.needs_reconcile = true,
            }
            return Err(WriteError::LostSlot);
        }
        self.needs_reconcile = true;
        Err(WriteError::Fatal(LogError::NoQuorum {
            op: "append",
            seq: Some(seq),
            reached: r.ours.len(),
            needed: majority,
            errors: r.failed.into_iter().map(|(_, e)| e).collect(),
        }))
    }
}

/// Replaces a losing (never majority-acknowledged) entry on replica `i` with `bytes`.
async fn replace(replicas: &Replicas, i: usize, key: &object_store::path::Path, bytes: &Bytes) {
    let Some(store) = replicas.stores().get(i) else {
        return;
    };
    let res = async {
        store.delete(key).await?;
        store.create(key, bytes.clone()).await
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(replica = %store, error = %e, "could not replace a losing entry");
    }
}
