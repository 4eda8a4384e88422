//! Datanets: community datasets in object storage.
//!
//! Layout under the store root:
//! - `examples/<id>.json`: one example (`{"messages": [...]}`), named by its content id.
//! - `datanets/<name>/datanet.json`: created once (conditional create).
//! - `datanets/<name>/versions/<digest>.json`: immutable manifests, named by digest.
//! - `datanets/<name>/heads/<n:020>`: the version sequence. Publishing version `n` is the
//!   conditional create of `heads/<n>`, so concurrent uploads serialize without
//!   compare-and-swap (which object_store's local filesystem lacks); the loser re-merges
//!   against the new head and retries.
//!
//! An upload is read and validated completely, authenticated (signature over the BLAKE3
//! digest of its bytes, or an API key), merged, and only then are its examples, its
//! manifest and finally the head written: a reader sees the previous version or the new
//! one, never part of an upload.
//!
//! Governance: [`license`] (licences, terms, consent), [`scan`] (personal data and secrets
//! at ingestion), [`review`] (the owner's queue), [`reputation`] (per-contributor standing
//! and the leaderboard), [`takedown`] (withdrawal that erases, with lineage and an
//! append-only log) and [`audit`] (verifying a datanet after erasures).

pub mod audit;
pub mod identity;
pub mod ingest;
pub mod license;
pub mod manifest;
pub mod minhash;
mod publish;
pub mod record;
pub mod reputation;
pub mod review;
pub mod scan;
pub mod takedown;
pub mod text;

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

pub use identity::{Actor, KeyRing, Uploader};
pub use ingest::{QuarantineRule, ScanReport};
pub use license::{DataLicense, License, Terms, TermsChange};
pub use manifest::{Diff, Manifest, VersionSummary};
pub use record::{Limits, RowError};
pub use reputation::Reputation;
pub use review::{PendingItem, PendingRow, ReviewReport};
pub use takedown::{Scope, TakedownReport, WithdrawnIndex};

use crate::clock::{self, Clock};
use crate::store::{Created, Store, StoreError};

/// The shortest digest prefix that names a version (git's default abbreviation length is 7).
pub const MIN_DIGEST_PREFIX: usize = 8;

/// Errors from datanet operations.
#[derive(Debug, thiserror::Error)]
pub enum DatanetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "datanet name `{0}`: must be 1-64 characters of a-z 0-9 - _ ., starting with a letter or digit"
    )]
    BadName(String),
    #[error("datanet `{0}` already exists")]
    Exists(String),
    #[error("datanet `{0}` does not exist (create it with `tributary datanet create {0}`)")]
    NotFound(String),
    #[error("datanet `{name}` has no version `{version}`")]
    NoVersion { name: String, version: String },
    #[error("datanet `{0}` has no versions yet (upload to it first)")]
    Empty(String),
    #[error("empty upload: no records (0 non-blank lines in {bytes} bytes); nothing was published")]
    EmptyUpload { bytes: u64 },
    #[error("upload refused: {0}; nothing was published")]
    Auth(String),
    #[error("reading the upload: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the export: {0}")]
    Write(#[source] std::io::Error),
    #[error("object `{key}` is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "publishing to `{name}` lost {attempts} races to concurrent uploads; nothing was published, retry"
    )]
    Contended { name: String, attempts: usize },
    #[error("licence: {0}")]
    BadLicense(String),
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "datanet `{name}` has no example `{id}` (ids are the 64-hex content ids shown by `datanet export`)"
    )]
    UnknownExample { name: String, id: String },
    #[error(
        "datanet `{name}` has no pending review item `{item}` (see `tributary datanet pending {name}`)"
    )]
    UnknownItem { name: String, item: String },
    #[error("adapter registry: {0}")]
    Registry(String),
}

/// The JSON report of one upload.
#[derive(Debug, Clone, Serialize)]
pub struct UploadReport {
    pub datanet: String,
    /// The new version's digest.
    pub version: String,
    pub parent: Option<String>,
    pub number: u64,
    pub upload_digest: String,
    pub uploader: Option<String>,
    pub signed: bool,
    pub rows: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
    pub rejected: Vec<RowError>,
    /// Contributors quarantined by this upload.
    pub quarantined: Vec<String>,
    /// Times the publish lost a race and was re-merged.
    pub retries: usize,
    /// The terms record consented to (0: the datanet has none).
    pub terms: u64,
    /// Scanner findings (line, field, kind, span, action), never the matched text.
    pub scan: Vec<ScanReport>,
    /// Rows sent to the owner's review queue.
    pub pending: Vec<PendingRow>,
    /// False when every row went to review: no version was made (`version` is the head).
    pub published: bool,
}

