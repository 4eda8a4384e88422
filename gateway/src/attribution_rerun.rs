//! `POST /v1/attributions/{request_id}/rerun` (`inference` scope, the same readers as the
//! record: the key that asked for the answer, and admins; to others a 404): recomputes the
//! answer's scores, shares and fee split from what is stored — the adapter's attribution
//! index, the datanet version it was trained on, the withdrawals in force, the answer's
//! stored features — and says whether the result is bit-identical to the stored record
//! (a digest of each side per choice, and the first differing field when not). See
//! [`tributary_worker::attribution::rerun`]; no model is needed, so any gateway with the
//! store can do it.
//!
//! A rerun scores the answer against every indexed example (CPU, on a blocking thread):
//! at most [`MAX_RERUNS`] run at once per gateway; beyond that the answer is a 429 with
//! `Retry-After`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tributary_ledger::keys::Scope;
use tributary_ledger::store::Store;
use tributary_worker::attribution::AttrError;
use tributary_worker::attribution::record::{AttributionRecord, record_key, valid_request_id};
use tributary_worker::attribution::rerun::{rerun, rerun_inputs};

use crate::auth::{Auth, Caller};
use crate::error::ApiError;

/// Reruns one gateway computes at once.
pub const MAX_RERUNS: usize = 1;
/// What a refused rerun asks the client to wait.
pub const RERUN_RETRY_AFTER_MS: u64 = 2000;

/// What the rerun route needs.
#[derive(Clone)]
pub struct RerunState {
    pub store: Store,
    pub permits: Arc<Semaphore>,
}

/// The rerun route.
pub fn rerun_router(store: Store, auth: &Auth) -> Router {
    router_with(
        RerunState {
            store,
            permits: Arc::new(Semaphore::new(MAX_RERUNS)),
        },
        auth,
    )
}

fn router_with(state: RerunState, auth: &Auth) -> Router {
    auth.guard(
        Router::new().route("/v1/attributions/{request_id}/rerun", post(rerun_route)),
        Scope::Inference,
    )
    .with_state(state)
}

fn attr_error(e: AttrError) -> ApiError {
    match e {
        AttrError::Store(m) => ApiError::Unavailable(format!("attribution store: {m}")),
        AttrError::Missing(m) => ApiError::Conflict(format!("cannot rerun: {m}")),
        other => ApiError::Internal(format!("rerun: {other}")),
    }
}

async fn rerun_route(
    State(st): State<RerunState>,
    Extension(caller): Extension<Caller>,
    Path(rid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let missing = || ApiError::NotFound {
        field: Some("request_id".into()),
        message: format!(
            "no attribution record for request {rid:?} (answers are attributed a few seconds \
             after they are sent; a failed attribution has nothing to rerun)"
        ),
        code: "not_found",
    };
    // The bound comes first: a busy gateway reads nothing (and says nothing about the id).
    let Ok(permit) = st.permits.clone().try_acquire_owned() else {
        return Err(ApiError::Overloaded {
            retry_after_ms: RERUN_RETRY_AFTER_MS,
            message: format!(
                "{MAX_RERUNS} attribution rerun(s) already running on this gateway; retry in {} s",
                RERUN_RETRY_AFTER_MS / 1000
            ),
        });
    };
    if !valid_request_id(&rid) {
        return Err(missing());
    }
    let bytes = st
        .store
        .get(&object_store::path::Path::from(record_key(&rid)))
        .await
        .map_err(|e| ApiError::Unavailable(format!("attribution store: {e}")))?
        .ok_or_else(missing)?;
    let record: AttributionRecord = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("record {rid}: {e}")))?;
    if !caller.admin && record.requester.as_deref() != caller.key_id.as_deref() {
        return Err(missing());
    }
    #[allow(clippy::disallowed_methods)] // measures how long the rerun took
    let t0 = std::time::Instant::now();
    let inputs = rerun_inputs(&st.store, record).await.map_err(attr_error)?;
    let report = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        rerun(&inputs)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("rerun task: {e}")))?
    .map_err(attr_error)?;
    let mut v = serde_json::to_value(&report).map_err(|e| ApiError::Internal(e.to_string()))?;
    crate::json::set(&mut v, "seconds", json!(t0.elapsed().as_secs_f64()));
    Ok(Json(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, header};
    use tower::ServiceExt;

    async fn post(app: &Router, path: &str) -> (u16, Option<String>) {
        let r = app
            .clone()
            .oneshot(Request::post(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), retry)
    }

    #[tokio::test]
    async fn a_second_rerun_while_one_runs_is_a_429_with_retry_after() {
        let store = Store::open("memory://rerun-bound").unwrap();
        let permits = Arc::new(Semaphore::new(MAX_RERUNS));
        let app = router_with(
            RerunState {
                store,
                permits: permits.clone(),
            },
            &Auth::open(),
        );
        let path = "/v1/attributions/chatcmpl-0123456789abcdef01234567/rerun";
        // Free: the id is looked up (and is not there).
        assert_eq!(post(&app, path).await, (404, None));
        // Every permit taken (reruns in flight): refused at once, told when to retry.
        let held = permits
            .clone()
            .try_acquire_many_owned(MAX_RERUNS as u32)
            .unwrap();
        assert_eq!(post(&app, path).await, (429, Some("2".into())));
        drop(held);
        assert_eq!(post(&app, path).await.0, 404);
    }
}
