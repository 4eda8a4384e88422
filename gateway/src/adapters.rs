//! The adapter API (every route needs the `build` scope):
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/adapters` | register an adapter: `{"name"?, "url"}` (a PEFT directory in any object store), `{"name"?, "digest"}` (one already in the registry) or `{"name"?, "files": {"adapter_config.json": base64, "adapter_model.safetensors": base64}}` (an upload); 201 |
//! | `GET /v1/adapters` | every live adapter for this base model, with residency |
//! | `GET /v1/adapters/{id}` | one, by name or digest (a deleted one shows `deleted_unix_ms`) |
//! | `DELETE /v1/adapters/{id}` | tombstone it and unload it after draining; 409 while pinned |
//! | `GET /v1/adapters/{id}/files/{file}` | download one PEFT file ([`crate::adapter_files`]) |
//! | `GET /v1/adapters/{id}/gguf` | download it as a llama.cpp GGUF LoRA adapter (when the gateway has the base model's config) |
//! | `POST /v1/adapters/{id}/pin`, `DELETE …/pin` | keep it resident in the engine (never evicted, not deletable) / let it go |
//!
//! An adapter for another base model is refused at registration: the engine checks the
//! files against its base (shapes, rank), and a registry entry's base digest must be the
//! engine's. The registering caller is recorded as the adapter's owner; a name belongs to
//! whoever claimed it first.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_ledger::adapter_names::looks_like_digest;
use tributary_ledger::adapters::{AdapterFile, Provenance};
use tributary_ledger::keys::Scope;
use tributary_ledger::store::Store;
use tributary_protocol::AdapterFiles;
use tributary_worker::AllowPaths;

use crate::auth::{Auth, Caller};
use crate::catalog::{AdapterView, Catalog, Residency, store_error};
use crate::error::ApiError;
use crate::openai::ids::unix_ms;
use crate::openai::read_body;

/// The two files of a PEFT LoRA adapter.
pub const PEFT_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// What the adapter routes share.
#[derive(Clone)]
pub struct AdaptersState {
    pub catalog: Catalog,
    /// Largest registration body (uploads carry the weights, base64).
    pub max_body_bytes: usize,
    /// The served base model's directory or GGUF file, when this process has it (GGUF
    /// export reads its config).
    pub base_model: Option<std::path::PathBuf>,
    /// Which local directories `{"url": …}` registrations may read (`--allow-path`); remote
    /// stores are not limited by it.
    pub allow: AllowPaths,
}

/// The adapter upload route: its handler reads the body against its own limit
/// ([`crate::limits::OWN_LIMIT_ROUTES`]).
pub const UPLOAD_ROUTE: &str = "/v1/adapters";

/// The `/v1/adapters` routes.
pub fn adapter_router(state: AdaptersState, auth: &Auth) -> Router {
    let r = Router::new()
        .route(UPLOAD_ROUTE, post(register).get(list))
        .route("/v1/adapters/{id}", get(show).delete(delete))
        .route("/v1/adapters/{id}/pin", post(pin).delete(unpin));
    let r = crate::adapter_files::routes(r);
    auth.guard(r, Scope::Build).with_state(state)
}

/// A registration body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    files: Option<BTreeMap<String, String>>,
}

fn check_files(files: &[AdapterFile]) -> Result<(), ApiError> {
    for want in PEFT_FILES {
        if !files.iter().any(|f| f.name == want) {
            return Err(ApiError::invalid(
                "files",
                format!(
                    "files: {want} is missing (a PEFT adapter is adapter_config.json and adapter_model.safetensors)"
                ),
            ));
        }
    }
    if let Some(f) = files
        .iter()
        .find(|f| !PEFT_FILES.contains(&f.name.as_str()))
    {
        return Err(ApiError::invalid(
            "files",
            format!(
                "files: {:?} is not a PEFT adapter file (only {} are accepted)",
                f.name,
                PEFT_FILES.join(" and ")
            ),
        ));
    }
    Ok(())
}

/// Reads a PEFT directory from an object-store URL (`file:///dir`, `s3://bucket/dir?…`); a
/// local one only under `allow` (else a 400 naming the path and `--allow-path`).
async fn fetch_url(url: &str, allow: &AllowPaths) -> Result<Vec<AdapterFile>, ApiError> {
    allow
        .check_url("url", url)
        .map_err(|e| ApiError::invalid("url", e.to_string()))?;
    let store = Store::open(url).map_err(|e| ApiError::invalid("url", format!("url: {e}")))?;
    let mut files = Vec::new();
    for name in PEFT_FILES {
        let bytes = store
            .get(&object_store::path::Path::from(name))
            .await
            .map_err(|e| ApiError::invalid("url", format!("url: reading {name}: {e}")))?
            .ok_or_else(|| ApiError::invalid("url", format!("url: {url} has no {name}")))?;
        files.push(AdapterFile {
            name: name.to_string(),
            bytes,
        });
    }
    Ok(files)
}

fn decode_upload(files: BTreeMap<String, String>) -> Result<Vec<AdapterFile>, ApiError> {
    files
        .into_iter()
        .map(|(name, b64)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    ApiError::invalid(
                        format!("files.{name}"),
                        format!("files.{name} is not base64: {e}"),
                    )
                })?;
            Ok(AdapterFile {
                name,
                bytes: bytes.into(),
            })
        })
        .collect()
}

