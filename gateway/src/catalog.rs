//! The catalog of what this gateway serves: the engine's base model, and the adapters in
//! the registry ([`tributary_ledger::adapters`]) with their names and tombstones
//! ([`tributary_ledger::adapter_names`]). It resolves a request's `model` (a base model
//! name or digest, an adapter name, an adapter digest) to the engine's [`ModelChoice`]:
//! names are resolved to digests here, once per request, so a new version of a name is
//! never answered from the old weights.

use serde::Serialize;
use tributary_ledger::adapter_names::{AdapterNames, check_name, looks_like_digest};
use tributary_ledger::adapters::{AdapterEntry, AdapterError, AdapterRegistry};
use tributary_ledger::store::Store;
use tributary_protocol::{Digest, ModelChoice, SharedInference};

use crate::error::ApiError;

/// The catalog over one store and one engine.
#[derive(Clone)]
pub struct Catalog {
    pub store: Store,
    pub registry: AdapterRegistry,
    pub names: AdapterNames,
    pub engine: SharedInference,
}

/// Where an adapter's weights are now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// Held by the engine, pinned.
    Pinned,
    /// Held by the engine.
    Resident,
    /// Only in the object store (loaded on first use).
    Store,
}

/// One adapter as `/v1/models` and `/v1/adapters` show it.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterView {
    pub digest: String,
    /// Names whose newest version points at this adapter.
    pub names: Vec<String>,
    pub base: String,
    pub residency: Residency,
    pub owner: Option<String>,
    pub job_id: String,
    pub created_unix_ms: u64,
    pub location: String,
    pub files: Vec<String>,
    /// The licences of the datanet version it was trained on (issue 18).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_licenses: Vec<tributary_ledger::datanet::DataLicense>,
    /// Takedowns that withdrew examples from its training data since it was trained: its
    /// builder should retrain (only on `GET /v1/adapters/{id}`, not in lists).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub withdrawn_data: Vec<tributary_ledger::datanet::takedown::AdapterMark>,
    /// Set once deleted (tombstoned adapters are not served and not listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_unix_ms: Option<u64>,
}

pub fn store_error(e: AdapterError) -> ApiError {
    match e {
        AdapterError::Store(e) => ApiError::Unavailable(format!("adapter registry: {e}")),
        AdapterError::BadName { .. } => ApiError::invalid("name", e.to_string()),
        AdapterError::NameOwned { .. } => ApiError::Forbidden(e.to_string()),
        AdapterError::Contended { .. } => ApiError::Conflict(e.to_string()),
        AdapterError::BadFileName { .. } | AdapterError::NoFiles => {
            ApiError::invalid("files", e.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

impl Catalog {
    pub fn new(store: Store, engine: SharedInference) -> Self {
        Self {
            registry: AdapterRegistry::new(store.clone()),
            names: AdapterNames::new(store.clone()),
            store,
            engine,
        }
    }

    /// The digest an adapter id (a name or a digest) points at, if any.
    pub async fn digest_of(&self, id: &str) -> Result<Option<String>, ApiError> {
        if looks_like_digest(id) {
            return Ok(Some(id.to_string()));
        }
        if check_name(id).is_err() {
            return Ok(None);
        }
        Ok(self
            .names
            .latest(id)
            .await
            .map_err(store_error)?
            .map(|p| p.adapter_digest))
    }

    /// A live (not deleted) registry entry by name or digest, with its digest.
    pub async fn live_entry(&self, id: &str) -> Result<Option<AdapterEntry>, ApiError> {
        let Some(digest) = self.digest_of(id).await? else {
            return Ok(None);
        };
        let Some(entry) = self.registry.get(&digest).await.map_err(store_error)? else {
            return Ok(None);
        };
        if self
            .names
            .tombstone_of(&digest)
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// What `model` asks for; a 404 naming it when it is nothing served here.
    pub async fn resolve_model(&self, model: &str) -> Result<ModelChoice, ApiError> {
        let info = self.engine.info();
        if model == info.base_name || model == info.base_digest.to_hex() {
            return Ok(ModelChoice::Base);
        }
        let entry = self
            .live_entry(model)
            .await?
            .ok_or_else(|| ApiError::unknown_model(model))?;
        if entry.base_model_digest != info.base_digest.to_hex() {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "adapter `{model}` was trained on base model {}, and this server serves {} ({})",
                    entry.base_model_digest, info.base_name, info.base_digest
                ),
            ));
        }
        let digest: Digest = entry
            .adapter_digest
            .parse()
            .map_err(|e| ApiError::Internal(format!("registry digest: {e}")))?;
        Ok(ModelChoice::Adapter(digest))
    }

    fn residency(&self, digest: &str) -> Residency {
        match self
            .engine
            .resident()
            .into_iter()
            .find(|r| r.digest.to_hex() == digest)
        {
            Some(r) if r.pinned => Residency::Pinned,
            Some(_) => Residency::Resident,
            None => Residency::Store,
        }
    }

    /// The view of one entry.
    pub async fn view(&self, entry: AdapterEntry) -> Result<AdapterView, ApiError> {
        let names = self
            .names
            .names_of(&entry.adapter_digest)
            .await
            .map_err(store_error)?;
        let deleted = self
            .names
            .tombstone_of(&entry.adapter_digest)
            .await
            .map_err(store_error)?
            .map(|t| t.deleted_unix_ms);
        let withdrawn_data =
            tributary_ledger::datanet::takedown::adapter_marks(&self.store, &entry.adapter_digest)
                .await
                .map_err(|e| ApiError::Unavailable(format!("lineage marks: {e}")))?;
        Ok(AdapterView {
            data_licenses: entry.data_licenses,
            withdrawn_data,
            residency: self.residency(&entry.adapter_digest),
            digest: entry.adapter_digest,
            names,
            base: entry.base_model_digest,
            owner: entry.owner,
            job_id: entry.job_id,
            created_unix_ms: entry.created_unix_ms,
            location: entry.location,
            files: entry.files,
            deleted_unix_ms: deleted,
        })
    }

    /// Every live adapter for this engine's base model, oldest first.
    pub async fn adapters(&self) -> Result<Vec<AdapterView>, ApiError> {
        let base = self.engine.info().base_digest.to_hex();
        let pointers = self.names.list().await.map_err(store_error)?;
        let mut out = Vec::new();
        for e in self.registry.list().await.map_err(store_error)? {
            if e.base_model_digest != base
                || self
                    .names
                    .tombstone_of(&e.adapter_digest)
                    .await
                    .map_err(store_error)?
                    .is_some()
            {
                continue;
            }
            out.push(AdapterView {
                residency: self.residency(&e.adapter_digest),
                names: pointers
                    .iter()
                    .filter(|p| p.adapter_digest == e.adapter_digest)
                    .map(|p| p.name.clone())
                    .collect(),
                digest: e.adapter_digest,
                base: e.base_model_digest,
                owner: e.owner,
                job_id: e.job_id,
                created_unix_ms: e.created_unix_ms,
                location: e.location,
                files: e.files,
                data_licenses: e.data_licenses,
                withdrawn_data: Vec::new(),
                deleted_unix_ms: None,
            });
        }
        out.sort_by_key(|v| v.created_unix_ms);
        Ok(out)
    }
}
