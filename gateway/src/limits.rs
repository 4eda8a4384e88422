//! Load limits every HTTP server applies (through [`crate::serve`]): a body limit (413), a
//! request timeout (503), and a bound on requests in flight (503 at once, never a queue that
//! grows without bound). Every 503 and 429 leaving the server carries `Retry-After`. The
//! timeout covers producing the response head: a streamed body (server-sent events) runs
//! on after it, and its request no longer counts as in flight.
//!
//! Upload routes ([`OWN_LIMIT_ROUTES`]: adapter files, datanet rows) stream their body against
//! their own, larger limits (`max_adapter_body_bytes`, `max_datanet_upload_bytes`); the
//! body limit here would cap a rank-16 adapter (tens of MB) at 2 MiB.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

/// The limits; [`Limits::default`] is what `serve` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to the response head.
    pub request_timeout: Duration,
    /// Requests handled at once; more are refused with 503.
    pub max_in_flight: usize,
    /// Seconds a refused client is told to wait.
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 << 20,
            request_timeout: Duration::from_secs(30),
            max_in_flight: 256,
            retry_after_secs: 1,
        }
    }
}

/// `POST` routes whose handlers read the body themselves, against a limit of their own
/// (larger than [`Limits::max_body_bytes`], and refused with the same 413 past it).
pub const OWN_LIMIT_ROUTES: &[&str] =
    &[crate::adapters::UPLOAD_ROUTE, crate::datanets::UPLOAD_ROUTE];

/// Whether `req` goes to one of [`OWN_LIMIT_ROUTES`] (the route is matched before this
/// middleware runs: it is added with `Router::layer`).
fn has_own_limit(req: &Request) -> bool {
    req.method() == Method::POST
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| OWN_LIMIT_ROUTES.contains(&p.as_str()))
}

/// Requests refused by the limits, by reason (`busy`, `timeout`).
pub static REFUSED: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        let c = prometheus::IntCounterVec::new(
            prometheus::opts!(
                "tributary_http_refused_total",
                "HTTP requests refused by the load limits"
            ),
            &["reason"],
        )
        .unwrap_or_else(|_| unreachable_metric());
        // A second registration (several servers in one test process) is harmless.
        let _ = prometheus::register(Box::new(c.clone()));
        c
    });

#[allow(clippy::panic)]
fn unreachable_metric() -> ! {
    // Only reachable with an invalid metric name or label set, which are constants above.
    panic!("invalid metric definition")
}

#[derive(Clone)]
struct Guard {
    limits: Limits,
    in_flight: Arc<Semaphore>,
}

/// `router` with `limits` in front of every route.
pub fn apply(router: Router, limits: Limits) -> Router {
    let guard = Guard {
        limits,
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
    };
    router
        .layer(middleware::from_fn_with_state(guard, limit))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
}

/// A refusal in the API's one error shape ([`ApiError`]), with `Retry-After` where given.
fn refuse(error: ApiError, retry_after: Option<u64>) -> Response {
    let mut r = error.into_response();
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn limit(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let l = g.limits;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > l.max_body_bytes as u64) && !has_own_limit(&req) {
        return refuse(
            ApiError::PayloadTooLarge {
                limit: l.max_body_bytes,
            },
            None,
        );
    }
    let Ok(_permit) = g.in_flight.clone().try_acquire_owned() else {
        REFUSED.with_label_values(&["busy"]).inc();
        return refuse(
            ApiError::Unavailable(format!(
                "server busy: {} requests in flight; retry after {} s",
                l.max_in_flight, l.retry_after_secs
            )),
            Some(l.retry_after_secs),
        );
    };
    match tokio::time::timeout(l.request_timeout, next.run(req)).await {
        Ok(mut resp) => {
            let st = resp.status();
            if (st == StatusCode::SERVICE_UNAVAILABLE || st == StatusCode::TOO_MANY_REQUESTS)
                && !resp.headers().contains_key(header::RETRY_AFTER)
            {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(l.retry_after_secs));
            }
            resp
        }
        Err(_) => {
            REFUSED.with_label_values(&["timeout"]).inc();
            refuse(
                ApiError::Unavailable(format!(
                    "request timed out after {} s",
                    l.request_timeout.as_secs_f64()
                )),
                Some(l.retry_after_secs),
            )
        }
    }
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
