//! The adapter registry: every trained adapter's files stored under their content address
//! (`adapters/<digest>/<file>`) and one immutable registry entry per adapter
//! (`registry/<digest>.json`) recording the adapter digest, the base model and data digests,
//! the job that trained it, its spec and when. Files are written before the entry, each with
//! conditional create, so an entry never points at missing or half-written files; an entry
//! is never overwritten (a second registration of the same adapter returns the first entry).

use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::store::{Created, Store, StoreError};

/// Longest file name accepted in an adapter.
pub const MAX_FILE_NAME: usize = 255;

/// What can go wrong registering or reading adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("adapter file name {name:?} is not allowed: {reason}")]
    BadFileName { name: String, reason: &'static str },
    #[error("an adapter needs at least one file")]
    NoFiles,
    #[error("adapter {digest}: {what} already stored with different contents")]
    Conflict { digest: String, what: String },
    #[error("adapter {digest}: registry entry is unreadable: {reason}")]
    BadEntry { digest: String, reason: String },
    #[error("adapter {digest}: file {name} is missing from the store")]
    MissingFile { digest: String, name: String },
    #[error("adapter {digest}: stored files hash to {found}")]
    DigestMismatch { digest: String, found: String },
    #[error("adapter name {name:?} is not allowed: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("adapter name {name:?} is owned by {owner}; only its owner may add versions")]
    NameOwned { name: String, owner: String },
    #[error("adapter name {name:?}: too many concurrent claims, try again")]
    Contended { name: String },
}

/// One file of an adapter (`adapter_config.json`, `adapter_model.safetensors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterFile {
    pub name: String,
    pub bytes: Bytes,
}

/// A registry entry: immutable once written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterEntry {
    /// BLAKE3 (hex) over the adapter's files: see [`adapter_digest`].
    pub adapter_digest: String,
    pub base_model_digest: String,
    pub data_digest: String,
    pub job_id: String,
    /// The job spec as submitted.
    pub spec: serde_json::Value,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// File names, sorted.
    pub files: Vec<String>,
    /// Where the files are: the store URL (without query) joined with `adapters/<digest>`.
    pub location: String,
    /// The identity (API key owner) that trained or registered it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The licences of the data version it was trained on, when that is a datanet version
    /// in the same store (see [`crate::datanet::license::licenses_for_data`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_licenses: Vec<crate::datanet::DataLicense>,
}

/// What a registration needs besides the files.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    pub base_model_digest: String,
    pub data_digest: String,
    pub job_id: String,
    pub spec: serde_json::Value,
    pub created_unix_ms: u64,
}

fn check_name(name: &str) -> Result<(), AdapterError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_FILE_NAME {
        "longer than 255 bytes"
    } else if name.starts_with('.') {
        "starts with a dot"
    } else if name.contains(['/', '\\']) {
        "contains a path separator"
    } else {
        return Ok(());
    };
    Err(AdapterError::BadFileName {
        name: name.to_string(),
        reason,
    })
}

/// BLAKE3 (hex) over the files sorted by name: for each, the name's length, the name, the
/// size and the contents (lengths as little-endian u64). Independent of the order given.
pub fn adapter_digest(files: &[AdapterFile]) -> String {
    let mut sorted: Vec<&AdapterFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = blake3::Hasher::new();
    for f in sorted {
        h.update(&(f.name.len() as u64).to_le_bytes());
        h.update(f.name.as_bytes());
        h.update(&(f.bytes.len() as u64).to_le_bytes());
        h.update(&f.bytes);
    }
    h.finalize().to_hex().to_string()
}

/// The registry over one store.
#[derive(Debug, Clone)]
pub struct AdapterRegistry {
    store: Store,
}

impl AdapterRegistry {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn file_key(digest: &str, name: &str) -> Path {
        Path::from(format!("adapters/{digest}/{name}"))
    }

    fn entry_key(digest: &str) -> Path {
        Path::from(format!("registry/{digest}.json"))
    }

    /// Where an adapter's files live, as a path or URL a user can open.
    pub fn location(&self, digest: &str) -> String {
        let base = self.store.label();
        let base = base.split('?').next().unwrap_or(base).trim_end_matches('/');
        format!("{base}/adapters/{digest}")
    }

