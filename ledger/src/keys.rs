//! API keys: the one key scheme of the product. A key is a secret string a client sends as
//! `Authorization: Bearer <key>`; it is stored only as its hash (BLAKE3 in key-derivation
//! mode with this scheme's context string), with the identity it speaks for (`owner`: a
//! contributor or builder name) and its scopes. The gateway's HTTP auth, usage metering and
//! the datanet uploads' [`crate::datanet::KeyRing`] all resolve keys through here.
//!
//! - [`KeySet`]: keys in memory (a keys file, tests).
//! - [`KeyStore`]: keys in the object store, `keys/<hash>.json`, written with conditional
//!   create (a record is never overwritten); revocation writes `keys-revoked/<hash>.json`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::store::{Created, Store, StoreError};

/// Shortest secret accepted (keys files hold human-made keys too).
pub const MIN_SECRET_LEN: usize = 16;
/// Prefix of generated keys (so a leaked key is recognisable in logs and scanners).
pub const KEY_PREFIX: &str = "trib_";
const HASH_CONTEXT: &str = "tributary api key v1";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `/v1/chat/completions`, `/v1/completions`, `/v1/models`.
    Inference,
    /// Jobs and adapters.
    Build,
    /// Datanet uploads.
    Contribute,
    /// Everything, and key management.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Self::Inference, Self::Build, Self::Contribute, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::Build => "build",
            Self::Contribute => "contribute",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s)
            .ok_or_else(|| {
                KeyError::Invalid(format!(
                    "scope {s:?} is not one of inference, build, contribute, admin"
                ))
            })
    }
}

/// What can go wrong with keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("key record {hash} is unreadable: {reason}")]
    BadRecord { hash: String, reason: String },
}

/// A stored key: its hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// A short public id (the hash's first 16 hex characters): in logs, metrics, records.
    pub id: String,
    /// [`hash_key`] of the secret, hex.
    pub hash: String,
    /// The identity the key speaks for.
    pub owner: String,
    pub scopes: Vec<Scope>,
    pub created_unix_ms: u64,
}

impl KeyRecord {
    /// Whether the key carries `scope` (`admin` carries every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    fn new(
        secret: &str,
        owner: &str,
        scopes: &[Scope],
        now_unix_ms: u64,
    ) -> Result<Self, KeyError> {
        check_secret(secret)?;
        if owner.is_empty() || owner.len() > 128 {
            return Err(KeyError::Invalid(format!(
                "key owner {owner:?} must be 1-128 characters"
            )));
        }
        if scopes.is_empty() {
            return Err(KeyError::Invalid("a key needs at least one scope".into()));
        }
        let hash = hash_key(secret);
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        Ok(Self {
            id: hash[..16].to_string(),
            hash,
            owner: owner.to_string(),
            scopes,
            created_unix_ms: now_unix_ms,
        })
    }
}

fn check_secret(secret: &str) -> Result<(), KeyError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyError::Invalid(format!(
            "API key is {} characters, minimum {MIN_SECRET_LEN}",
            secret.len()
        )));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::Invalid(
            "API key must be printable ASCII without spaces".into(),
        ));
    }
    Ok(())
}

/// The stored hash of a secret (hex).
pub fn hash_key(secret: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key(HASH_CONTEXT);
    h.update(secret.as_bytes());
    h.finalize().to_hex().to_string()
}

/// A new random secret: `trib_` and 48 hex characters (192 bits).
#[allow(clippy::disallowed_methods)] // secrets need fresh, OS-seeded entropy
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{hex}")
}

/// Keys held in memory, by hash.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_hash: HashMap<String, KeyRecord>,
}

impl KeySet {
    /// Adds a secret for `owner` with `scopes`.
    pub fn insert_secret(
        &mut self,
        secret: &str,
        owner: &str,
        scopes: &[Scope],
    ) -> Result<KeyRecord, KeyError> {
        let rec = KeyRecord::new(secret, owner, scopes, 0)?;
        self.by_hash.insert(rec.hash.clone(), rec.clone());
        Ok(rec)
    }

