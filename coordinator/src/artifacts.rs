//! A job's artifacts in object storage (not etcd, which caps values at ~1.5 MiB): checkpoints
//! under `checkpoints/<job>/<step>-<digest>.bin` and the trained adapter in the ledger's
//! adapter registry. The job record keeps only a [`CheckpointRef`] (location and BLAKE3
//! digest), written after the object: a crash between the two leaves the previous pointer,
//! never one to a half-written checkpoint.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tributary_ledger::adapters::{AdapterEntry, AdapterFile, AdapterRegistry, Provenance};
use tributary_ledger::store::{Created, Store};
use tributary_protocol::{Digest, JobId, NamedFile};

use crate::error::CoordError;

/// Where a checkpoint is and what its bytes hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// Steps applied when it was taken.
    pub step: u64,
    /// Object key in the job store's object storage.
    pub key: String,
    pub digest: Digest,
    pub bytes: u64,
}

/// Checkpoints and adapters of every job, in one object store.
#[derive(Debug, Clone)]
pub struct Artifacts {
    store: Store,
}

fn store_err(e: impl std::fmt::Display) -> CoordError {
    CoordError::Store(e.to_string())
}

impl Artifacts {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Opens the object store at `url` (`file:///dir`, a path, `s3://…`, `memory://name`).
    pub fn open(url: &str) -> Result<Self, CoordError> {
        Store::open(url).map(Self::new).map_err(store_err)
    }

    /// The object store itself (job loss histories live there too).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        self.store.label()
    }

    /// Checks the store answers (readiness).
    pub async fn ping(&self) -> Result<(), CoordError> {
        self.store
            .get(&object_store::path::Path::from("readyz"))
            .await
            .map(|_| ())
            .map_err(store_err)
    }

    /// Writes a checkpoint object (create-only; its name holds its digest) and returns the
    /// pointer to put in the job record.
    pub async fn save_checkpoint(
        &self,
        job: &JobId,
        step: u64,
        state: Vec<u8>,
    ) -> Result<CheckpointRef, CoordError> {
        let digest = Digest::of(&state);
        let key = format!("checkpoints/{job}/{step:012}-{digest}.bin");
        let bytes = Bytes::from(state);
        let len = bytes.len() as u64;
        match self
            .store
            .create(&object_store::path::Path::from(key.as_str()), bytes.clone())
            .await
            .map_err(store_err)?
        {
            Created::New => {}
            Created::Existing(found) if found == bytes => {}
            Created::Existing(_) => {
                return Err(CoordError::Store(format!(
                    "checkpoint {key} exists with other contents"
                )));
            }
        }
        Ok(CheckpointRef {
            step,
            key,
            digest,
            bytes: len,
        })
    }

    /// Reads a checkpoint and checks its digest.
    pub async fn load_checkpoint(&self, cp: &CheckpointRef) -> Result<Vec<u8>, CoordError> {
        let bytes = self
            .store
            .get(&object_store::path::Path::from(cp.key.as_str()))
            .await
            .map_err(store_err)?
            .ok_or_else(|| CoordError::Store(format!("checkpoint {} is missing", cp.key)))?;
        let found = Digest::of(&bytes);
        if found != cp.digest {
            return Err(CoordError::Store(format!(
                "checkpoint {} hashes to {found}, the record says {}",
                cp.key, cp.digest
            )));
        }
        Ok(bytes.to_vec())
    }

    /// The adapter registry in this store.
    pub fn registry(&self) -> AdapterRegistry {
        AdapterRegistry::new(self.store.clone())
    }

    /// Adapter names and tombstones in this store.
    pub fn names(&self) -> tributary_ledger::adapter_names::AdapterNames {
        tributary_ledger::adapter_names::AdapterNames::new(self.store.clone())
    }

    /// Points `name` at a registered adapter for `owner` (see
    /// [`tributary_ledger::adapter_names`]); returns the name's new version.
    pub async fn claim_name(
        &self,
        name: &str,
        digest: &str,
        owner: &str,
        now_unix_ms: u64,
    ) -> Result<u64, CoordError> {
        self.names()
            .claim(name, digest, owner, now_unix_ms)
            .await
            .map(|p| p.seq)
            .map_err(store_err)
    }

    /// Stores and registers a trained adapter.
    pub async fn register_adapter(
        &self,
        files: Vec<NamedFile>,
        prov: Provenance,
        owner: Option<String>,
    ) -> Result<AdapterEntry, CoordError> {
        let files: Vec<AdapterFile> = files
            .into_iter()
            .map(|f| AdapterFile {
                name: f.name,
                bytes: Bytes::from(f.bytes),
            })
            .collect();
        self.registry()
            .register_owned(&files, prov, owner)
            .await
            .map_err(store_err)
    }

    /// Stores a trained adapter's attribution index files (`attribution.index`,
    /// `attribution.json`, as the exporting worker built them) under
    /// `attribution/index/<adapter digest>/`: beside the adapter, not among its files.
    pub async fn put_attribution_index(
        &self,
        adapter_digest: &str,
        files: &[NamedFile],
    ) -> Result<(), CoordError> {
        for f in files {
            let key = object_store::path::Path::from(format!(
                "attribution/index/{adapter_digest}/{}",
                f.name
            ));
            self.store
                .put(&key, Bytes::from(f.bytes.clone()))
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }
}
