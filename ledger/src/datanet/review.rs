//! The owner's review queue. Rows land here when the datanet requires review or when the
//! scanner policy holds them; each is one object `datanets/<name>/review/<item>.json`
//! (conditional create; the item id is derived from the datanet, the upload digest, the
//! line and the row's content id, so a retried upload queues the same items once).
//!
//! A decision ([`Datanets::review`]) publishes a new version: accepted rows are merged like
//! an upload (dedup, near-duplicates, quarantine), rejected rows count against their
//! contributor. The version records each decision (item, contributor, accept or reject,
//! reason, by whom, the row's upload and consent) and adds the items to the manifest's
//! `reviewed` set, so two owners deciding the same item race on the head and the item is
//! applied once. Only then are the item objects deleted (a rejected row's text leaves the
//! store); items already in `reviewed` are hidden from [`Datanets::pending`] and removed on
//! the next decision if a crash left them behind.

use std::collections::HashSet;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::identity::{Actor, Identity};
use super::ingest::{self, Candidate, HeldRow, MergeInput, Resolved};
use super::manifest::{Consent, Event, ReviewDecision};
use super::record::RowError;
use super::{DatanetError, Datanets, StoreSource};
use crate::store::Created;

/// Longest review reason, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

/// One row waiting for the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingItem {
    pub item: String,
    pub datanet: String,
    pub contributor: String,
    /// Line in the upload and the upload's digest.
    pub line: u64,
    pub upload_digest: String,
    /// The row after redaction, as it would enter a version.
    pub messages: Vec<(String, String)>,
    /// Content id of `messages`.
    pub id: String,
    pub reasons: Vec<String>,
    pub terms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    pub created_ms: u64,
}

/// What an upload report says about a queued row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRow {
    pub line: u64,
    pub item: String,
    pub reasons: Vec<String>,
}

/// The outcome of a review decision.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewReport {
    pub datanet: String,
    pub version: String,
    pub number: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
    /// Rows rejected (by the decision, or because their contributor is quarantined).
    pub rejected: Vec<RowError>,
    pub decisions: Vec<ReviewDecision>,
    pub quarantined: Vec<String>,
}

fn item_key(name: &str, item: &str) -> Path {
    Path::from(format!("datanets/{name}/review/{item}.json"))
}