    /// Stores the files under their digest, then creates the entry. Registering the same
    /// adapter again returns the entry already there.
    pub async fn register(
        &self,
        files: &[AdapterFile],
        prov: Provenance,
    ) -> Result<AdapterEntry, AdapterError> {
        self.register_owned(files, prov, None).await
    }

    /// [`AdapterRegistry::register`], recording `owner` (the identity that trained or
    /// registered it) in the entry; the first registration's owner stays.
    pub async fn register_owned(
        &self,
        files: &[AdapterFile],
        prov: Provenance,
        owner: Option<String>,
    ) -> Result<AdapterEntry, AdapterError> {
        if files.is_empty() {
            return Err(AdapterError::NoFiles);
        }
        for f in files {
            check_name(&f.name)?;
        }
        let digest = adapter_digest(files);
        for f in files {
            let key = Self::file_key(&digest, &f.name);
            if let Created::Existing(found) = self.store.create(&key, f.bytes.clone()).await?
                && found != f.bytes
            {
                return Err(AdapterError::Conflict {
                    digest,
                    what: format!("file {}", f.name),
                });
            }
        }
        let mut names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        names.sort();
        let data_licenses =
            crate::datanet::license::licenses_for_data(&self.store, &prov.data_digest)
                .await
                .map_err(|e| AdapterError::BadEntry {
                    digest: digest.clone(),
                    reason: format!("reading the licences of data {}: {e}", prov.data_digest),
                })?;
        let entry = AdapterEntry {
            adapter_digest: digest.clone(),
            base_model_digest: prov.base_model_digest,
            data_digest: prov.data_digest,
            job_id: prov.job_id,
            spec: prov.spec,
            created_unix_ms: prov.created_unix_ms,
            files: names,
            location: self.location(&digest),
            owner,
            data_licenses,
        };
        let bytes = serde_json::to_vec_pretty(&entry).map_err(|e| AdapterError::BadEntry {
            digest: digest.clone(),
            reason: e.to_string(),
        })?;
        match self
            .store
            .create(&Self::entry_key(&digest), Bytes::from(bytes))
            .await?
        {
            Created::New => Ok(entry),
            Created::Existing(found) => {
                let first = parse_entry(&digest, &found)?;
                if first.adapter_digest != digest || first.files != entry.files {
                    return Err(AdapterError::Conflict {
                        digest,
                        what: "registry entry".into(),
                    });
                }
                Ok(first)
            }
        }
    }

    /// One entry by adapter digest.
    pub async fn get(&self, digest: &str) -> Result<Option<AdapterEntry>, AdapterError> {
        match self.store.get(&Self::entry_key(digest)).await? {
            Some(b) => parse_entry(digest, &b).map(Some),
            None => Ok(None),
        }
    }

    /// Every entry, by digest.
    pub async fn list(&self) -> Result<Vec<AdapterEntry>, AdapterError> {
        let mut out = Vec::new();
        for name in self.store.list_names(&Path::from("registry")).await? {
            if let Some(digest) = name.strip_suffix(".json")
                && let Some(e) = self.get(digest).await?
            {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// An adapter's files, checked against its digest.
    pub async fn files(&self, entry: &AdapterEntry) -> Result<Vec<AdapterFile>, AdapterError> {
        let digest = &entry.adapter_digest;
        let mut files = Vec::with_capacity(entry.files.len());
        for name in &entry.files {
            check_name(name)?;
            let bytes = self
                .store
                .get(&Self::file_key(digest, name))
                .await?
                .ok_or_else(|| AdapterError::MissingFile {
                    digest: digest.clone(),
                    name: name.clone(),
                })?;
            files.push(AdapterFile {
                name: name.clone(),
                bytes,
            });
        }
        let found = adapter_digest(&files);
        if &found != digest {
            return Err(AdapterError::DigestMismatch {
                digest: digest.clone(),
                found,
            });
        }
        Ok(files)
    }
}

fn parse_entry(digest: &str, bytes: &[u8]) -> Result<AdapterEntry, AdapterError> {
    serde_json::from_slice(bytes).map_err(|e| AdapterError::BadEntry {
        digest: digest.to_string(),
        reason: e.to_string(),
    })
}
