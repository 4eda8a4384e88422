//! The OpenAI-compatible API (TGI router style: validation yields a typed request; one
//! place maps errors to HTTP, [`crate::error`]):
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/chat/completions` | chat with the base model's template; `stream: true` for SSE |
//! | `POST /v1/completions` | continue a text prompt; `stream: true` for SSE |
//! | `GET /v1/models` | the base model and every adapter served here |
//! | `GET /v1/models/{id}` | one of them |
//! | `GET /v1/usage` | requests and tokens per API key (an admin sees every key) |
//!
//! One request's path: admission (a slot, or 429 at once) → the body, bounded (413) →
//! [`validate`] (400 naming the field) → the [`Catalog`] resolves `model` to a digest
//! (404 naming it) → the engine's `submit` → [`respond`] (whole) or [`stream`] (SSE),
//! both shaped by [`answer`]; [`metrics::Tracker`] times it and meters usage per key.
//!
//! - Request bodies as sent are in [`wire`]; `chatcmpl-…` / `cmpl-…` ids in [`ids`].
//! - `/v1/models` and `/v1/usage` are in [`models`].

pub mod answer;
pub mod ids;
pub mod metrics;
pub mod models;
pub mod respond;
pub mod stream;
pub mod validate;
pub mod wire;

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::StreamExt;
use tracing::Instrument;
use tributary_ledger::keys::Scope;
use tributary_protocol::{InferenceEvent, InferenceRequest};

use crate::admission::Admission;
use crate::auth::{Auth, Caller};
use crate::catalog::Catalog;
use crate::error::ApiError;
use validate::{Endpoint, Limits};

/// What the OpenAI routes share.
#[derive(Clone)]
pub struct ServeState {
    pub catalog: Catalog,
    pub admission: Admission,
    pub limits: Limits,
}

/// The OpenAI routes, each needing the `inference` scope.
pub fn openai_router(state: ServeState, auth: &Auth) -> Router {
    let r = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::show))
        .route("/v1/usage", get(models::usage));
    auth.guard(r, Scope::Inference).with_state(state)
}

/// Reads at most `limit` bytes of body (413 beyond).
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid("body", format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            metrics::rejected("too_large");
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

async fn chat(
    State(st): State<ServeState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    serve(st, caller, body, Endpoint::Chat)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(st): State<ServeState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    serve(st, caller, body, Endpoint::Completion)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[allow(clippy::disallowed_methods)] // latency metrics measure real time
async fn serve(
    st: ServeState,
    caller: Caller,
    body: Body,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let slot = st.admission.admit()?;
    let bytes = read_body(body, st.limits.max_body_bytes).await?;
    let info = st.catalog.engine.info();
    let valid = match endpoint {
        Endpoint::Chat => validate::chat(&bytes, &st.limits, info.context_window),
        Endpoint::Completion => validate::completion(&bytes, &st.limits, info.context_window),
    }
    .inspect_err(|_| metrics::rejected("invalid"))?;
    let model = st
        .catalog
        .resolve_model(&valid.model)
        .await
        .inspect_err(|_| metrics::rejected("model"))?;
    let id = ids::request_id(endpoint);
    let span = tracing::info_span!(
        "inference",
        request_id = %id,
        model = %valid.model,
        key = caller.metering_key(),
        user = valid.user.as_deref().unwrap_or(""),
    );
    async move {
        let mut tracker =
            metrics::Tracker::start(metrics::class_of(&model), caller.metering_key(), t0);
        let request = InferenceRequest {
            request_id: id.clone(),
            model,
            prompt: valid.prompt,
            params: valid.params.clone(),
            identity: caller.key_id.clone(),
        };
        let submitted = if valid.stream {
            st.catalog.engine.submit(request).await
        } else {
            st.catalog.engine.submit_whole(request).await
        };
        let mut events = match submitted {
            Ok(ev) => ev,
            Err(e) => {
                tracker.finish(false);
                return Err(e.into());
            }
        };
        // The first event decides the status line: a failure before any text is still an
        // HTTP error.
        let Some(first) = events.recv().await else {
            tracker.finish(false);
            return Err(ApiError::Internal(
                "the engine closed the request without an answer".into(),
            ));
        };
        tracker.on_event(&first);
        if let InferenceEvent::Failed(e) = first {
            tracker.finish(false);
            return Err(e.into());
        }
        let head = answer::Head {
            id,
            created: ids::unix_now(),
            model: valid.model,
            endpoint,
            logprobs: valid.params.logprobs.is_some(),
        };
        let n = valid.params.n;
        if valid.stream {
            Ok(stream::respond(
                head,
                n,
                valid.include_usage,
                first,
                events,
                tracker,
                slot,
            ))
        } else {
            respond::respond(head, n, first, events, tracker, slot).await
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
pub(crate) mod scripted;
#[cfg(test)]
pub(crate) mod tests;