/// Summary of a datanet for `list`.
#[derive(Debug, Clone, Serialize)]
pub struct DatanetSummary {
    pub name: String,
    pub description: String,
    pub versions: u64,
    pub head: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    name: String,
    description: String,
    created_ms: u64,
    /// The contributor who owns the datanet (reviews, terms); `None`: admin only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    number: u64,
    version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredExample {
    messages: Vec<StoredMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredMessage {
    role: String,
    content: String,
}

const PUBLISH_ATTEMPTS: usize = 64;

/// Jittered sleep after losing a publish race.
async fn backoff(attempt: usize) {
    let ms = rand::random_range(1..(5 + 10 * attempt as u64).min(200));
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// Checks a datanet name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Datanets in one store.
#[derive(Debug, Clone)]
pub struct Datanets {
    store: Store,
    clock: Arc<dyn Clock>,
    pub limits: Limits,
    pub quarantine: QuarantineRule,
}

pub(super) struct StoreSource<'a>(&'a Store);

impl ingest::ExampleSource for StoreSource<'_> {
    async fn shingles(&self, id: &str) -> Result<HashSet<u64>, DatanetError> {
        let ex = read_example(self.0, id).await?;
        let msgs: Vec<(String, String)> = ex
            .messages
            .into_iter()
            .map(|m| (m.role, m.content))
            .collect();
        let normalized = text::normalized(&msgs);
        let body: Vec<&str> = normalized.lines().collect();
        Ok(minhash::shingles(&body.join(" ")))
    }
}

pub(super) fn example_key(id: &str) -> Path {
    Path::from(format!("examples/{id}.json"))
}

async fn read_example(store: &Store, id: &str) -> Result<StoredExample, DatanetError> {
    let key = example_key(id);
    let bytes = store
        .get(&key)
        .await?
        .ok_or_else(|| DatanetError::Corrupt {
            key: key.to_string(),
            reason: "missing".into(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| DatanetError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Reads an example, or `None` when a takedown erased it (its tombstone exists); a text
/// missing without a tombstone is corruption.
async fn read_example_or_tombstone(
    store: &Store,
    id: &str,
) -> Result<Option<StoredExample>, DatanetError> {
    let key = example_key(id);
    match store.get(&key).await? {
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DatanetError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })
        }
        None if takedown::tombstone(store, id).await?.is_some() => Ok(None),
        None => Err(DatanetError::Corrupt {
            key: key.to_string(),
            reason: "missing, and no takedown tombstone explains it".into(),
        }),
    }
}

impl Datanets {
    pub fn new(store: Store) -> Self {
        Self::with_clock(store, clock::system())
    }

    pub fn with_clock(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            limits: Limits::default(),
            quarantine: QuarantineRule::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn check_name(name: &str) -> Result<(), DatanetError> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(DatanetError::BadName(name.to_string()))
        }
    }

    fn meta_key(name: &str) -> Path {
        Path::from(format!("datanets/{name}/datanet.json"))
    }

    /// Creates a datanet without terms (fails if it exists): uploads record no consent and
    /// signatures cover the upload digest alone. [`Datanets::create_governed`] sets an
    /// owner, a licence, terms, a scanner policy and review.
    #[tracing::instrument(skip(self))]
    pub async fn create(&self, name: &str, description: &str) -> Result<(), DatanetError> {
        self.create_meta(name, description, None).await
    }

    async fn create_meta(
        &self,
        name: &str,
        description: &str,
        owner: Option<&str>,
    ) -> Result<(), DatanetError> {
        Self::check_name(name)?;
        self.store.ensure_conditional_create().await?;
        let meta = Meta {
            name: name.to_string(),
            description: description.to_string(),
            created_ms: self.clock.now_ms(),
            owner: owner.map(str::to_string),
        };
        let bytes = serde_json::to_vec(&meta).map_err(|e| DatanetError::Corrupt {
            key: name.into(),
            reason: e.to_string(),
        })?;
        match self
            .store
            .create(&Self::meta_key(name), Bytes::from(bytes))
            .await?
        {
            Created::New => Ok(()),
            Created::Existing(_) => Err(DatanetError::Exists(name.to_string())),
        }
    }

    /// The datanet's owner, if it has one.
    pub async fn owner(&self, name: &str) -> Result<Option<String>, DatanetError> {
        Ok(self.meta(name).await?.owner)
    }

    async fn meta(&self, name: &str) -> Result<Meta, DatanetError> {
        Self::check_name(name)?;
        let key = Self::meta_key(name);
        let bytes = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| DatanetError::NotFound(name.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| DatanetError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// All datanets, by name.
    pub async fn list(&self) -> Result<Vec<DatanetSummary>, DatanetError> {
        let names = self.store.list_names(&Path::from("datanets")).await?;
        let mut out = Vec::new();
        for n in names {
            if let Some(name) = n.strip_suffix("/datanet.json") {
                let meta = self.meta(name).await?;
                let head = self.head(name).await?;
                out.push(DatanetSummary {
                    name: name.to_string(),
                    description: meta.description,
                    versions: head.as_ref().map(|h| h.0).unwrap_or(0),
                    head: head.map(|h| h.1),
                });
            }
        }
        Ok(out)
    }

    /// The latest version: (number, digest).
    pub async fn head(&self, name: &str) -> Result<Option<(u64, String)>, DatanetError> {
        let heads = self
            .store
            .list_names(&Path::from(format!("datanets/{name}/heads")))
            .await?;
        let Some(last) = heads.iter().filter_map(|h| h.parse::<u64>().ok()).max() else {
            return Ok(None);
        };
        let key = Path::from(format!("datanets/{name}/heads/{last:020}"));
        let bytes = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| DatanetError::Corrupt {
                key: key.to_string(),
                reason: "listed but missing".into(),
            })?;
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| DatanetError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some((head.number, head.version)))
    }

    /// Reads a version's manifest, checking that its bytes match its digest.
    pub async fn manifest(&self, name: &str, version: &str) -> Result<Manifest, DatanetError> {
        let key = Path::from(format!("datanets/{name}/versions/{version}.json"));
        let bytes = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| DatanetError::NoVersion {
                name: name.to_string(),
                version: version.to_string(),
            })?;
        if blake3::hash(&bytes).to_hex().as_str() != version {
            return Err(DatanetError::Corrupt {
                key: key.to_string(),
                reason: "bytes do not match the version digest".into(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| DatanetError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// Resolves `version` (a digest, a unique digest prefix of at least
    /// [`MIN_DIGEST_PREFIX`] characters, a version number, or `None` for the head) to a
    /// digest. A short string is never a prefix: `9` means version 9, not whichever digest
    /// happens to start with a 9.
    pub async fn resolve_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<String, DatanetError> {
        self.meta(name).await?;
        let versions = self.versions(name).await?;
        let Some(v) = version else {
            return versions
                .last()
                .map(|v| v.version.clone())
                .ok_or_else(|| DatanetError::Empty(name.to_string()));
        };
        // A version number wins over a digest prefix made of the same digits.
        if let Some(by_number) = versions.iter().find(|s| s.number.to_string() == v) {
            return Ok(by_number.version.clone());
        }
        let hits: Vec<&VersionSummary> = if v.len() >= MIN_DIGEST_PREFIX {
            versions
                .iter()
                .filter(|s| s.version.starts_with(v))
                .collect()
        } else {
            Vec::new()
        };
        match hits.as_slice() {
            [one] => Ok(one.version.clone()),
            _ => Err(DatanetError::NoVersion {
                name: name.to_string(),
                version: v.to_string(),
            }),
        }
    }

    /// Every version in order.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionSummary>, DatanetError> {
        self.meta(name).await?;
        let heads = self
            .store
            .list_names(&Path::from(format!("datanets/{name}/heads")))
            .await?;
        let mut out = Vec::new();
        for h in heads {
            let key = Path::from(format!("datanets/{name}/heads/{h}"));
            let Some(bytes) = self.store.get(&key).await? else {
                continue;
            };
            let head: Head = serde_json::from_slice(&bytes).map_err(|e| DatanetError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })?;
            let m = self.manifest(name, &head.version).await?;
            out.push(VersionSummary::of(&m, &head.version));
        }
        out.sort_by_key(|v| v.number);
        Ok(out)
    }

    /// Differences between two versions.
    pub async fn diff(&self, name: &str, from: &str, to: &str) -> Result<Diff, DatanetError> {
        let a = self.resolve_version(name, Some(from)).await?;
        let b = self.resolve_version(name, Some(to)).await?;
        let (ma, mb) = (
            self.manifest(name, &a).await?,
            self.manifest(name, &b).await?,
        );
        Ok(manifest::diff(&ma, &a, &mb, &b))
    }

    /// Writes a version as JSONL (`messages`, `contributor`, `id`, `weight`, `kind`); by
    /// default only credited examples. Returns the number of lines.
    pub async fn export(
        &self,
        name: &str,
        version: Option<&str>,
        include_zero_weight: bool,
        mut out: impl Write,
    ) -> Result<u64, DatanetError> {
        let v = self.resolve_version(name, version).await?;
        let m = self.manifest(name, &v).await?;
        let entries: Vec<&manifest::Entry> = m
            .examples
            .iter()
            .filter(|e| include_zero_weight || e.weight > 0)
            .collect();
        let reads: Vec<_> = entries
            .iter()
            .map(|e| {
                let store = self.store.clone();
                let id = e.id.clone();
                async move { read_example_or_tombstone(&store, &id).await }
            })
            .collect();
        let mut reads = futures::stream::iter(reads).buffered(32);
        let mut n = 0u64;
        let mut in_order = entries.iter();
        while let Some(ex) = reads.next().await {
            // `buffered` yields in submission order: one answer per entry.
            let Some(e) = in_order.next() else { break };
            // An erased text (takedown) is left out of every export.
            let Some(ex) = ex? else {
                continue;
            };
            let line = serde_json::json!({
                "messages": ex.messages.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
                "contributor": e.contributor,
                "id": e.id,
                "weight": e.weight,
                "kind": e.kind,
            });
            writeln!(out, "{line}").map_err(DatanetError::Write)?;
            n += 1;
        }
        out.flush().map_err(DatanetError::Write)?;
        Ok(n)
    }
}
