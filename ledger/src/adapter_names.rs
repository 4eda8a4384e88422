//! Adapter names and tombstones, beside the registry ([`crate::adapters`]).
//!
//! A name is a pointer to an immutable adapter digest, kept append-only: version `seq` of
//! name `n` is the object `names/<n>/<seq>.json` (seq zero-padded, so names sort by
//! version), written with conditional create. The first writer of a name owns it; only its
//! owner may add versions. A new version never changes what an old digest serves: requests
//! resolve a name to a digest once, and caches are keyed by digest.
//!
//! Deleting an adapter writes `tombstones/<digest>.json` (conditional create): the adapter
//! is unlisted and no longer served, but its files and registry entry stay, so attribution
//! and reward records that name it can still be re-checked.

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::adapters::AdapterError;
use crate::store::{Created, Store};

/// Longest adapter name.
pub const MAX_NAME: usize = 64;

/// How many times a claim retries when another writer took the next version first.
const CLAIM_TRIES: usize = 16;

/// One version of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamePointer {
    pub name: String,
    /// 1 for the first version.
    pub seq: u64,
    pub adapter_digest: String,
    /// The identity that owns the name (the first claimer's).
    pub owner: String,
    pub created_unix_ms: u64,
}

/// A deleted adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub adapter_digest: String,
    /// Who deleted it.
    pub by: String,
    pub deleted_unix_ms: u64,
}

/// Whether `s` is 64 lowercase hex characters (what a digest looks like; names may not).
pub fn looks_like_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an adapter name: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or
/// digit, and not shaped like a digest.
pub fn check_name(name: &str) -> Result<(), AdapterError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        "only a-z 0-9 . _ - are allowed"
    } else if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        "it must start with a letter or digit"
    } else if looks_like_digest(name) {
        "64 hex characters would be read as a digest"
    } else {
        return Ok(());
    };
    Err(AdapterError::BadName {
        name: name.to_string(),
        reason,
    })
}

/// Names and tombstones over one store (the registry's).
#[derive(Debug, Clone)]
pub struct AdapterNames {
    store: Store,
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, AdapterError> {
    serde_json::from_slice(bytes).map_err(|e| AdapterError::BadEntry {
        digest: what.to_string(),
        reason: e.to_string(),
    })
}

fn to_bytes<T: Serialize>(what: &str, v: &T) -> Result<Bytes, AdapterError> {
    serde_json::to_vec_pretty(v)
        .map(Bytes::from)
        .map_err(|e| AdapterError::BadEntry {
            digest: what.to_string(),
            reason: e.to_string(),
        })
}

impl AdapterNames {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn version_key(name: &str, seq: u64) -> Path {
        Path::from(format!("names/{name}/{seq:020}.json"))
    }

    fn index_key(digest: &str, name: &str) -> Path {
        Path::from(format!("names-by-digest/{digest}/{name}"))
    }

