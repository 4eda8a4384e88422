//! The job API:
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/jobs` | submit a spec (JSON body, or TOML with `Content-Type: application/toml`); 201 `{"id"}` |
//! | `GET /v1/jobs` | every job record, in submission order |
//! | `GET /v1/jobs/{id}` | one job record |
//! | `POST /v1/jobs/{id}/cancel` | cancel a queued or running job; 202 |
//! | `GET /v1/jobs/{id}/logs` | the job's event lines |
//! | `GET /v1/cluster` | coordinators, workers, etcd's members and health, and whether this gateway's object store answers |
//!
//! Every route needs the `build` scope ([`crate::auth`]). A submitted spec's `owner` is set
//! to the caller's identity (whatever the body said); a job may be cancelled by its owner
//! or an admin. A spec's `name` must be free or already the caller's (checked at submit, so
//! a job does not train for hours to find its name taken).
//!
//! Each request runs in a `tracing` span; errors come back as JSON (see [`crate::error`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};
use tracing::{Instrument, info_span};
use tributary_coordinator::JobApi;
use tributary_protocol::{JobId, JobSpec};

use tributary_ledger::adapter_names::{AdapterNames, check_name};
use tributary_ledger::keys::Scope;
use tributary_ledger::store::Store;

use crate::auth::{Auth, Caller};
use crate::catalog::store_error;
use crate::error::ApiError;

/// Largest spec body accepted.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// What the job routes share.
#[derive(Clone)]
pub struct JobsState {
    pub api: Arc<dyn JobApi>,
    /// Adapter names in the store the jobs register into (for the spec's `name`).
    pub names: Option<AdapterNames>,
    /// This gateway's object store, probed by `GET /v1/cluster`.
    pub store: Option<Store>,
}

/// The `/v1/jobs` routes over `api`, each needing the `build` scope.
pub fn job_router(
    api: Arc<dyn JobApi>,
    names: Option<AdapterNames>,
    store: Option<Store>,
    auth: &Auth,
) -> Router {
    let r = Router::new()
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/cluster", get(cluster));
    auth.guard(r, Scope::Build)
        .with_state(JobsState { api, names, store })
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
    State(st): State<JobsState>,
    Extension(caller): Extension<Caller>,
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
        let mut spec = spec;
        spec.owner = Some(caller.owner.clone());
        if let Some(name) = &spec.name {
            check_name(name).map_err(store_error)?;
            if let Some(names) = &st.names
                && let Some(p) = names.latest(name).await.map_err(store_error)?
                && p.owner != caller.owner
            {
                return Err(ApiError::Forbidden(format!(
                    "name: adapter name {name:?} is owned by {}; choose another name",
                    p.owner
                )));
            }
        }
        let id = st.api.submit(spec).await?;
        tracing::info!(%id, owner = %caller.owner, "job submitted");
        Ok((StatusCode::CREATED, Json(json!({ "id": id.to_string() }))))
    }
    .instrument(info_span!("http_submit_job"))
    .await
}

async fn list(State(st): State<JobsState>) -> Result<Json<Value>, ApiError> {
    let recs = st
        .api
        .list()
        .instrument(info_span!("http_list_jobs"))
        .await?;
    Ok(Json(to_json(&recs)?))
}

/// `GET /v1/cluster`: the coordinators (who leads, fencing tokens) and the workers with
/// their membership records and heartbeat ages.
async fn cluster(State(st): State<JobsState>) -> Result<Json<Value>, ApiError> {
    let status = st
        .api
        .cluster()
        .instrument(info_span!("http_cluster"))
        .await?
        .ok_or_else(|| ApiError::NotFound {
            field: None,
            message: "this process has no view of the cluster".into(),
            code: "no_cluster_view",
        })?;
    let mut view = to_json(&status)?;
    if let (Some(store), Some(obj)) = (&st.store, view.as_object_mut()) {
        obj.insert("store".into(), store_health(store).await);
    }
    Ok(Json(view))
}

/// Whether the store answers a read (of a key that is never written, so the probe leaves
/// nothing behind), how fast, and its label (the URL without its query, where credentials
/// may be).
async fn store_health(store: &Store) -> Value {
    const PROBE: &str = "health/probe-never-written";
    #[allow(clippy::disallowed_methods)] // a latency shown to the operator, not logic
    let t0 = std::time::Instant::now();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        store.get(&object_store::path::Path::from(PROBE)),
    )
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let (reachable, error) = match read {
        Ok(Ok(_)) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (false, Some("no answer within 5 s".to_string())),
    };
    json!({
        "label": store.label(),
        "reachable": reachable,
        "read_ms": (ms * 1000.0).round() / 1000.0,
        "error": error,
    })
}

async fn show(
    State(st): State<JobsState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let rec = st
        .api
        .get(id.clone())
        .instrument(info_span!("http_get_job", job = %id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such job {id}")))?;
    Ok(Json(to_json(&rec)?))
}

async fn cancel(
    State(st): State<JobsState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = job_id(&id)?;
    let rec = st
        .api
        .get(id.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such job {id}")))?;
    if let Some(owner) = &rec.spec.owner
        && *owner != caller.owner
        && !caller.admin
    {
        return Err(ApiError::Forbidden(format!(
            "job {id} belongs to {owner}; only its owner or an admin may cancel it"
        )));
    }
    st.api
        .cancel(id.clone())
        .instrument(info_span!("http_cancel_job", job = %id))
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.to_string(), "cancel": "requested" })),
    ))
}

async fn logs(
    State(st): State<JobsState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let rec = st
        .api
        .get(id.clone())
        .instrument(info_span!("http_job_logs", job = %id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such job {id}")))?;
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
