//! Takedown that erases: withdraw examples (by id, or all of one contributor's) from a
//! datanet, erase their text from the store in every version, and keep what verifies.
//!
//! Why erasure does not break verification: manifests name examples by content id only,
//! and the texts live apart in `examples/<id>.json`. Deleting a text changes no manifest's
//! bytes, so every version digest, every parent link and the reward log (which names
//! contributors, not texts) still verify. In place of the text a **tombstone**
//! `tombstones/<id>.json` (id, owner, time, reason, datanet, takedown seq) says why it is
//! gone; readers (export, verify) accept a missing text only with its tombstone.
//!
//! Steps, each safe to crash after:
//! 1. Plan against the head: which (id, contributor) entries go, which texts are erased (a
//!    text is kept while another contributor's entry still holds it in this datanet, or
//!    another datanet's head references it), and which adapters were trained on a version
//!    that held any of them (registry entries whose data digest is such a version).
//! 2. Append the takedown to the datanet's log `datanets/<name>/takedowns/<seq:020>.json`:
//!    conditional create, each entry holding the BLAKE3 of the previous entry's bytes, so
//!    the log is append-only and any edit or gap shows in [`Datanets::verify`].
//! 3. Write the tombstones, then publish a version without the entries (event
//!    `takedown{seq}`, cumulative `withdrawn` list; a cluster whose credited entry left is
//!    credited to its earliest remaining member).
//! 4. Delete the texts, and mark each affected adapter (`lineage/<adapter>/…`).
//!
//! A crash after step 2 leaves the last log entry unapplied; the next takedown on the
//! datanet (or `takedown --resume`) completes it first. Re-uploading an erased text is
//! refused at ingestion.

use std::collections::{BTreeMap, BTreeSet};

mod plan;

pub use plan::WithdrawnIndex;
use plan::{plan, without};

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::identity::Actor;
use super::{DatanetError, Datanets};
use crate::adapters::AdapterRegistry;
use crate::store::{Created, Store};

/// Longest takedown reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

/// What to take down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// These example ids (content ids).
    Examples(Vec<String>),
    /// Every entry of one contributor.
    Contributor(String),
}

/// One withdrawn entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawn {
    pub id: String,
    pub contributor: String,
    /// Whether the text is erased (false while another entry or datanet still holds it).
    pub erased: bool,
}

/// An adapter trained on a version that held a withdrawn example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedAdapter {
    pub adapter_digest: String,
    /// The datanet version it was trained on.
    pub data_digest: String,
    pub job_id: String,
}

/// One entry of the append-only takedown log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: u64,
    /// Hex BLAKE3 of the previous entry's stored bytes.
    pub prev: Option<String>,
    pub datanet: String,
    pub time_ms: u64,
    /// `admin` or the contributor who asked.
    pub actor: String,
    /// Whether an admin did it (an admin's removals count against the contributor).
    #[serde(default)]
    pub by_admin: bool,
    pub scope: Scope,
    pub reason: String,
    /// The head the plan was made against.
    pub based_on: Option<String>,
    pub withdrawn: Vec<Withdrawn>,
    pub adapters: Vec<AffectedAdapter>,
}

/// Kept in place of an erased text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: String,
    /// The credited contributor when it was withdrawn.
    pub owner: String,
    pub time_ms: u64,
    pub reason: String,
    pub datanet: String,
    pub seq: u64,
}

/// Marks an adapter whose training data lost examples (`lineage/<adapter>/<datanet>.<seq>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterMark {
    pub adapter_digest: String,
    pub datanet: String,
    pub seq: u64,
    pub data_digest: String,
    /// Withdrawn examples the adapter's data version held.
    pub withdrawn_examples: u64,
    pub reason: String,
    pub time_ms: u64,
}

/// The JSON report of a takedown.
#[derive(Debug, Clone, Serialize)]
pub struct TakedownReport {
    pub datanet: String,
    pub seq: u64,
    /// The new version (without the withdrawn entries) and its number.
    pub version: String,
    pub number: u64,
    pub withdrawn: Vec<Withdrawn>,
    pub erased: usize,
    /// Adapters trained on a version that held a withdrawn example (marked in the
    /// registry's lineage).
    pub adapters: Vec<AffectedAdapter>,
    /// Hex BLAKE3 of the log entry's bytes.
    pub log_entry: String,
    /// Review-queue rows of the contributor dropped (contributor takedowns).
    pub pending_dropped: usize,
}

