//! The job API:
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/jobs` | submit a spec (JSON body, or TOML with `Content-Type: application/toml`); 201 `{"id"}` |
//! | `GET /v1/jobs` | every job record, in submission order |
//! | `GET /v1/jobs/{id}` | one job record |
//! | `POST /v1/jobs/{id}/cancel` | cancel a queued or running job; 202 |
//! | `GET /v1/jobs/{id}/logs` | the job's event lines |
//!
//! Each request runs in a `tracing` span; errors come back as JSON (see [`crate::error`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};
use tracing::{Instrument, info_span};
use tributary_coordinator::JobApi;
use tributary_protocol::{JobId, JobSpec};

use crate::error::ApiError;

/// Largest spec body accepted.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

type Api = Arc<dyn JobApi>;

/// The `/v1/jobs` routes over `api`.
pub fn job_router(api: Api) -> Router {
    Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/logs", get(logs))
        .with_state(api)
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::new(raw).map_err(|e| ApiError::BadRequest {
        field: Some("id".into()),
        message: e.to_string(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Unavailable(e.to_string()))
}

async fn submit(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    async move {
        if body.len() > MAX_SPEC_BYTES {
            return Err(ApiError::BadRequest {
                field: Some("spec".into()),
                message: format!(
                    "spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
                    body.len()
                ),
            });
        }
        let text = std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest {
            field: Some("spec".into()),
            message: "spec is not UTF-8".into(),
        })?;
        let toml = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("toml"));
        let spec = if toml {
            JobSpec::from_toml_str(text)
        } else {
            JobSpec::from_json_str(text)
        }
        .map_err(|e| ApiError::spec(spec_message(&e)))?;
        let id = api.submit(spec).await?;
        tracing::info!(%id, "job submitted");
        Ok((StatusCode::CREATED, Json(json!({ "id": id.to_string() }))))
    }
    .instrument(info_span!("http_submit_job"))
    .await
}

async fn list(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let recs = api.list().instrument(info_span!("http_list_jobs")).await?;
    Ok(Json(to_json(&recs)?))
}

async fn show(State(api): State<Api>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let rec = api
        .get(id.clone())
        .instrument(info_span!("http_get_job", job = %id))
        .await?
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    Ok(Json(to_json(&rec)?))
}

async fn cancel(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = job_id(&id)?;
    api.cancel(id.clone())
        .instrument(info_span!("http_cancel_job", job = %id))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.to_string(), "cancel": "requested" })),
    ))
}

async fn logs(State(api): State<Api>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let rec = api
        .get(id.clone())
        .instrument(info_span!("http_job_logs", job = %id))
        .await?
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    Ok(Json(
        json!({ "id": id.to_string(), "lines": to_json(&rec.log)? }),
    ))
}

/// A spec error's message without the "invalid job spec: " prefix, so it starts with the field.
fn spec_message(e: &tributary_protocol::ProtocolError) -> String {
    match e {
        tributary_protocol::ProtocolError::Spec(m) => m.clone(),
        other => other.to_string(),
    }
}
