//! The whole gateway as one router: the OpenAI API and the adapter API (when an engine is
//! given), the job API (when a coordinator is), the datanet API (over the store), `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json`, the reward log (`/v1/rewards`) and the web dashboard at `/`
//! ([`crate::dashboard`]), behind one [`Auth`], with a JSON 404 for unknown paths. Processes
//! (`tributary dev`, `tributary coordinator --http`) only choose the parts.

use std::sync::Arc;

use axum::Router;
use axum::http::Uri;
use tributary_coordinator::JobApi;
use tributary_ledger::adapter_names::AdapterNames;
use tributary_ledger::datanet::Datanets;
use tributary_ledger::store::Store;
use tributary_protocol::SharedInference;

use crate::adapters::{AdaptersState, adapter_router};
use crate::admission::Admission;
use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::datanets::{DatanetsState, datanet_router};
use crate::error::ApiError;
use crate::jobs::job_router;
use crate::keys_api::keys_router;
use crate::openai::validate::Limits;
use crate::openai::{ServeState, openai_router};
use crate::openapi::{Served, openapi_router};
use crate::ops::{Readiness, ops_router};

/// Serving settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub limits: Limits,
    /// Inference requests in flight at once (429 beyond).
    pub max_in_flight: usize,
    /// What a 429 asks clients to wait.
    pub retry_after_ms: u64,
    /// Largest adapter registration body (uploads carry the weights).
    pub max_adapter_body_bytes: usize,
    /// Largest datanet upload body (JSONL).
    pub max_datanet_upload_bytes: usize,
    /// The served base model (a directory or a `.gguf` file), when this process has it:
    /// `GET /v1/adapters/{id}/gguf` reads its config.
    pub base_model: Option<std::path::PathBuf>,
    /// Local directories an adapter registration by `url` may read (`--allow-path`). The
    /// default reads none: only remote stores (`s3://`).
    pub adapter_url_allow: tributary_worker::AllowPaths,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_in_flight: 256,
            retry_after_ms: 1000,
            max_adapter_body_bytes: 512 << 20,
            max_datanet_upload_bytes: 64 << 20,
            base_model: None,
            adapter_url_allow: tributary_worker::AllowPaths::Only(Vec::new()),
        }
    }
}

/// What to serve.
pub struct Parts {
    pub auth: Auth,
    /// The store holding the adapter registry, names and keys.
    pub store: Store,
    /// Where the reward log that `/v1/rewards` reads lives, when not in `store` (`dev`
    /// keeps it in `<data-dir>/ledger`).
    pub reward_log: Option<Store>,
    /// The inference engine (none: no OpenAI or adapter routes).
    pub engine: Option<SharedInference>,
    pub jobs: Option<Arc<dyn JobApi>>,
    pub ready: Readiness,
    pub config: ServeConfig,
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NotFound {
        field: None,
        message: format!("no route {}: /openapi.json lists the routes", uri.path()),
        code: "no_route",
    }
}

/// The gateway's router.
pub fn app(parts: Parts) -> Router {
    let served = Served {
        inference: parts.engine.is_some(),
        jobs: parts.jobs.is_some(),
        keys: parts.auth.key_store().is_some(),
    };
    let mut r = Router::new().merge(openapi_router(served));
    let mut overload: Option<Admission> = None;
    if let Some(engine) = parts.engine {
        let admission = Admission::new(parts.config.max_in_flight, parts.config.retry_after_ms);
        overload = Some(admission.clone());
        let catalog = Catalog::new(parts.store.clone(), engine);
        r = r
            .merge(openai_router(
                ServeState {
                    catalog: catalog.clone(),
                    admission,
                    limits: parts.config.limits.clone(),
                },
                &parts.auth,
            ))
            .merge(adapter_router(
                AdaptersState {
                    catalog,
                    max_body_bytes: parts.config.max_adapter_body_bytes,
                    base_model: parts.config.base_model.clone(),
                    allow: parts.config.adapter_url_allow.clone(),
                },
                &parts.auth,
            ));
    }
    if let Some(jobs) = parts.jobs {
        r = r.merge(crate::job_metrics::job_metrics_router(
            crate::job_metrics::MetricsState {
                api: jobs.clone(),
                store: parts.store.clone(),
            },
            &parts.auth,
        ));
        r = r.merge(job_router(
            jobs,
            Some(AdapterNames::new(parts.store.clone())),
            Some(parts.store.clone()),
            &parts.auth,
        ));
    }
    r = r.merge(crate::attributions::attribution_router(
        parts.store.clone(),
        &parts.auth,
    ));
    r = r.merge(crate::attribution_rerun::rerun_router(
        parts.store.clone(),
        &parts.auth,
    ));
    r = r.merge(datanet_router(
        DatanetsState {
            datanets: Datanets::new(parts.store.clone()),
            max_upload_bytes: parts.config.max_datanet_upload_bytes,
        },
        &parts.auth,
    ));
    r = r.merge(crate::rewards_api::rewards_router(
        parts
            .reward_log
            .clone()
            .unwrap_or_else(|| parts.store.clone()),
        &parts.auth,
    ));
    if let Some(keys) = parts.auth.key_store() {
        r = r.merge(keys_router(keys.clone(), &parts.auth));
    }
    let inner = parts.ready;
    let ready: Readiness = Arc::new(move || {
        let inner = inner.clone();
        let overload = overload.clone();
        Box::pin(async move {
            if let Some(a) = overload
                && a.in_flight() >= a.limit()
            {
                return Err(format!("overloaded: {} requests in flight", a.in_flight()));
            }
            inner().await
        })
    });
    let api = r.merge(ops_router(ready));
    // The dashboard's pages call the API above in-process (with the session's key).
    let dash = crate::dashboard::dashboard_router(
        api.clone().fallback(no_route),
        &parts.auth,
        parts.store.clone(),
    );
    api.merge(dash).fallback(no_route)
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
