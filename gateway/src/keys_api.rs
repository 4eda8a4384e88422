//! Key management (every route needs the `admin` scope):
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/keys` | `{"owner", "scopes": ["inference", …]}` → 201 `{"key", "id", …}` (the secret is shown once) |
//! | `GET /v1/keys` | every live key's record (id, owner, scopes; never a secret) |
//! | `DELETE /v1/keys/{id}` | revoke a key |

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tributary_ledger::keys::{KeyStore, Scope};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::openai::ids::unix_ms;

/// The `/v1/keys` routes over `keys`.
pub fn keys_router(keys: KeyStore, auth: &Auth) -> Router {
    let r = Router::new()
        .route("/v1/keys", post(create).get(list))
        .route("/v1/keys/{id}", delete(revoke));
    auth.guard(r, Scope::Admin).with_state(keys)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    owner: String,
    scopes: Vec<String>,
}

fn key_error(e: tributary_ledger::keys::KeyError) -> ApiError {
    match e {
        tributary_ledger::keys::KeyError::Invalid(m) => ApiError::invalid("scopes", m),
        other => ApiError::Unavailable(format!("key store: {other}")),
    }
}

async fn create(
    State(keys): State<KeyStore>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("key request: {e}")))?;
    let scopes = req
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(key_error)?;
    if req.owner.is_empty()
        || req.owner.len() > 128
        || !req
            .owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
    {
        return Err(ApiError::invalid(
            "owner",
            "owner must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
        ));
    }
    let (secret, rec) = keys
        .create(&req.owner, &scopes, unix_ms())
        .await
        .map_err(key_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "key": secret, "id": rec.id, "owner": rec.owner, "scopes": rec.scopes })),
    ))
}

async fn list(State(keys): State<KeyStore>) -> Result<Json<Value>, ApiError> {
    let recs = keys.list().await.map_err(key_error)?;
    let data: Vec<Value> = recs
        .into_iter()
        .map(|r| json!({ "id": r.id, "owner": r.owner, "scopes": r.scopes, "created_unix_ms": r.created_unix_ms }))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn revoke(
    State(keys): State<KeyStore>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !keys.revoke(&id, unix_ms()).await.map_err(key_error)? {
        return Err(ApiError::not_found(format!("no key {id}")));
    }
    Ok(Json(json!({ "id": id, "revoked": true })))
}