async fn register(
    State(st): State<AdaptersState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<(StatusCode, Json<AdapterView>), ApiError> {
    let bytes = read_body(body, st.max_body_bytes).await?;
    let reg: Registration = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("registration body: {e}")))?;
    let info = st.catalog.engine.info();
    let base = info.base_digest.to_hex();
    let sources = [reg.url.is_some(), reg.digest.is_some(), reg.files.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(ApiError::invalid(
            "body",
            "give exactly one of url (a PEFT directory), digest (an adapter in the registry) or files (an upload)",
        ));
    }
    let entry = if let Some(digest) = &reg.digest {
        if !looks_like_digest(digest) {
            return Err(ApiError::invalid(
                "digest",
                "digest must be 64 lowercase hex characters",
            ));
        }
        let e = st.catalog.live_entry(digest).await?.ok_or_else(|| {
            ApiError::not_found(format!("no live adapter {digest} in the registry"))
        })?;
        if e.base_model_digest != base {
            return Err(ApiError::invalid(
                "digest",
                format!(
                    "adapter {digest} was trained on base model {}; this server serves {} ({base})",
                    e.base_model_digest, info.base_name
                ),
            ));
        }
        e
    } else {
        let (files, source) = match (reg.url, reg.files) {
            (Some(url), _) => (fetch_url(&url, &st.allow).await?, json!({ "url": url })),
            (_, Some(files)) => (decode_upload(files)?, json!({ "upload": true })),
            _ => return Err(ApiError::invalid("body", "nothing to register")),
        };
        check_files(&files)?;
        st.catalog
            .engine
            .check_adapter(AdapterFiles {
                files: files
                    .iter()
                    .map(|f| (f.name.clone(), f.bytes.to_vec()))
                    .collect(),
            })
            .await?;
        let prov = Provenance {
            base_model_digest: base,
            data_digest: String::new(),
            job_id: String::new(),
            spec: json!({ "registered": source }),
            created_unix_ms: unix_ms(),
        };
        st.catalog
            .registry
            .register_owned(&files, prov, Some(caller.owner.clone()))
            .await
            .map_err(store_error)?
    };
    if let Some(name) = &reg.name {
        st.catalog
            .names
            .claim(name, &entry.adapter_digest, &caller.owner, unix_ms())
            .await
            .map_err(store_error)?;
    }
    tracing::info!(digest = %entry.adapter_digest, owner = %caller.owner, name = ?reg.name, "adapter registered");
    Ok((StatusCode::CREATED, Json(st.catalog.view(entry).await?)))
}

async fn list(State(st): State<AdaptersState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "object": "list", "data": st.catalog.adapters().await? }),
    ))
}

async fn entry_of(st: &AdaptersState, id: &str) -> Result<AdapterView, ApiError> {
    let digest = st
        .catalog
        .digest_of(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no adapter named {id:?}")))?;
    let entry = st
        .catalog
        .registry
        .get(&digest)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no adapter {id}")))?;
    st.catalog.view(entry).await
}

async fn show(
    State(st): State<AdaptersState>,
    Path(id): Path<String>,
) -> Result<Json<AdapterView>, ApiError> {
    Ok(Json(entry_of(&st, &id).await?))
}

async fn delete(
    State(st): State<AdaptersState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = entry_of(&st, &id).await?;
    if let Some(t) = view.deleted_unix_ms {
        return Ok(Json(
            json!({ "id": id, "digest": view.digest, "deleted": true, "deleted_unix_ms": t }),
        ));
    }
    let owner_ok = view.owner.as_deref() == Some(caller.owner.as_str());
    if !owner_ok && !caller.admin {
        return Err(ApiError::Forbidden(format!(
            "adapter {} belongs to {}; only its owner or an admin may delete it",
            view.digest,
            view.owner.as_deref().unwrap_or("the operator")
        )));
    }
    if view.residency == Residency::Pinned {
        return Err(ApiError::Conflict(format!(
            "adapter {} is pinned in the engine; unpin it before deleting",
            view.digest
        )));
    }
    let t = st
        .catalog
        .names
        .tombstone(&view.digest, &caller.owner, unix_ms())
        .await
        .map_err(store_error)?;
    let digest = view
        .digest
        .parse()
        .map_err(|e| ApiError::Internal(format!("registry digest: {e}")))?;
    // Unlisted and unservable now; the engine drops the weights once its running requests
    // for them have drained.
    st.catalog.engine.unload(digest).await?;
    tracing::info!(digest = %view.digest, by = %caller.owner, "adapter deleted");
    Ok(Json(json!({
        "id": id,
        "digest": view.digest,
        "deleted": true,
        "deleted_unix_ms": t.deleted_unix_ms,
    })))
}

async fn set_pin(
    st: &AdaptersState,
    caller: &Caller,
    id: &str,
    pinned: bool,
) -> Result<Json<Value>, ApiError> {
    let view = entry_of(st, id).await?;
    if view.deleted_unix_ms.is_some() {
        return Err(ApiError::not_found(format!("adapter {id} was deleted")));
    }
    if view.owner.as_deref() != Some(caller.owner.as_str()) && !caller.admin {
        return Err(ApiError::Forbidden(format!(
            "adapter {} belongs to {}; only its owner or an admin may pin it",
            view.digest,
            view.owner.as_deref().unwrap_or("the operator")
        )));
    }
    let digest = view
        .digest
        .parse()
        .map_err(|e| ApiError::Internal(format!("registry digest: {e}")))?;
    st.catalog.engine.set_pinned(digest, pinned).await?;
    Ok(Json(
        json!({ "id": id, "digest": view.digest, "pinned": pinned }),
    ))
}

async fn pin(
    State(st): State<AdaptersState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_pin(&st, &caller, &id, true).await
}

async fn unpin(
    State(st): State<AdaptersState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_pin(&st, &caller, &id, false).await
}

#[cfg(test)]
#[path = "adapters_tests.rs"]
mod tests;
