//! Licences, contribution terms and consent.
//!
//! A datanet's *terms* are a create-only sequence of records
//! (`datanets/<name>/terms/<n:020>.json`): the licence (an SPDX identifier checked against
//! the list kept in `ledger/data/spdx-license-ids.txt`, or a custom text with its BLAKE3
//! digest), the contribution terms text, the scanner policy and whether uploads need the
//! owner's review. The *terms digest* is the BLAKE3 of a record's stored bytes. Changing
//! them ([`Datanets::amend`]) appends record `n+1` and publishes a new datanet version with
//! the same examples; every example entry keeps the number of the terms it was contributed
//! under, so a change never applies to earlier uploads.
//!
//! Consent: a signed upload's signature covers `upload digest ‖ terms digest` (64 bytes,
//! see [`consent_message`]); an API-key upload records the key's identity (a digest, never
//! the key), the time and the terms digest. Both land in the version's manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::identity::Actor;
use super::manifest::{Event, Manifest};
use super::scan::Policy;
use super::{DatanetError, Datanets};
use crate::store::{Created, Store};

/// The SPDX list kept in the repo.
const SPDX_LIST: &str = include_str!("../../data/spdx-license-ids.txt");

/// Longest custom licence or terms text, in bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

struct Spdx {
    /// Lowercased id → canonical id.
    current: BTreeMap<String, String>,
    deprecated: BTreeMap<String, String>,
}

static SPDX: LazyLock<Spdx> = LazyLock::new(|| {
    let mut current = BTreeMap::new();
    let mut deprecated = BTreeMap::new();
    for line in SPDX_LIST.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_prefix("deprecated ") {
            Some(id) => deprecated.insert(id.to_ascii_lowercase(), id.to_string()),
            None => current.insert(line.to_ascii_lowercase(), line.to_string()),
        };
    }
    // SPDX's special value for "no licence asserted".
    current.insert("noassertion".into(), "NOASSERTION".into());
    Spdx {
        current,
        deprecated,
    }
});

/// A datanet's licence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum License {
    /// An SPDX licence identifier (canonical casing).
    Spdx(String),
    /// A custom licence: its text and the hex BLAKE3 of the text.
    Custom { digest: String, text: String },
}

impl License {
    /// Checks an SPDX identifier (case-insensitive) against the list kept in the repo.
    pub fn spdx(id: &str) -> Result<License, DatanetError> {
        let key = id.trim().to_ascii_lowercase();
        if let Some(canon) = SPDX.current.get(&key) {
            return Ok(License::Spdx(canon.clone()));
        }
        let reason = if let Some(canon) = SPDX.deprecated.get(&key) {
            format!(
                "`{canon}` is a deprecated SPDX identifier (use e.g. `{canon}-only` or `{canon}-or-later`)"
            )
        } else {
            format!(
                "`{id}` is not an SPDX licence identifier (list: ledger/data/spdx-license-ids.txt; \
                 or pass a custom licence text with --license-file)"
            )
        };
        Err(DatanetError::BadLicense(reason))
    }

    /// A custom licence text.
    pub fn custom(text: &str) -> Result<License, DatanetError> {
        check_text("licence text", text)?;
        Ok(License::Custom {
            digest: blake3::hash(text.as_bytes()).to_hex().to_string(),
            text: text.to_string(),
        })
    }

    /// `MIT`, or `custom:<digest prefix>`.
    pub fn label(&self) -> String {
        match self {
            License::Spdx(id) => id.clone(),
            License::Custom { digest, .. } => format!("custom:{}", &digest[..16.min(digest.len())]),
        }
    }
}

