//! Authentication: `Authorization: Bearer <key>` resolved through the ledger's key store
//! ([`tributary_ledger::keys`], keys stored hashed), and scopes per route (`inference`,
//! `build`, `contribute`, `admin`). A missing or unknown key is a 401; a key without the
//! route's scope a 403. The [`Caller`] lands in the request's extensions, so handlers record
//! who made each job, adapter and request, and usage is metered per key.
//!
//! The dashboard's pages call the API in-process as their session's key: the request
//! carries a [`SessionKey`] extension (the key's stored hash; extensions cannot come from a
//! client), resolved through the same key store, revocations and scope checks.
//!
//! [`Auth::open`] (`tributary dev --insecure-no-auth`) lets every request through as an
//! anonymous caller with every scope.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tributary_ledger::keys::{KeyStore, Scope};

use crate::error::ApiError;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's public id; `None` when auth is off.
    pub key_id: Option<String>,
    /// The identity the key speaks for (jobs, adapters and names record it).
    pub owner: String,
    pub admin: bool,
}

/// The key an in-process dashboard request acts as: its stored hash
/// ([`tributary_ledger::keys::KeyRecord::hash`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKey(pub String);

/// The owner recorded when auth is off.
pub const ANONYMOUS: &str = "anonymous";

impl Caller {
    /// The label usage is metered under.
    pub fn metering_key(&self) -> &str {
        self.key_id.as_deref().unwrap_or(ANONYMOUS)
    }

    /// The caller when auth is off.
    pub fn anonymous() -> Self {
        Self {
            key_id: None,
            owner: ANONYMOUS.into(),
            admin: true,
        }
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub struct Auth {
    keys: Option<KeyStore>,
}

impl Auth {
    /// Keys from `keys`.
    pub fn keys(keys: KeyStore) -> Self {
        Self { keys: Some(keys) }
    }

    /// No authentication at all (every caller is anonymous with every scope).
    pub fn open() -> Self {
        Self { keys: None }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_none()
    }

    /// The key store, when auth is on.
    pub fn key_store(&self) -> Option<&KeyStore> {
        self.keys.as_ref()
    }

    /// Checks a request's headers for a key with `scope`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        scope: Scope,
    ) -> Result<Caller, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Caller::anonymous());
        };
        let raw = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "no API key: send `Authorization: Bearer <key>` (`tributary dev` prints its admin key and writes it to <data-dir>/admin.key)".into(),
                )
            })?
            .to_str()
            .map_err(|_| ApiError::Unauthorized("the Authorization header is not ASCII".into()))?;
        let secret = raw
            .strip_prefix("Bearer ")
            .or_else(|| raw.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <key>`".into())
            })?;
        let rec = keys
            .resolve(secret)
            .await
            .map_err(|e| ApiError::Unavailable(format!("key store: {e}")))?
            .ok_or_else(|| ApiError::Unauthorized("the API key is not valid".into()))?;
        scoped(rec, scope)
    }

    /// Checks a dashboard session's key (by its stored hash) for `scope`.
    pub async fn authenticate_session(
        &self,
        key: &SessionKey,
        scope: Scope,
    ) -> Result<Caller, ApiError> {
        let Some(keys) = &self.keys else {
            return Ok(Caller::anonymous());
        };
        let rec = keys
            .resolve_hash(&key.0)
            .await
            .map_err(|e| ApiError::Unavailable(format!("key store: {e}")))?
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the API key this browser session logged in with is no longer valid (revoked): log in again".into(),
                )
            })?;
        scoped(rec, scope)
    }

    /// `router` with every route admitting only callers with `scope` (the [`Caller`] goes
    /// in the request's extensions). Unknown paths stay 404s, not 401s.
    pub fn guard<S: Clone + Send + Sync + 'static>(
        &self,
        router: axum::Router<S>,
        scope: Scope,
    ) -> axum::Router<S> {
        router.route_layer(middleware::from_fn_with_state((self.clone(), scope), check))
    }
}

/// The caller a live key record makes, when it has `scope`.
fn scoped(rec: tributary_ledger::keys::KeyRecord, scope: Scope) -> Result<Caller, ApiError> {
    if !rec.allows(scope) {
        return Err(ApiError::Forbidden(format!(
            "the API key {} lacks the `{scope}` scope this route needs (it has: {})",
            rec.id,
            rec.scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Caller {
        admin: rec.allows(Scope::Admin),
        key_id: Some(rec.id),
        owner: rec.owner,
    })
}

async fn check(
    State((auth, scope)): State<(Auth, Scope)>,
    mut req: Request,
    next: Next,
) -> Response {
    let session = req.extensions().get::<SessionKey>().cloned();
    let caller = match session {
        Some(k) => auth.authenticate_session(&k, scope).await,
        None => auth.authenticate(req.headers(), scope).await,
    };
    match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            crate::openai::metrics::rejected(if e.status().as_u16() == 401 {
                "unauthorized"
            } else {
                "forbidden"
            });
            e.into_response()
        }
    }
}