fn valid_item(item: &str) -> bool {
    item.len() == 32 && item.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Datanets {
    /// Queues held rows of one upload; returns what the upload report shows.
    pub(super) async fn enqueue(
        &self,
        name: &str,
        held: &[HeldRow],
        upload_digest: &str,
        consent: Option<&Consent>,
    ) -> Result<Vec<PendingRow>, DatanetError> {
        let mut out = Vec::with_capacity(held.len());
        if held.is_empty() {
            return Ok(out);
        }
        let reviewed: HashSet<String> = match self.head(name).await? {
            Some((_, v)) => self
                .manifest(name, &v)
                .await?
                .reviewed
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        for h in held {
            let c = &h.candidate;
            let mut hasher = blake3::Hasher::new();
            for part in [name, upload_digest, &c.line.to_string(), &c.id] {
                hasher.update(part.as_bytes());
                hasher.update(&[0]);
            }
            let item = hasher.finalize().to_hex()[..32].to_string();
            if reviewed.contains(&item) {
                // The same line of the same bytes was uploaded and decided before.
                out.push(PendingRow {
                    line: c.line,
                    item,
                    reasons: vec![
                        "already reviewed: this line of these exact bytes was decided before; \
                         not queued again"
                            .into(),
                    ],
                });
                continue;
            }
            let body = PendingItem {
                item: item.clone(),
                datanet: name.to_string(),
                contributor: c.contributor.clone(),
                line: c.line,
                upload_digest: upload_digest.to_string(),
                messages: c.messages.clone(),
                id: c.id.clone(),
                reasons: h.reasons.clone(),
                terms: c.terms,
                consent: consent.cloned(),
                created_ms: self.clock.now_ms(),
            };
            let bytes = serde_json::to_vec(&body).map_err(|e| DatanetError::Corrupt {
                key: item.clone(),
                reason: e.to_string(),
            })?;
            // A retried upload finds its own item (same id); keep the first.
            let _: Created = self
                .store
                .create(&item_key(name, &item), Bytes::from(bytes))
                .await?;
            out.push(PendingRow {
                line: c.line,
                item,
                reasons: h.reasons.clone(),
            });
        }
        Ok(out)
    }

    async fn read_item(&self, name: &str, item: &str) -> Result<Option<PendingItem>, DatanetError> {
        let key = item_key(name, item);
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DatanetError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    /// Rows waiting for review, oldest first, as `actor` may see them: the owner and an
    /// admin see every row (with its text), a contributor only their own.
    pub async fn pending(
        &self,
        name: &str,
        actor: &Actor,
    ) -> Result<Vec<PendingItem>, DatanetError> {
        let owner = self.meta(name).await?.owner;
        let all = self.pending_all(name).await?;
        Ok(match actor {
            Actor::Contributor(c) if owner.as_deref() != Some(c.as_str()) => {
                all.into_iter().filter(|p| &p.contributor == c).collect()
            }
            _ => all,
        })
    }

    /// Deletes every pending row of `contributor` (their takedown); returns how many.
    pub(super) async fn drop_pending_of(
        &self,
        name: &str,
        contributor: &str,
    ) -> Result<usize, DatanetError> {
        let mine: Vec<PendingItem> = self
            .pending_all(name)
            .await?
            .into_iter()
            .filter(|p| p.contributor == contributor)
            .collect();
        for p in &mine {
            self.store.delete(&item_key(name, &p.item)).await?;
        }
        Ok(mine.len())
    }

    /// Every pending row (no access check: for internal counts).
    pub(super) async fn pending_all(&self, name: &str) -> Result<Vec<PendingItem>, DatanetError> {
        self.meta(name).await?;
        let reviewed: HashSet<String> = match self.head(name).await? {
            Some((_, v)) => self
                .manifest(name, &v)
                .await?
                .reviewed
                .into_iter()
                .collect(),
            None => HashSet::new(),
        };
        let names = self
            .store
            .list_names(&Path::from(format!("datanets/{name}/review")))
            .await?;
        let mut out = Vec::new();
        for n in names {
            let Some(item) = n.strip_suffix(".json") else {
                continue;
            };
            if reviewed.contains(item) {
                continue;
            }
            if let Some(p) = self.read_item(name, item).await? {
                out.push(p);
            }
        }
        out.sort_by_key(|p| (p.created_ms, p.line));
        Ok(out)
    }

    /// The owner (or an admin) accepts or rejects pending rows, with a reason (required to
    /// reject). Publishes one version that applies every decision.
    pub async fn review(
        &self,
        name: &str,
        actor: &Actor,
        items: &[String],
        accept: bool,
        reason: &str,
    ) -> Result<ReviewReport, DatanetError> {
        let meta = self.meta(name).await?;
        actor.require_owner(name, meta.owner.as_deref())?;
        if items.is_empty() {
            return Err(DatanetError::BadRequest("no review items given".into()));
        }
        if !accept && reason.trim().is_empty() {
            return Err(DatanetError::BadRequest(
                "a rejection needs a reason (--reason TEXT)".into(),
            ));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(DatanetError::BadRequest(format!(
                "reason is {} characters, over the limit of {MAX_REASON_CHARS}",
                reason.chars().count()
            )));
        }
        let mut found = Vec::with_capacity(items.len());
        for item in items {
            if !valid_item(item) {
                return Err(DatanetError::UnknownItem {
                    name: name.to_string(),
                    item: item.clone(),
                });
            }
            match self.read_item(name, item).await? {
                Some(p) => found.push(p),
                None => {
                    return Err(DatanetError::UnknownItem {
                        name: name.to_string(),
                        item: item.clone(),
                    });
                }
            }
        }
        self.store.ensure_conditional_create().await?;
        let by = actor.label();
        for attempt in 0..super::PUBLISH_ATTEMPTS {
            let head = self.head(name).await?;
            let base = match &head {
                Some((_, v)) => Some((self.manifest(name, v).await?, v.clone())),
                None => None,
            };
            let done: HashSet<&str> = base
                .as_ref()
                .map(|(m, _)| m.reviewed.iter().map(String::as_str).collect())
                .unwrap_or_default();
            let todo: Vec<&PendingItem> = found
                .iter()
                .filter(|p| !done.contains(p.item.as_str()))
                .collect();
            if todo.is_empty() {
                return Err(DatanetError::BadRequest(format!(
                    "every given item was already reviewed in datanet `{name}`"
                )));
            }
            let mut resolved = Resolved {
                candidates: Vec::new(),
                rejected: Vec::new(),
                held: Vec::new(),
                scan: Vec::new(),
            };
            let mut decisions = Vec::with_capacity(todo.len());
            for p in &todo {
                if accept {
                    resolved.candidates.push(Candidate::new(
                        p.line,
                        p.contributor.clone(),
                        p.messages.clone(),
                        p.terms,
                    ));
                } else {
                    resolved.rejected.push((
                        RowError {
                            line: p.line,
                            field: String::new(),
                            reason: format!("rejected by review ({by}): {reason}"),
                        },
                        Some(p.contributor.clone()),
                    ));
                }
                decisions.push(ReviewDecision {
                    item: p.item.clone(),
                    contributor: p.contributor.clone(),
                    accepted: accept,
                    reason: reason.to_string(),
                    by: by.clone(),
                    id: p.id.clone(),
                    upload_digest: p.upload_digest.clone(),
                    consent: p.consent.clone(),
                });
            }
            let applied: Vec<String> = todo.iter().map(|p| p.item.clone()).collect();
            let who = Identity {
                contributor: Some(by.clone()),
                may_name_others: true,
                signed: false,
                key: None,
                signature: None,
            };
            let mut digest_input = Vec::new();
            for d in &decisions {
                digest_input.extend_from_slice(d.item.as_bytes());
            }
            let input = MergeInput {
                datanet: name,
                resolved: &resolved,
                digest: *blake3::hash(&digest_input).as_bytes(),
                rows: todo.len() as u64,
                who: &who,
                rule: self.quarantine,
                now_ms: self.clock.now_ms(),
                terms: base.as_ref().map(|(m, _)| m.terms).unwrap_or(0),
                consent: None,
                event: Some(Event::Review {
                    decisions: decisions.clone(),
                }),
                reviewed: &applied,
            };
            let merged = ingest::merge(
                &input,
                base.as_ref().map(|(m, v)| (m, v.as_str())),
                &StoreSource(&self.store),
            )
            .await?;
            let mut written = HashSet::new();
            self.write_examples(&resolved, &merged.new_examples, &mut written)
                .await?;
            let Some(version) = self.commit_version(name, &merged.manifest).await? else {
                super::backoff(attempt).await;
                continue;
            };
            // Applied: the pending texts can go (a rejected row's text leaves the store).
            for p in &found {
                self.store.delete(&item_key(name, &p.item)).await?;
            }
            return Ok(ReviewReport {
                datanet: name.to_string(),
                version,
                number: merged.manifest.number,
                accepted: merged.accepted,
                duplicates: merged.duplicates,
                near_duplicates: merged.near_duplicates,
                rejected: merged.rejected,
                decisions,
                quarantined: merged.quarantined,
            });
        }
        Err(DatanetError::Contended {
            name: name.to_string(),
            attempts: super::PUBLISH_ATTEMPTS,
        })
    }
}
