//! Manifests: the immutable description of one datanet version, named by the BLAKE3 digest
//! of its JSON bytes. A manifest lists every example entry (id, contributor, weight, kind,
//! cluster, LSH band keys), cumulative per-contributor statistics (used for quarantine), and
//! the upload (or takedown, review or terms change) that produced it, the consent recorded
//! for the upload, and the cumulative list of withdrawn entries (takedowns).
//!
//! Manifests reference examples by content id only; the texts live in `examples/<id>.json`
//! and can be erased by a takedown without changing any manifest's bytes or digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Current manifest format.
pub const FORMAT: u32 = 1;

/// How an entry relates to earlier examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// First accepted copy: its contributor owns it, weight 1.
    Original,
    /// Same content id as an earlier entry: recorded with weight 0.
    Duplicate,
    /// Jaccard ≥ 0.8 with an earlier example: joins its cluster with weight 0.
    NearDuplicate,
}

/// One example entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Content id (hex BLAKE3 of the normalized text).
    pub id: String,
    pub contributor: String,
    /// 1 for the credited copy of a cluster, 0 otherwise.
    pub weight: u32,
    pub kind: Kind,
    /// Id of the cluster's credited example.
    pub cluster: String,
    /// LSH band keys (hex), absent for exact duplicates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lsh: String,
    /// The terms record this entry was contributed under (0: before terms existed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub terms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Cumulative per-contributor counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContributorStats {
    pub accepted: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
    pub rejected: u64,
    pub quarantined: bool,
    /// Entries withdrawn by takedowns (any actor).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub withdrawn: u64,
    /// Of those, entries removed by someone else (the operator or an admin): counted
    /// against the contributor like rejections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub removed: u64,
}

impl ContributorStats {
    pub fn rows(&self) -> u64 {
        self.accepted + self.duplicates + self.near_duplicates + self.rejected
    }
}

/// The upload that produced a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// Hex BLAKE3 of the uploaded bytes.
    pub digest: String,
    pub uploader: Option<String>,
    pub signed: bool,
    pub rows: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
    pub rejected: u64,
    /// The contributor's consent to the terms in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
}

/// How an upload's consent to the terms was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Terms record number and its digest (hex BLAKE3 of the record's bytes).
    pub terms: u64,
    pub terms_digest: String,
    /// `signature`, `api_key` or `operator`.
    pub method: String,
    /// The ed25519 public key (hex) or the API key's identity (`key:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For signed uploads: the signature (hex) over `upload digest ‖ terms digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    pub time_ms: u64,
}

/// What produced a version other than an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Licence, terms, policy or review setting changed to terms record `terms`.
    Amend { terms: u64 },
    /// Takedown log entry `seq` removed entries.
    Takedown { seq: u64 },
    /// The owner decided pending rows.
    Review { decisions: Vec<ReviewDecision> },
}

/// One review decision recorded in the version that applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewDecision {
    pub item: String,
    pub contributor: String,
    pub accepted: bool,
    pub reason: String,
    pub by: String,
    /// Content id of the row (after redaction).
    pub id: String,
    /// The upload the row came from, and its consent.
    pub upload_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
}

/// An entry withdrawn by a takedown (kept in every later manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub id: String,
    pub contributor: String,
    pub time_ms: u64,
    /// Takedown log sequence number.
    pub seq: u64,
    /// Whether the text was erased from the store.
    pub erased: bool,
}

/// One immutable datanet version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub datanet: String,
    /// Digest of the previous version.
    pub parent: Option<String>,
    /// Position in the datanet's version sequence (1 = first upload).
    pub number: u64,
    pub created_ms: u64,
    pub upload: UploadInfo,
    pub examples: Vec<Entry>,
    pub contributors: BTreeMap<String, ContributorStats>,
    /// The terms record in force when this version was made (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub terms: u64,
    /// Set for versions made by a takedown, review or terms change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// Every entry withdrawn so far, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withdrawn: Vec<Withdrawal>,
    /// Review items applied so far (sorted), so a decision is applied once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reviewed: Vec<String>,
}

impl Manifest {
    /// The canonical bytes and their digest (the version name).
    pub fn encode(&self) -> Result<(Vec<u8>, String), serde_json::Error> {
        let bytes = serde_json::to_vec(self)?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        Ok((bytes, digest))
    }

    /// Credited examples (weight > 0).
    pub fn weighted(&self) -> usize {
        self.examples.iter().filter(|e| e.weight > 0).count()
    }
}

/// Summary of a manifest for listings.
#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub number: u64,
    pub version: String,
    pub parent: Option<String>,
    pub created_ms: u64,
    pub entries: usize,
    pub weighted: usize,
    pub contributors: usize,
    pub quarantined: Vec<String>,
    pub upload: UploadInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    pub terms: u64,
    pub withdrawn: usize,
}

impl VersionSummary {
    pub fn of(m: &Manifest, version: &str) -> Self {
        Self {
            number: m.number,
            version: version.to_string(),
            parent: m.parent.clone(),
            created_ms: m.created_ms,
            entries: m.examples.len(),
            weighted: m.weighted(),
            contributors: m.contributors.len(),
            quarantined: m
                .contributors
                .iter()
                .filter(|(_, s)| s.quarantined)
                .map(|(c, _)| c.clone())
                .collect(),
            upload: m.upload.clone(),
            event: m.event.clone(),
            terms: m.terms,
            withdrawn: m.withdrawn.len(),
        }
    }
}

/// Differences between two versions, by (example id, contributor) entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub from: String,
    pub to: String,
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    /// Contributors whose quarantine state changed: (id, now quarantined).
    pub quarantine_changes: Vec<(String, bool)>,
}

/// Computes the difference `a → b`.
pub fn diff(a: &Manifest, a_name: &str, b: &Manifest, b_name: &str) -> Diff {
    use std::collections::BTreeSet;
    let key = |e: &Entry| (e.id.clone(), e.contributor.clone());
    let in_a: BTreeSet<_> = a.examples.iter().map(key).collect();
    let in_b: BTreeSet<_> = b.examples.iter().map(key).collect();
    let quarantine_changes = b
        .contributors
        .iter()
        .filter_map(|(c, s)| {
            let before = a.contributors.get(c).is_some_and(|x| x.quarantined);
            (before != s.quarantined).then(|| (c.clone(), s.quarantined))
        })
        .collect();
    Diff {
        from: a_name.to_string(),
        to: b_name.to_string(),
        added: b
            .examples
            .iter()
            .filter(|e| !in_a.contains(&key(e)))
            .cloned()
            .collect(),
        removed: a
            .examples
            .iter()
            .filter(|e| !in_b.contains(&key(e)))
            .cloned()
            .collect(),
        quarantine_changes,
    }
}