    /// Adds a record (e.g. one read from a [`KeyStore`]).
    pub fn insert(&mut self, rec: KeyRecord) {
        self.by_hash.insert(rec.hash.clone(), rec);
    }

    /// The record a secret resolves to.
    pub fn resolve(&self, secret: &str) -> Option<&KeyRecord> {
        self.by_hash.get(&hash_key(secret))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// Keys in the object store, with a cache of the records already resolved.
#[derive(Debug, Clone)]
pub struct KeyStore {
    store: Store,
    cache: Arc<Mutex<KeySet>>,
}

impl KeyStore {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::new(Mutex::new(KeySet::default())),
        }
    }

    fn record_key(hash: &str) -> Path {
        Path::from(format!("keys/{hash}.json"))
    }

    fn revoked_key(hash: &str) -> Path {
        Path::from(format!("keys-revoked/{hash}.json"))
    }

    /// Stores a key for a secret the caller chose (a dev process's admin key, keys
    /// imported from a keys file). Storing the same secret again returns the first record.
    pub async fn add(
        &self,
        secret: &str,
        owner: &str,
        scopes: &[Scope],
        now_unix_ms: u64,
    ) -> Result<KeyRecord, KeyError> {
        let rec = KeyRecord::new(secret, owner, scopes, now_unix_ms)?;
        let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| KeyError::BadRecord {
            hash: rec.hash.clone(),
            reason: e.to_string(),
        })?;
        match self
            .store
            .create(&Self::record_key(&rec.hash), Bytes::from(bytes))
            .await?
        {
            Created::New => Ok(rec),
            Created::Existing(b) => parse(&rec.hash, &b),
        }
    }

    /// Makes a new random key; returns the secret (shown once, never stored) and its record.
    pub async fn create(
        &self,
        owner: &str,
        scopes: &[Scope],
        now_unix_ms: u64,
    ) -> Result<(String, KeyRecord), KeyError> {
        let secret = new_secret();
        let rec = self.add(&secret, owner, scopes, now_unix_ms).await?;
        Ok((secret, rec))
    }

    /// The live record a secret resolves to (`None`: unknown or revoked).
    pub async fn resolve(&self, secret: &str) -> Result<Option<KeyRecord>, KeyError> {
        if let Ok(c) = self.cache.lock()
            && let Some(r) = c.resolve(secret)
        {
            return Ok(Some(r.clone()));
        }
        let hash = hash_key(secret);
        let Some(b) = self.store.get(&Self::record_key(&hash)).await? else {
            return Ok(None);
        };
        if self.store.get(&Self::revoked_key(&hash)).await?.is_some() {
            return Ok(None);
        }
        let rec = parse(&hash, &b)?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(rec.clone());
        }
        Ok(Some(rec))
    }

    /// The live record with stored hash `hash` (`None`: unknown or revoked): how a browser
    /// session, which keeps the hash and never the secret, acts as its key.
    pub async fn resolve_hash(&self, hash: &str) -> Result<Option<KeyRecord>, KeyError> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        if let Ok(c) = self.cache.lock()
            && let Some(r) = c.by_hash.get(hash)
        {
            return Ok(Some(r.clone()));
        }
        let Some(b) = self.store.get(&Self::record_key(hash)).await? else {
            return Ok(None);
        };
        if self.store.get(&Self::revoked_key(hash)).await?.is_some() {
            return Ok(None);
        }
        let rec = parse(hash, &b)?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(rec.clone());
        }
        Ok(Some(rec))
    }

    /// Every live key record.
    pub async fn list(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let revoked: Vec<String> = self.store.list_names(&Path::from("keys-revoked")).await?;
        let mut out = Vec::new();
        for name in self.store.list_names(&Path::from("keys")).await? {
            let Some(hash) = name.strip_suffix(".json") else {
                continue;
            };
            if revoked.contains(&name) {
                continue;
            }
            if let Some(b) = self.store.get(&Self::record_key(hash)).await? {
                out.push(parse(hash, &b)?);
            }
        }
        Ok(out)
    }

    /// Revokes the key whose id is `id`; returns whether one was found.
    pub async fn revoke(&self, id: &str, now_unix_ms: u64) -> Result<bool, KeyError> {
        let Some(rec) = self.list().await?.into_iter().find(|r| r.id == id) else {
            return Ok(false);
        };
        let body = serde_json::json!({ "id": rec.id, "revoked_unix_ms": now_unix_ms });
        self.store
            .create(
                &Self::revoked_key(&rec.hash),
                Bytes::from(body.to_string().into_bytes()),
            )
            .await?;
        if let Ok(mut c) = self.cache.lock() {
            c.by_hash.remove(&rec.hash);
        }
        Ok(true)
    }
}