fn check_text(what: &str, text: &str) -> Result<(), DatanetError> {
    if text.trim().is_empty() {
        return Err(DatanetError::BadLicense(format!("{what} is empty")));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(DatanetError::BadLicense(format!(
            "{what} is {} bytes, over the limit of {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// One terms record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub number: u64,
    pub datanet: String,
    pub license: License,
    /// Contribution terms text, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms_text: Option<String>,
    pub policy: Policy,
    /// Uploads land pending until the owner accepts them.
    pub review: bool,
    pub created_ms: u64,
    /// Who set these terms (`operator` or a contributor id).
    pub by: String,
    /// Terms digest of the previous record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// What [`Datanets::create_governed`] and [`Datanets::amend`] set; `None` keeps the value
/// in force (for `create`, the defaults: NOASSERTION, no terms text, the default policy,
/// no review).
#[derive(Debug, Clone, Default)]
pub struct TermsChange {
    pub license: Option<License>,
    /// `Some(None)` removes the terms text.
    pub terms_text: Option<Option<String>>,
    pub policy: Option<Policy>,
    pub review: Option<bool>,
}

/// The licence of one slice of a datanet version: entries contributed under one terms
/// record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLicense {
    pub datanet: String,
    /// The version's manifest digest.
    pub version: String,
    pub terms: u64,
    pub terms_digest: String,
    /// SPDX id or `custom:<digest prefix>`.
    pub license: String,
    /// Custom licence text digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_digest: Option<String>,
    /// Credited examples under these terms.
    pub examples: u64,
}

/// The message a signed upload signs: upload digest ‖ terms digest.
pub fn consent_message(upload_digest: &[u8; 32], terms_digest: &[u8; 32]) -> [u8; 64] {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(upload_digest);
    m[32..].copy_from_slice(terms_digest);
    m
}

/// The identity recorded for an API key: `key:` and 16 hex of its BLAKE3 (never the key).
pub fn api_key_identity(key: &str) -> String {
    format!("key:{}", &blake3::hash(key.as_bytes()).to_hex()[..16])
}

fn terms_key(name: &str, n: u64) -> Path {
    Path::from(format!("datanets/{name}/terms/{n:020}.json"))
}

/// Reads terms record `n` of `name`: the record and its digest.
pub async fn read_terms(
    store: &Store,
    name: &str,
    n: u64,
) -> Result<Option<(Terms, String)>, DatanetError> {
    let key = terms_key(name, n);
    let Some(bytes) = store.get(&key).await? else {
        return Ok(None);
    };
    let t: Terms = serde_json::from_slice(&bytes).map_err(|e| DatanetError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Some((t, blake3::hash(&bytes).to_hex().to_string())))
}

/// Every datanet version (across the store) whose manifest digest is `data_digest`, with
/// the licences its credited examples were contributed under. Empty when the digest is not
/// a datanet version (a plain file).
pub async fn licenses_for_data(
    store: &Store,
    data_digest: &str,
) -> Result<Vec<DataLicense>, DatanetError> {
    if data_digest.len() != 64 || !data_digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Vec::new());
    }
    let d = Datanets::new(store.clone());
    let mut out = Vec::new();
    for n in store.list_names(&Path::from("datanets")).await? {
        let Some(name) = n.strip_suffix("/datanet.json") else {
            continue;
        };
        let key = Path::from(format!("datanets/{name}/versions/{data_digest}.json"));
        if store.get(&key).await?.is_none() {
            continue;
        }
        let m = d.manifest(name, data_digest).await?;
        out.extend(d.licenses_of(&m, data_digest).await?);
    }
    Ok(out)
}

impl Datanets {
    /// The terms in force: (record, digest), or `None` for a datanet made before terms
    /// existed.
    pub async fn terms(&self, name: &str) -> Result<Option<(Terms, String)>, DatanetError> {
        self.meta(name).await?;
        let names = self
            .store
            .list_names(&Path::from(format!("datanets/{name}/terms")))
            .await?;
        let Some(last) = names
            .iter()
            .filter_map(|n| n.strip_suffix(".json")?.parse::<u64>().ok())
            .max()
        else {
            return Ok(None);
        };
        read_terms(&self.store, name, last).await
    }

    /// Every terms record, oldest first.
    pub async fn terms_history(&self, name: &str) -> Result<Vec<(Terms, String)>, DatanetError> {
        self.meta(name).await?;
        let names = self
            .store
            .list_names(&Path::from(format!("datanets/{name}/terms")))
            .await?;
        let mut out = Vec::new();
        let mut numbers: Vec<u64> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".json")?.parse::<u64>().ok())
            .collect();
        numbers.sort_unstable();
        for n in numbers {
            if let Some(t) = read_terms(&self.store, name, n).await? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Creates a datanet with an owner, a licence, terms, a scanner policy and a review
    /// setting (terms record 1).
    pub async fn create_governed(
        &self,
        name: &str,
        description: &str,
        owner: Option<&str>,
        change: TermsChange,
    ) -> Result<(), DatanetError> {
        if let Some(o) = owner
            && !super::record::valid_contributor(o)
        {
            return Err(DatanetError::Auth(format!(
                "owner `{o}` must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"
            )));
        }
        if let Some(Some(t)) = &change.terms_text {
            check_text("terms text", t)?;
        }
        self.create_meta(name, description, owner).await?;
        let terms = Terms {
            number: 1,
            datanet: name.to_string(),
            license: change
                .license
                .unwrap_or_else(|| License::Spdx("NOASSERTION".into())),
            terms_text: change.terms_text.flatten(),
            policy: change.policy.unwrap_or_default(),
            review: change.review.unwrap_or(false),
            created_ms: self.clock.now_ms(),
            by: owner.unwrap_or("operator").to_string(),
            prev: None,
        };
        self.write_terms(name, &terms).await?;
        Ok(())
    }

    async fn write_terms(&self, name: &str, t: &Terms) -> Result<Option<String>, DatanetError> {
        let bytes = serde_json::to_vec(t).map_err(|e| DatanetError::Corrupt {
            key: name.into(),
            reason: e.to_string(),
        })?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        match self
            .store
            .create(&terms_key(name, t.number), Bytes::from(bytes.clone()))
            .await?
        {
            Created::New => Ok(Some(digest)),
            Created::Existing(b) if b == bytes => Ok(Some(digest)),
            Created::Existing(_) => Ok(None),
        }
    }

    /// Changes the licence, terms, policy or review setting (owner or operator): appends a
    /// terms record and publishes a version with the same examples. Earlier entries keep
    /// their terms. Returns the new terms number and the version digest.
    pub async fn amend(
        &self,
        name: &str,
        actor: &Actor,
        change: TermsChange,
    ) -> Result<(u64, String), DatanetError> {
        let meta = self.meta(name).await?;
        actor.require_owner(name, meta.owner.as_deref())?;
        if let Some(Some(t)) = &change.terms_text {
            check_text("terms text", t)?;
        }
        self.store.ensure_conditional_create().await?;
        for _ in 0..super::PUBLISH_ATTEMPTS {
            let current = self.terms(name).await?;
            let (base, prev_digest, number) = match current {
                Some((t, d)) => (Some(t.clone()), Some(d), t.number + 1),
                None => (None, None, 1),
            };
            let t = Terms {
                number,
                datanet: name.to_string(),
                license: change
                    .license
                    .clone()
                    .or(base.as_ref().map(|b| b.license.clone()))
                    .unwrap_or_else(|| License::Spdx("NOASSERTION".into())),
                terms_text: match &change.terms_text {
                    Some(t) => t.clone(),
                    None => base.as_ref().and_then(|b| b.terms_text.clone()),
                },
                policy: change
                    .policy
                    .clone()
                    .or(base.as_ref().map(|b| b.policy.clone()))
                    .unwrap_or_default(),
                review: change
                    .review
                    .or(base.as_ref().map(|b| b.review))
                    .unwrap_or(false),
                created_ms: self.clock.now_ms(),
                by: actor.label(),
                prev: prev_digest,
            };
            if self.write_terms(name, &t).await?.is_none() {
                continue;
            }
            let version = self
                .publish_event(name, Event::Amend { terms: number }, |_m| Ok(true))
                .await?;
            return Ok((number, version.map(|v| v.1).unwrap_or_default()));
        }
        Err(DatanetError::Contended {
            name: name.to_string(),
            attempts: super::PUBLISH_ATTEMPTS,
        })
    }

    /// The licences of a version: one [`DataLicense`] per terms record its credited
    /// examples were contributed under.
    pub async fn licenses_of(
        &self,
        m: &Manifest,
        version: &str,
    ) -> Result<Vec<DataLicense>, DatanetError> {
        let mut per_terms: BTreeMap<u64, u64> = BTreeMap::new();
        for e in m.examples.iter().filter(|e| e.weight > 0) {
            *per_terms.entry(e.terms).or_default() += 1;
        }
        let numbers: BTreeSet<u64> = per_terms.keys().copied().collect();
        let mut out = Vec::new();
        for n in numbers {
            let examples = per_terms.get(&n).copied().unwrap_or(0);
            let (license, license_digest, terms_digest) = if n == 0 {
                ("NOASSERTION".to_string(), None, String::new())
            } else {
                match read_terms(&self.store, &m.datanet, n).await? {
                    Some((t, d)) => {
                        let ld = match &t.license {
                            License::Custom { digest, .. } => Some(digest.clone()),
                            License::Spdx(_) => None,
                        };
                        (t.license.label(), ld, d)
                    }
                    None => {
                        return Err(DatanetError::Corrupt {
                            key: terms_key(&m.datanet, n).to_string(),
                            reason: "terms record named by a manifest entry is missing".into(),
                        });
                    }
                }
            };
            out.push(DataLicense {
                datanet: m.datanet.clone(),
                version: version.to_string(),
                terms: n,
                terms_digest,
                license,
                license_digest,
                examples,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdx_ids_are_checked_against_the_list_and_unknown_ids_named() {
        assert_eq!(License::spdx("mit").unwrap(), License::Spdx("MIT".into()));
        assert_eq!(
            License::spdx("Apache-2.0").unwrap(),
            License::Spdx("Apache-2.0".into())
        );
        assert!(License::spdx("CC-BY-4.0").is_ok());
        let e = License::spdx("MIT-but-nicer").unwrap_err().to_string();
        assert!(e.contains("`MIT-but-nicer` is not an SPDX"), "{e}");
        let e = License::spdx("GPL-2.0").unwrap_err().to_string();
        assert!(e.contains("deprecated"), "{e}");
        let c = License::custom("You may train on this.").unwrap();
        assert!(c.label().starts_with("custom:"));
        assert!(License::custom("  ").is_err());
    }

    #[test]
    fn the_consent_message_binds_both_digests() {
        let a = consent_message(&[1; 32], &[2; 32]);
        assert_eq!(&a[..32], &[1; 32]);
        assert_eq!(&a[32..], &[2; 32]);
        assert_ne!(api_key_identity("k1"), api_key_identity("k2"));
        assert!(!api_key_identity("secret-key-value").contains("secret"));
    }
}
