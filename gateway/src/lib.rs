//! The HTTP edge (axum): OpenAI-compatible API, datanet/job/adapter APIs, the
//! adapter-affinity router, admission control, auth, metrics and the web dashboard.
//! No model math here.
//!
//! - [`jobs`]: the job API (`/v1/jobs…`) over [`tributary_coordinator::JobApi`].
//! - [`ops`]: `/healthz`, `/readyz` and `/metrics` for every process.
//! - [`error`]: every API error mapped to an HTTP status and a JSON body in one place.
//! - [`limits`]: body limit, request timeout and in-flight bound, applied by [`serve`].

pub mod error;
pub mod jobs;
pub mod limits;
pub mod ops;

/// The router type the functions above return.
pub use axum::Router;
pub use error::ApiError;
pub use jobs::job_router;
pub use ops::{Readiness, ops_router, serve};
