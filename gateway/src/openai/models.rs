//! `GET /v1/models` and `GET /v1/models/{id}`: OpenAI's list shape (`{"object": "list",
//! "data": [{"id", "object": "model", "created", "owned_by"}]}`) with Tributary's fields:
//! `digest`, `base` (the base model's digest; null for the base itself), `residency`
//! (`resident`, `pinned` or `store`), `names`. An adapter is listed once, under its newest
//! name when it has one, else its digest; both work as `model`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::ServeState;
use crate::catalog::{AdapterView, Residency};
use crate::error::ApiError;

fn base_model(st: &ServeState) -> Value {
    let info = st.catalog.engine.info();
    json!({
        "id": info.base_name,
        "object": "model",
        "created": 0,
        "owned_by": "tributary",
        "digest": info.base_digest.to_hex(),
        "base": Value::Null,
        "residency": Residency::Resident,
        "names": [info.base_name],
        "context_window": info.context_window,
    })
}

fn adapter_model(v: &AdapterView) -> Value {
    json!({
        "id": v.names.first().cloned().unwrap_or_else(|| v.digest.clone()),
        "object": "model",
        "created": v.created_unix_ms / 1000,
        "owned_by": v.owner.clone().unwrap_or_else(|| "tributary".into()),
        "digest": v.digest,
        "base": v.base,
        "residency": v.residency,
        "names": v.names,
    })
}

pub async fn list(State(st): State<ServeState>) -> Result<Json<Value>, ApiError> {
    let mut data = vec![base_model(&st)];
    data.extend(st.catalog.adapters().await?.iter().map(adapter_model));
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn show(
    State(st): State<ServeState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let info = st.catalog.engine.info();
    if id == info.base_name || id == info.base_digest.to_hex() {
        return Ok(Json(base_model(&st)));
    }
    let entry = st
        .catalog
        .live_entry(&id)
        .await?
        .filter(|e| e.base_model_digest == info.base_digest.to_hex())
        .ok_or_else(|| ApiError::unknown_model(&id))?;
    let mut v = adapter_model(&st.catalog.view(entry).await?);
    crate::json::set(&mut v, "id", json!(id));
    Ok(Json(v))
}

/// `GET /v1/usage`: requests and tokens per API key since the process started; an admin
/// sees every key, anyone else their own.
pub async fn usage(axum::Extension(caller): axum::Extension<crate::auth::Caller>) -> Json<Value> {
    let only = (!caller.admin).then(|| caller.metering_key().to_string());
    let data: Vec<Value> = super::metrics::usage_of(only.as_deref())
        .into_iter()
        .map(|(key, u)| {
            json!({
                "key": key,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