fn log_key(name: &str, seq: u64) -> Path {
    Path::from(format!("datanets/{name}/takedowns/{seq:020}.json"))
}

fn tombstone_key(id: &str) -> Path {
    Path::from(format!("tombstones/{id}.json"))
}

fn json<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>, DatanetError> {
    serde_json::to_vec(v).map_err(|e| DatanetError::Corrupt {
        key: what.to_string(),
        reason: e.to_string(),
    })
}

fn valid_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The tombstone of an erased example text, if any (any datanet).
pub async fn tombstone(store: &Store, id: &str) -> Result<Option<Tombstone>, DatanetError> {
    if !valid_id(id) {
        return Ok(None);
    }
    let key = tombstone_key(id);
    match store.get(&key).await? {
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| DatanetError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            }),
        None => Ok(None),
    }
}

/// Every lineage mark of one adapter: takedowns that withdrew examples from the data it
/// was trained on. (For `tributary adapter show`.)
pub async fn adapter_marks(
    store: &Store,
    adapter_digest: &str,
) -> Result<Vec<AdapterMark>, DatanetError> {
    let prefix = Path::from(format!("lineage/{adapter_digest}"));
    let mut out = Vec::new();
    for n in store.list_names(&prefix).await? {
        let key = prefix.clone().join(n.as_str());
        if let Some(b) = store.get(&key).await? {
            out.push(
                serde_json::from_slice(&b).map_err(|e| DatanetError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?,
            );
        }
    }
    Ok(out)
}

impl Datanets {
    /// The takedown log of a datanet, oldest first: (entry, hex BLAKE3 of its bytes).
    pub async fn takedown_log(&self, name: &str) -> Result<Vec<(LogEntry, String)>, DatanetError> {
        self.meta(name).await?;
        let names = self
            .store
            .list_names(&Path::from(format!("datanets/{name}/takedowns")))
            .await?;
        let mut out = Vec::new();
        for n in names {
            let key = Path::from(format!("datanets/{name}/takedowns/{n}"));
            let Some(b) = self.store.get(&key).await? else {
                continue;
            };
            let e: LogEntry = serde_json::from_slice(&b).map_err(|e| DatanetError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            out.push((e, blake3::hash(&b).to_hex().to_string()));
        }
        Ok(out)
    }

    /// How many takedowns the datanet's log holds: a cached export of any version made
    /// when this was lower may hold erased texts (the worker's cache re-exports then).
    pub async fn takedown_count(&self, name: &str) -> Result<u64, DatanetError> {
        self.meta(name).await?;
        Ok(self
            .store
            .list_names(&Path::from(format!("datanets/{name}/takedowns")))
            .await?
            .len() as u64)
    }

    /// Attribution's view of withdrawals in a datanet (from its head).
    pub async fn withdrawn_index(&self, name: &str) -> Result<WithdrawnIndex, DatanetError> {
        match self.head(name).await? {
            Some((_, v)) => Ok(WithdrawnIndex::from_manifest(
                &self.manifest(name, &v).await?,
            )),
            None => Ok(WithdrawnIndex::default()),
        }
    }

    /// Ids referenced by the heads of every other datanet in the store.
    async fn ids_elsewhere(&self, name: &str) -> Result<BTreeSet<String>, DatanetError> {
        let mut out = BTreeSet::new();
        for n in self.store.list_names(&Path::from("datanets")).await? {
            let Some(other) = n.strip_suffix("/datanet.json") else {
                continue;
            };
            if other == name {
                continue;
            }
            if let Some((_, v)) = self.head(other).await? {
                out.extend(
                    self.manifest(other, &v)
                        .await?
                        .examples
                        .into_iter()
                        .map(|e| e.id),
                );
            }
        }
        Ok(out)
    }

    /// Adapters trained on any version of `name` that held one of `ids`.
    async fn affected_adapters(
        &self,
        name: &str,
        ids: &BTreeSet<&str>,
    ) -> Result<Vec<(AffectedAdapter, u64)>, DatanetError> {
        let mut holding: BTreeMap<String, u64> = BTreeMap::new();
        for v in self.versions(name).await? {
            let m = self.manifest(name, &v.version).await?;
            let held = m
                .examples
                .iter()
                .filter(|e| ids.contains(e.id.as_str()))
                .count() as u64;
            if held > 0 {
                holding.insert(v.version.clone(), held);
            }
        }
        let registry = AdapterRegistry::new(self.store.clone());
        let entries = registry
            .list()
            .await
            .map_err(|e| DatanetError::Registry(e.to_string()))?;
        Ok(entries
            .into_iter()
            .filter_map(|e| {
                let held = *holding.get(&e.data_digest)?;
                Some((
                    AffectedAdapter {
                        adapter_digest: e.adapter_digest,
                        data_digest: e.data_digest,
                        job_id: e.job_id,
                    },
                    held,
                ))
            })
            .collect())
    }

    /// Withdraws examples from `name` and erases their text (see the module docs).
    /// `actor` may take down its own entries; [`Actor::Admin`] anyone's.
    pub async fn takedown(
        &self,
        name: &str,
        actor: &Actor,
        scope: &Scope,
        reason: &str,
    ) -> Result<TakedownReport, DatanetError> {
        self.meta(name).await?;
        if reason.trim().is_empty() {
            return Err(DatanetError::BadRequest(
                "a takedown needs a reason (--reason TEXT)".into(),
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(DatanetError::BadRequest(format!(
                "reason is {} characters, over the limit of {MAX_REASON_CHARS}",
                reason.chars().count()
            )));
        }
        if let Scope::Examples(ids) = scope
            && let Some(bad) = ids.iter().find(|id| !valid_id(id))
        {
            return Err(DatanetError::UnknownExample {
                name: name.to_string(),
                id: bad.clone(),
            });
        }
        self.store.ensure_conditional_create().await?;
        self.resume_takedown(name).await?;
        for _ in 0..super::PUBLISH_ATTEMPTS {
            let (_, head) = self
                .head(name)
                .await?
                .ok_or_else(|| DatanetError::Empty(name.to_string()))?;
            let m = self.manifest(name, &head).await?;
            let elsewhere = self.ids_elsewhere(name).await?;
            let p = plan(name, &m, actor, scope, &elsewhere)?;
            let ids: BTreeSet<&str> = p.withdrawn.iter().map(|w| w.id.as_str()).collect();
            let affected = self.affected_adapters(name, &ids).await?;
            let log = self.takedown_log(name).await?;
            let (seq, prev) = match log.last() {
                Some((e, d)) => (e.seq + 1, Some(d.clone())),
                None => (1, None),
            };
            let entry = LogEntry {
                seq,
                prev,
                datanet: name.to_string(),
                time_ms: self.clock.now_ms(),
                actor: actor.label(),
                by_admin: *actor == Actor::Admin,
                scope: scope.clone(),
                reason: reason.to_string(),
                based_on: Some(head.clone()),
                withdrawn: p.withdrawn,
                adapters: affected.iter().map(|(a, _)| a.clone()).collect(),
            };
            let bytes = json("takedown log entry", &entry)?;
            match self
                .store
                .create(&log_key(name, seq), Bytes::from(bytes.clone()))
                .await?
            {
                Created::New => {}
                Created::Existing(b) if b == bytes => {}
                // Another takedown took this seq: finish it, then plan again.
                Created::Existing(_) => {
                    self.resume_takedown(name).await?;
                    continue;
                }
            }
            let digest = blake3::hash(&bytes).to_hex().to_string();
            return self
                .apply(name, &entry, &digest, &p.owners, &affected)
                .await;
        }
        Err(DatanetError::Contended {
            name: name.to_string(),
            attempts: super::PUBLISH_ATTEMPTS,
        })
    }

    /// Completes every logged takedown a crash left unapplied (normally at most the last);
    /// returns the report of the last one completed.
    pub async fn resume_takedown(
        &self,
        name: &str,
    ) -> Result<Option<TakedownReport>, DatanetError> {
        let log = self.takedown_log(name).await?;
        if log.is_empty() {
            return Ok(None);
        }
        let Some((_, head)) = self.head(name).await? else {
            return Ok(None);
        };
        let m = self.manifest(name, &head).await?;
        let applied: BTreeSet<u64> = m.withdrawn.iter().map(|w| w.seq).collect();
        // Normally only the last entry can be unapplied; a takedown that crashed while a
        // later one went through leaves an earlier one: complete every such entry in order.
        let mut last = None;
        for (entry, digest) in log
            .iter()
            .filter(|(e, _)| !e.withdrawn.is_empty() && !applied.contains(&e.seq))
        {
            let mut owners = BTreeMap::new();
            for w in &entry.withdrawn {
                owners
                    .entry(w.id.clone())
                    .or_insert_with(|| w.contributor.clone());
            }
            let ids: BTreeSet<&str> = entry.withdrawn.iter().map(|w| w.id.as_str()).collect();
            let affected = self.affected_adapters(name, &ids).await?;
            tracing::warn!(
                datanet = name,
                seq = entry.seq,
                "completing an unapplied takedown"
            );
            last = Some(self.apply(name, entry, digest, &owners, &affected).await?);
        }
        Ok(last)
    }

    async fn apply(
        &self,
        name: &str,
        entry: &LogEntry,
        digest: &str,
        owners: &BTreeMap<String, String>,
        affected: &[(AffectedAdapter, u64)],
    ) -> Result<TakedownReport, DatanetError> {
        // Tombstones first: a text is never missing without one.
        for w in entry.withdrawn.iter().filter(|w| w.erased) {
            let t = Tombstone {
                id: w.id.clone(),
                owner: owners
                    .get(&w.id)
                    .cloned()
                    .unwrap_or_else(|| w.contributor.clone()),
                time_ms: entry.time_ms,
                reason: entry.reason.clone(),
                datanet: name.to_string(),
                seq: entry.seq,
            };
            let _: Created = self
                .store
                .create(&tombstone_key(&w.id), Bytes::from(json("tombstone", &t)?))
                .await?;
        }
        let mut published = None;
        for attempt in 0..super::PUBLISH_ATTEMPTS {
            let (_, head) = self
                .head(name)
                .await?
                .ok_or_else(|| DatanetError::Empty(name.to_string()))?;
            let m = self.manifest(name, &head).await?;
            if m.withdrawn.iter().any(|w| w.seq == entry.seq) {
                published = Some((head, m.number));
                break;
            }
            let mut next = without(&m, entry, self.clock.now_ms(), &self.quarantine);
            next.parent = Some(head);
            if let Some(v) = self.commit_version(name, &next).await? {
                published = Some((v, next.number));
                break;
            }
            super::backoff(attempt).await;
        }
        let Some((version, number)) = published else {
            return Err(DatanetError::Contended {
                name: name.to_string(),
                attempts: super::PUBLISH_ATTEMPTS,
            });
        };
        for w in entry.withdrawn.iter().filter(|w| w.erased) {
            self.store.delete(&super::example_key(&w.id)).await?;
        }
        // A contributor who withdraws everything also leaves the review queue.
        let pending_dropped = match &entry.scope {
            Scope::Contributor(who) => self.drop_pending_of(name, who).await?,
            Scope::Examples(_) => 0,
        };
        for (a, held) in affected {
            let mark = AdapterMark {
                adapter_digest: a.adapter_digest.clone(),
                datanet: name.to_string(),
                seq: entry.seq,
                data_digest: a.data_digest.clone(),
                withdrawn_examples: *held,
                reason: entry.reason.clone(),
                time_ms: entry.time_ms,
            };
            let key = Path::from(format!(
                "lineage/{}/{name}.{:020}.json",
                a.adapter_digest, entry.seq
            ));
            let _: Created = self
                .store
                .create(&key, Bytes::from(json("lineage mark", &mark)?))
                .await?;
        }
        tracing::info!(datanet = name, seq = entry.seq, %version, "takedown applied");
        Ok(TakedownReport {
            datanet: name.to_string(),
            seq: entry.seq,
            version,
            number,
            erased: entry.withdrawn.iter().filter(|w| w.erased).count(),
            withdrawn: entry.withdrawn.clone(),
            adapters: affected.iter().map(|(a, _)| a.clone()).collect(),
            log_entry: digest.to_string(),
            pending_dropped,
        })
    }
}
