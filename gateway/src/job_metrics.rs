//! `GET /v1/jobs/{id}/metrics` (`build` scope): a job's train and eval loss series
//! ([`tributary_coordinator::loss_history`]), read from the object store the job's driver
//! writes them to, with the record's state and step so a page polling it knows when to stop.
//! A job that has not written a point yet answers empty series.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tracing::{Instrument, info_span};
use tributary_coordinator::JobApi;
use tributary_coordinator::loss_history::{self, LossHistory};
use tributary_ledger::keys::Scope;
use tributary_ledger::store::Store;
use tributary_protocol::JobId;

use crate::auth::Auth;
use crate::error::ApiError;

/// What the metrics route needs.
#[derive(Clone)]
pub struct MetricsState {
    pub api: Arc<dyn JobApi>,
    /// The store the jobs' drivers write their histories to.
    pub store: Store,
}

/// The `/v1/jobs/{id}/metrics` route, needing the `build` scope.
pub fn job_metrics_router(state: MetricsState, auth: &Auth) -> Router {
    let r = Router::new().route("/v1/jobs/{id}/metrics", get(metrics));
    auth.guard(r, Scope::Build).with_state(state)
}

/// A job's metrics as JSON (the route's body; the dashboard draws the same value).
pub async fn job_metrics(st: &MetricsState, raw_id: &str) -> Result<Value, ApiError> {
    let id = JobId::new(raw_id).map_err(|e| ApiError::BadRequest {
        field: Some("id".into()),
        message: e.to_string(),
    })?;
    let rec = st
        .api
        .get(id.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such job {id}")))?;
    let h = loss_history::load(&st.store, &id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .unwrap_or_else(|| LossHistory {
            job: id.to_string(),
            ..LossHistory::default()
        });
    Ok(json!({
        "id": id.to_string(),
        "state": rec.state,
        "step": rec.progress.step,
        "total_steps": rec.progress.total_steps,
        "eval_fraction": rec.spec.train.eval_fraction,
        "eval_examples": h.eval_examples,
        "train": h.train,
        "eval": h.eval,
    }))
}

async fn metrics(
    State(st): State<MetricsState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = job_metrics(&st, &id)
        .instrument(info_span!("http_job_metrics", job = %id))
        .await?;
    Ok(Json(v))
}
