//! `GET /v1/adapters/{id}/files/{file}` (`build` scope): one file of a live adapter's PEFT
//! directory (`adapter_config.json` or `adapter_model.safetensors`), so a browser or `curl`
//! downloads the adapter as PEFT. Merged into [`crate::adapters::adapter_router`].

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
