//! Upload reports kept for later: every upload's row-level report is written to the store
//! under `datanet-uploads/<datanet>/<upload id>.json` (the id sorts by time:
//! `u<unix ms>-<upload digest prefix>`), so a page can show an upload's rejected rows after
//! the fact. Routes (merged into [`crate::datanets::datanet_router`], `contribute` scope):
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /v1/datanets/{name}/uploads` | the datanet's uploads, newest first (id, uploader, counts) |
//! | `GET /v1/datanets/{name}/uploads/{id}` | one upload's whole report |
//! | `GET /v1/datanets/{name}/uploads/{id}/rejected` | its rejected rows: line, field, reason |
//!
//! A contributor sees their own uploads; the datanet's owner and admins see every one.
// Indexing here is on `serde_json::Value`s: a read returns `Null` for a missing key and
// never panics; writes go to objects built here with `json!` or `to_json`.
#![allow(clippy::indexing_slicing)]

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use object_store::path::Path as Key;
use serde_json::{Value, json};
use tributary_ledger::datanet::{Actor, Datanets, UploadReport};

use crate::auth::Caller;
use crate::datanets::{DatanetsState, SafeJson, actor, to_json};
use crate::error::ApiError;

/// Most uploads the list returns.
pub const MAX_LISTED: usize = 500;

fn prefix(name: &str) -> String {
    format!("datanet-uploads/{name}")
}

fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.starts_with('u')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Stores `report` and returns its upload id.
pub async fn record(d: &Datanets, report: &UploadReport, now_ms: u64) -> Result<String, ApiError> {
    let digest: String = report
        .upload_digest
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    let id = format!("u{now_ms:013}-{digest}");
    let mut v = to_json(report)?;
    v["upload_id"] = json!(id);
    v["uploaded_at_ms"] = json!(now_ms);
    let key = Key::from(format!("{}/{id}.json", prefix(&report.datanet)));
    d.store()
        .put(&key, Bytes::from(v.to_string()))
        .await
        .map_err(|e| ApiError::Unavailable(format!("store: {e}")))?;
    Ok(id)
}

async fn load(d: &Datanets, name: &str, id: &str) -> Result<Value, ApiError> {
    let missing = || ApiError::not_found(format!("datanet {name} has no upload {id}"));
    if !valid_id(id) {
        return Err(missing());
    }
    let key = Key::from(format!("{}/{id}.json", prefix(name)));
    let bytes = d
        .store()
        .get(&key)
        .await
        .map_err(|e| ApiError::Unavailable(format!("store: {e}")))?
        .ok_or_else(missing)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(format!("{key}: {e}")))
}

/// Whether `caller` may read an upload by `uploader` to datanet `name`.
async fn may_read(
    d: &Datanets,
    name: &str,
    caller: &Caller,
    uploader: Option<&str>,
) -> Result<bool, ApiError> {
    Ok(match actor(caller) {
        Actor::Admin => true,
        Actor::Contributor(c) => {
            uploader == Some(c.as_str()) || d.owner(name).await?.as_deref() == Some(c.as_str())
        }
    })
}

/// Adds the upload-report routes to `r`.
pub(crate) fn routes(r: Router<DatanetsState>) -> Router<DatanetsState> {
    r.route("/v1/datanets/{name}/uploads", get(list))
        .route("/v1/datanets/{name}/uploads/{id}", get(show))
        .route("/v1/datanets/{name}/uploads/{id}/rejected", get(rejected))
}

/// The uploads of `name` `caller` may read, newest first, as summaries.
pub async fn summaries(d: &Datanets, name: &str, caller: &Caller) -> Result<Vec<Value>, ApiError> {
    d.owner(name).await?;
    let mut ids = d
        .store()
        .list_names(&Key::from(prefix(name)))
        .await
        .map_err(|e| ApiError::Unavailable(format!("store: {e}")))?;
    ids.sort();
    ids.reverse();
    let mut out = Vec::new();
    for file in ids.iter().take(MAX_LISTED) {
        let Some(id) = file.strip_suffix(".json") else {
            continue;
        };
        let r = load(d, name, id).await?;
        if !may_read(d, name, caller, r["uploader"].as_str()).await? {
            continue;
        }
        out.push(json!({
            "upload_id": id,
            "uploaded_at_ms": r["uploaded_at_ms"],
            "uploader": r["uploader"],
            "version": r["version"],
            "number": r["number"],
            "rows": r["rows"],
            "accepted": r["accepted"],
            "duplicates": r["duplicates"],
            "near_duplicates": r["near_duplicates"],
            "rejected": r["rejected"].as_array().map_or(0, Vec::len),
            "published": r["published"],
        }));
    }
    Ok(out)
}

async fn list(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SafeJson, ApiError> {
    let data = summaries(&st.datanets, &name, &caller).await?;
    Ok(SafeJson(json!({ "object": "list", "data": data })))
}

/// One upload's report, if `caller` may read it.
pub async fn report(
    d: &Datanets,
    name: &str,
    id: &str,
    caller: &Caller,
) -> Result<Value, ApiError> {
    let r = load(d, name, id).await?;
    if !may_read(d, name, caller, r["uploader"].as_str()).await? {
        return Err(ApiError::Forbidden(format!(
            "upload {id} is another contributor's; its uploader, the datanet's owner and admins may read it"
        )));
    }
    Ok(r)
}

async fn show(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
) -> Result<SafeJson, ApiError> {
    Ok(SafeJson(report(&st.datanets, &name, &id, &caller).await?))
}

async fn rejected(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, String)>,
) -> Result<SafeJson, ApiError> {
    let r = report(&st.datanets, &name, &id, &caller).await?;
    Ok(SafeJson(json!({
        "object": "list",
        "datanet": name,
        "upload_id": id,
        "rows": r["rows"],
        "data": r["rejected"],
    })))
}