fn parse(hash: &str, bytes: &[u8]) -> Result<KeyRecord, KeyError> {
    serde_json::from_slice(bytes).map_err(|e| KeyError::BadRecord {
        hash: hash.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // secrets need fresh, OS-seeded entropy
    fn store() -> KeyStore {
        KeyStore::new(Store::open(&format!("memory://keys-{}", rand::random::<u64>())).unwrap())
    }

    #[tokio::test]
    async fn keys_are_stored_hashed_and_resolve_to_owner_and_scopes() {
        let ks = store();
        let (secret, rec) = ks.create("alice", &[Scope::Inference], 7).await.unwrap();
        assert!(secret.starts_with(KEY_PREFIX) && secret.len() == 53);
        assert_eq!(rec.hash, hash_key(&secret));
        // The secret appears nowhere in the store.
        for name in ks.store.list_names(&Path::from("keys")).await.unwrap() {
            let b = ks
                .store
                .get(&Path::from(format!("keys/{name}")))
                .await
                .unwrap()
                .unwrap();
            assert!(!String::from_utf8_lossy(&b).contains(&secret));
        }
        let got = ks.resolve(&secret).await.unwrap().unwrap();
        assert_eq!(got.owner, "alice");
        assert!(got.allows(Scope::Inference) && !got.allows(Scope::Build));
        assert_eq!(ks.resolve("trib_not-a-key-at-all").await.unwrap(), None);
        // A fresh KeyStore (another process) resolves it from the store.
        let other = KeyStore::new(ks.store.clone());
        assert_eq!(other.resolve(&secret).await.unwrap().unwrap().id, rec.id);
        // By its stored hash (a browser session's way), from a fresh process too.
        let third = KeyStore::new(ks.store.clone());
        assert_eq!(
            third.resolve_hash(&rec.hash).await.unwrap().unwrap().id,
            rec.id
        );
        assert_eq!(third.resolve_hash("../keys").await.unwrap(), None);
        assert!(other.revoke(&rec.id, 9).await.unwrap());
        assert_eq!(other.resolve(&secret).await.unwrap(), None);
        assert_eq!(other.resolve_hash(&rec.hash).await.unwrap(), None);
        assert_eq!(
            KeyStore::new(ks.store.clone())
                .resolve_hash(&rec.hash)
                .await
                .unwrap(),
            None
        );
        assert!(other.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn admin_carries_every_scope_and_bad_keys_are_refused() {
        let ks = store();
        let rec = ks
            .add("0123456789abcdefXYZ", "ops", &[Scope::Admin], 1)
            .await
            .unwrap();
        assert!(Scope::ALL.iter().all(|s| rec.allows(*s)));
        // Adding the same secret again keeps the first record.
        let again = ks
            .add(
                "0123456789abcdefXYZ",
                "someone-else",
                &[Scope::Inference],
                2,
            )
            .await
            .unwrap();
        assert_eq!(again, rec);
        let e = ks.add("short", "x", &[Scope::Admin], 0).await.unwrap_err();
        assert!(e.to_string().contains("minimum 16"), "{e}");
        let e = ks.add("0123456789abcdef", "x", &[], 0).await.unwrap_err();
        assert!(e.to_string().contains("scope"), "{e}");
        assert!("root".parse::<Scope>().is_err());
        assert_eq!("build".parse::<Scope>().unwrap(), Scope::Build);
    }
}
