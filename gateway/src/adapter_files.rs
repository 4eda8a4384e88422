//! Downloading an adapter (`build` scope; merged into [`crate::adapters::adapter_router`]):
//!
//! - `GET /v1/adapters/{id}/files/{file}`: one file of a live adapter's PEFT directory
//!   (`adapter_config.json` or `adapter_model.safetensors`).
//! - `GET /v1/adapters/{id}/gguf`: the adapter as a llama.cpp GGUF LoRA adapter
//!   (`llama-cli -m BASE.gguf --lora FILE`), converted on request by
//!   [`tributary_model::gguf::lora_export`] (what `tributary model export-lora` writes). The
//!   conversion needs the base model's config (llama.cpp's tensor names, head counts for the
//!   q/k row permutation): the gateway has it when the process was given the base model
//!   (`tributary dev --base-model`, `tributary gateway --base-model`); otherwise, or when
//!   the adapter was trained on another base, the answer is a 409 saying why.

use std::path::PathBuf;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::adapters::{AdaptersState, PEFT_FILES};
use crate::catalog::store_error;
use crate::error::ApiError;

/// Adds the download route to `r`.
pub(crate) fn routes(r: Router<AdaptersState>) -> Router<AdaptersState> {
    r.route("/v1/adapters/{id}/files/{file}", get(file))
        .route("/v1/adapters/{id}/gguf", get(gguf))
}

async fn file(
    State(st): State<AdaptersState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if !PEFT_FILES.contains(&name.as_str()) {
        return Err(ApiError::invalid(
            "file",
            format!(
                "file = {name:?}: an adapter has {}",
                PEFT_FILES.join(" and ")
            ),
        ));
    }
    let entry = st
        .catalog
        .live_entry(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no adapter {id}")))?;
    let files = st
        .catalog
        .registry
        .files(&entry)
        .await
        .map_err(store_error)?;
    let f = files
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| ApiError::not_found(format!("adapter {id} has no {name}")))?;
    let kind = if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let disposition = format!(
        "attachment; filename=\"{}-{name}\"",
        &entry.adapter_digest[..12.min(entry.adapter_digest.len())]
    );
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        f.bytes,
    )
        .into_response())
}

/// `base`'s config: a directory's `config.json`, or a GGUF file's metadata.
fn base_config(base: &std::path::Path) -> Result<tributary_model::config::ModelConfig, String> {
    if tributary_model::gguf::is_gguf(base) {
        tributary_model::source::open_checkpoint(base)
            .map(|c| c.config)
            .map_err(|e| e.to_string())
    } else {
        tributary_model::config::ModelConfig::load(base).map_err(|e| e.to_string())
    }
}

/// Converts PEFT files to GGUF bytes for a base with `base`'s config (blocking).
fn to_gguf(base: PathBuf, files: Vec<(String, bytes::Bytes)>) -> Result<Vec<u8>, ApiError> {
    let cfg = base_config(&base).map_err(|e| {
        ApiError::Conflict(format!(
            "GGUF export: the base model {} this gateway was given is unreadable: {e}",
            base.display()
        ))
    })?;
    let tmp = tempfile::tempdir().map_err(|e| ApiError::Internal(format!("GGUF export: {e}")))?;
    for (name, bytes) in &files {
        std::fs::write(tmp.path().join(name), bytes)
            .map_err(|e| ApiError::Internal(format!("GGUF export: {e}")))?;
    }
    let device = tributary_model::device::cpu_device();
    let adapter =
        tributary_model::lora::LoraAdapter::load(tmp.path(), &cfg, &device).map_err(|e| {
            ApiError::Conflict(format!(
                "GGUF export: the adapter does not load on this base: {e}"
            ))
        })?;
    let out = tmp.path().join("adapter.gguf");
    tributary_model::gguf::lora_export::export_lora(&adapter, &cfg, &out)
        .map_err(|e| ApiError::Conflict(format!("GGUF export: {e}")))?;
    std::fs::read(&out).map_err(|e| ApiError::Internal(format!("GGUF export: {e}")))
}

async fn gguf(
    State(st): State<AdaptersState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let entry = st
        .catalog
        .live_entry(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no adapter {id}")))?;
    let Some(base) = st.base_model.clone() else {
        return Err(ApiError::Conflict(
            "GGUF export needs the base model's config (llama.cpp's tensor names and head \
             counts): this gateway was started without --base-model; download the PEFT files \
             and run `tributary model export-lora`"
                .into(),
        ));
    };
    let served = st.catalog.engine.info().base_digest.to_hex();
    if entry.base_model_digest != served {
        return Err(ApiError::Conflict(format!(
            "GGUF export: adapter {} was trained on base model {}, not on the base {served} \
             this gateway knows",
            entry.adapter_digest, entry.base_model_digest
        )));
    }
    let files = st
        .catalog
        .registry
        .files(&entry)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|f| (f.name, f.bytes))
        .collect();
    let bytes = tokio::task::spawn_blocking(move || to_gguf(base, files))
        .await
        .map_err(|e| ApiError::Internal(format!("GGUF export task: {e}")))??;
    let disposition = format!(
        "attachment; filename=\"{}-lora.gguf\"",
        &entry.adapter_digest[..12.min(entry.adapter_digest.len())]
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}