    /// The names whose newest version points at `digest` (through the index by digest, so
    /// the cost does not grow with the number of names).
    pub async fn names_of(&self, digest: &str) -> Result<Vec<String>, AdapterError> {
        let mut out = Vec::new();
        for name in self
            .store
            .list_names(&Path::from(format!("names-by-digest/{digest}")))
            .await?
        {
            if check_name(&name).is_ok()
                && self
                    .latest(&name)
                    .await?
                    .is_some_and(|p| p.adapter_digest == digest)
            {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn tombstone_key(digest: &str) -> Path {
        Path::from(format!("tombstones/{digest}.json"))
    }

    /// Every version of `name`, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<NamePointer>, AdapterError> {
        check_name(name)?;
        let mut out = Vec::new();
        for file in self
            .store
            .list_names(&Path::from(format!("names/{name}")))
            .await?
        {
            let Some(seq) = file
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(b) = self.store.get(&Self::version_key(name, seq)).await? {
                out.push(parse(name, &b)?);
            }
        }
        out.sort_by_key(|p: &NamePointer| p.seq);
        Ok(out)
    }

    /// The newest version of `name`, if it was ever claimed.
    pub async fn latest(&self, name: &str) -> Result<Option<NamePointer>, AdapterError> {
        Ok(self.history(name).await?.pop())
    }

    /// Points `name` at `digest` as its next version, for `owner`. The first claim makes
    /// `owner` the name's owner; a claim by anyone else is refused. Pointing the name at
    /// the digest it already points at returns that version unchanged.
    pub async fn claim(
        &self,
        name: &str,
        digest: &str,
        owner: &str,
        now_unix_ms: u64,
    ) -> Result<NamePointer, AdapterError> {
        check_name(name)?;
        for _ in 0..CLAIM_TRIES {
            let latest = self.latest(name).await?;
            if let Some(p) = &latest {
                if p.owner != owner {
                    return Err(AdapterError::NameOwned {
                        name: name.to_string(),
                        owner: p.owner.clone(),
                    });
                }
                if p.adapter_digest == digest {
                    // A retried claim: make sure the index marker is there too.
                    self.store
                        .create(&Self::index_key(digest, name), Bytes::new())
                        .await?;
                    return Ok(p.clone());
                }
            }
            let ptr = NamePointer {
                name: name.to_string(),
                seq: latest.map_or(1, |p| p.seq + 1),
                adapter_digest: digest.to_string(),
                owner: owner.to_string(),
                created_unix_ms: now_unix_ms,
            };
            let key = Self::version_key(name, ptr.seq);
            match self.store.create(&key, to_bytes(name, &ptr)?).await? {
                Created::New => {
                    // The index by digest (a marker; a stale one is filtered on read).
                    let marker = Self::index_key(digest, name);
                    self.store.create(&marker, Bytes::new()).await?;
                    return Ok(ptr);
                }
                // Another writer took this version: re-read and decide again.
                Created::Existing(_) => continue,
            }
        }
        Err(AdapterError::Contended {
            name: name.to_string(),
        })
    }

    /// The newest version of every name, by name.
    pub async fn list(&self) -> Result<Vec<NamePointer>, AdapterError> {
        let mut names: Vec<String> = self
            .store
            .list_names(&Path::from("names"))
            .await?
            .into_iter()
            .filter_map(|f| f.split('/').next().map(str::to_string))
            .collect();
        names.dedup();
        let mut out = Vec::new();
        for n in names {
            if check_name(&n).is_ok()
                && let Some(p) = self.latest(&n).await?
            {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Marks `digest` deleted (idempotent: a second delete returns the first tombstone).
    pub async fn tombstone(
        &self,
        digest: &str,
        by: &str,
        now_unix_ms: u64,
    ) -> Result<Tombstone, AdapterError> {
        let t = Tombstone {
            adapter_digest: digest.to_string(),
            by: by.to_string(),
            deleted_unix_ms: now_unix_ms,
        };
        match self
            .store
            .create(&Self::tombstone_key(digest), to_bytes(digest, &t)?)
            .await?
        {
            Created::New => Ok(t),
            Created::Existing(b) => parse(digest, &b),
        }
    }

    /// The tombstone of `digest`, if it was deleted.
    pub async fn tombstone_of(&self, digest: &str) -> Result<Option<Tombstone>, AdapterError> {
        match self.store.get(&Self::tombstone_key(digest)).await? {
            Some(b) => parse(digest, &b).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // tests use fresh store names
    fn names() -> AdapterNames {
        AdapterNames::new(
            Store::open(&format!("memory://names-{}", rand::random::<u64>())).unwrap(),
        )
    }

    const D1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[tokio::test]
    async fn names_are_append_only_pointers_owned_by_their_first_claimer() {
        let n = names();
        assert_eq!(n.latest("support-bot").await.unwrap(), None);
        let p1 = n.claim("support-bot", D1, "alice", 1).await.unwrap();
        assert_eq!(p1.seq, 1);
        // Same digest again: the same version.
        assert_eq!(n.claim("support-bot", D1, "alice", 2).await.unwrap(), p1);
        let p2 = n.claim("support-bot", D2, "alice", 3).await.unwrap();
        assert_eq!(p2.seq, 2);
        assert_eq!(
            n.latest("support-bot")
                .await
                .unwrap()
                .unwrap()
                .adapter_digest,
            D2
        );
        let h = n.history("support-bot").await.unwrap();
        assert_eq!(
            h.iter()
                .map(|p| p.adapter_digest.as_str())
                .collect::<Vec<_>>(),
            [D1, D2]
        );
        let e = n.claim("support-bot", D1, "mallory", 4).await.unwrap_err();
        assert!(e.to_string().contains("owned by alice"), "{e}");
        assert_eq!(n.list().await.unwrap(), vec![p2]);
        // The index by digest follows the newest versions only.
        assert_eq!(
            n.names_of(D2).await.unwrap(),
            vec!["support-bot".to_string()]
        );
        assert!(n.names_of(D1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_claims_get_distinct_versions() {
        let n = names();
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let n = n.clone();
            let d = format!("{:064x}", i + 1);
            tasks.push(tokio::spawn(
                async move { n.claim("x", &d, "alice", 0).await },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().unwrap().seq);
        }
        seqs.sort();
        assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn bad_names_are_refused_with_the_reason() {
        let n = names();
        for (name, needle) in [
            ("", "empty"),
            ("Upper", "a-z"),
            ("-x", "start with"),
            ("a/b", "a-z"),
            (D1, "digest"),
        ] {
            let e = n.claim(name, D1, "a", 0).await.unwrap_err().to_string();
            assert!(e.contains(needle), "{name}: {e}");
        }
        let long = "a".repeat(65);
        assert!(n.claim(&long, D1, "a", 0).await.is_err());
    }

    #[tokio::test]
    async fn tombstones_are_written_once() {
        let n = names();
        assert_eq!(n.tombstone_of(D1).await.unwrap(), None);
        let t = n.tombstone(D1, "alice", 5).await.unwrap();
        assert_eq!(n.tombstone(D1, "bob", 9).await.unwrap(), t);
        assert_eq!(n.tombstone_of(D1).await.unwrap(), Some(t));
    }
}
