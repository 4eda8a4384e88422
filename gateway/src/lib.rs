//! The HTTP edge (axum): OpenAI-compatible API, datanet/job/adapter APIs, the
//! adapter-affinity router, admission control, auth, metrics and the web dashboard.
//! No model math here.
//!
//! - [`openai`]: `/v1/chat/completions`, `/v1/completions`, `/v1/models` over an
//!   [`tributary_protocol::InferenceService`].
//! - [`adapters`]: the adapter API (`/v1/adapters…`: register, list, show, delete).
//! - [`catalog`]: what `model` can name (base model, adapter names and digests).
//! - [`jobs`]: the job API (`/v1/jobs…`) over [`tributary_coordinator::JobApi`].
//! - [`datanets`] (and [`datanets_govern`]): the datanet API (`/v1/datanets…`: create,
//!   upload with the row-level report, preview, diff, export, takedowns, review, reputation).
//! - [`attributions`]: `/v1/attributions/{request_id}`, `/v1/contributors/{id}/rewards`,
//!   `/v1/adapters/{id}/contributors` (online attribution's records and rewards).
//! - [`attribution_rerun`]: `POST /v1/attributions/{request_id}/rerun`, a record
//!   recomputed from the stored index and features, compared bit for bit.
//! - [`datanet_uploads`]: stored upload reports and their rejected rows.
//! - [`job_metrics`]: `/v1/jobs/{id}/metrics`, a job's train and eval loss series.
//! - [`adapter_files`]: PEFT download of an adapter's files, and the adapter as a llama.cpp
//!   GGUF LoRA adapter.
//! - [`rewards_api`]: `/v1/rewards`, the reward log verified, balances, recent records.
//! - [`dashboard`]: the web pages at `/` (server-rendered, a view of the API above).
//! - [`keys_api`]: `/v1/keys` (admin): create, list, revoke API keys.
//! - [`auth`]: API keys (`Authorization: Bearer`) and scopes per route.
//! - [`routing`]: the cluster routing choice (rendezvous hashing with bounded load), pure.
//! - [`cluster`]: the cluster's workers as one engine (`tributary gateway`): routing by
//!   [`routing`], inference over QUIC, retry of requests not yet streaming;
//!   [`cluster_metrics`] exports residency and per-worker load.
//! - [`admission`]: the bounded number of inference requests in flight.
//! - [`ops`]: `/healthz`, `/readyz` and `/metrics` for every process.
//! - [`app`]: all of the above as one router. [`openapi`]: `/openapi.json`.
//! - [`error`]: every API error mapped to an HTTP status and a JSON body in one place.
//! - [`limits`]: body limit, request timeout and in-flight bound, applied by [`serve`].

pub mod adapter_files;
pub mod adapters;
pub mod admission;
pub mod app;
pub mod attribution_rerun;
pub mod attributions;
pub mod auth;
pub mod catalog;
pub mod cluster;
mod cluster_forward;
pub mod cluster_metrics;
pub mod dashboard;
pub mod datanet_uploads;
pub mod datanets;
pub mod datanets_govern;
pub mod error;
pub mod job_metrics;
pub mod jobs;
mod json;
pub mod keys_api;
pub mod limits;
pub mod openai;
pub mod openapi;
pub mod ops;
pub mod rewards_api;
pub mod routing;

pub use app::{Parts, ServeConfig, app};
pub use auth::{Auth, Caller};
/// The router type the functions above return.
pub use axum::Router;
pub use error::ApiError;
pub use jobs::job_router;
pub use ops::{Readiness, ops_router, serve};
