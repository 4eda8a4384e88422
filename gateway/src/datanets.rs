//! The datanet API, over [`tributary_ledger::datanet::Datanets`] in the gateway's store (the
//! same calls the `tributary datanet` CLI makes):
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/datanets` | create `{name, description?, license?, license_text?, terms?, policy?, review?, owner?}`; 201 |
//! | `GET /v1/datanets` | every datanet (name, description, versions, head) |
//! | `GET /v1/datanets/{name}` | one datanet: owner, terms in force (licence, text, policy, review), versions |
//! | `GET /v1/datanets/{name}/versions/{v}/examples?offset&limit` | a page of a version's credited examples (`v`: digest, prefix, number or `latest`) |
//! | `GET /v1/datanets/{name}/versions/{v}/export` | the version as JSONL (as `datanet export`) |
//! | `GET /v1/datanets/{name}/diff?from&to` | entries added and removed between two versions |
//! | `POST /v1/datanets/{name}/uploads` | a JSONL body; the row-level report (accepted, duplicates, near-duplicates, rejected rows with line/field/reason, scanner findings without the matched text, rows sent to review) |
//!
//! Governance routes (takedowns, review, reputation) are in [`crate::datanets_govern`];
//! every upload's report is stored and served again by [`crate::datanet_uploads`] (the
//! upload answer carries its `upload_id`).
//!
//! Every route needs the `contribute` scope ([`crate::auth`]). The caller acts as
//! [`Actor::Admin`] with the `admin` scope and as [`Actor::Contributor`] (the key's owner)
//! otherwise; uploads are recorded under the key's owner, with the key's id as consent.
//! What a contributor wrote comes back inside JSON strings with `<`, `>` and `&` escaped
//! ([`SafeJson`]), never as markup. Errors go through [`crate::error`].

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{Instrument, info_span};
use tributary_ledger::datanet::ingest::parse_upload;
use tributary_ledger::datanet::license::{License, TermsChange};
use tributary_ledger::datanet::scan::Policy;
use tributary_ledger::datanet::{Actor, Datanets, Uploader};
use tributary_ledger::keys::Scope;

use crate::auth::{Auth, Caller};
use crate::error::ApiError;
use crate::openai::read_body;

/// Most examples one preview page returns.
pub const MAX_PAGE: usize = 200;
/// Examples a preview page returns when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;
/// Largest create body.
pub const MAX_CREATE_BYTES: usize = 1 << 20;

/// What the datanet routes share.
#[derive(Clone)]
pub struct DatanetsState {
    pub datanets: Datanets,
    /// Largest upload body (JSONL) accepted: 413 beyond.
    pub max_upload_bytes: usize,
}

/// The datanet upload route: its handler reads the body against its own limit
/// ([`crate::limits::OWN_LIMIT_ROUTES`]).
pub const UPLOAD_ROUTE: &str = "/v1/datanets/{name}/uploads";

/// The `/v1/datanets` routes, each needing the `contribute` scope.
pub fn datanet_router(state: DatanetsState, auth: &Auth) -> Router {
    let r = Router::new()
        .route("/v1/datanets", post(create).get(list))
        .route("/v1/datanets/{name}", get(show))
        .route("/v1/datanets/{name}/versions/{v}/examples", get(examples))
        .route("/v1/datanets/{name}/versions/{v}/export", get(export))
        .route("/v1/datanets/{name}/diff", get(diff))
        .route(UPLOAD_ROUTE, post(upload));
    let r = crate::datanets_govern::routes(r);
    let r = crate::datanet_uploads::routes(r);
    auth.guard(r, Scope::Contribute).with_state(state)
}

/// The identity a caller acts as.
pub fn actor(caller: &Caller) -> Actor {
    if caller.admin {
        Actor::Admin
    } else {
        Actor::Contributor(caller.owner.clone())
    }
}

/// JSON with `<`, `>` and `&` written as `\u003c`, `\u003e` and `\u0026` (the same value to
/// a JSON parser), so contributor text never reads as markup even if a page or a browser
/// treats the body as HTML.
pub struct SafeJson(pub Value);

/// `text` (JSON) with the markup characters escaped; they only occur inside strings there.
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

impl IntoResponse for SafeJson {
    fn into_response(self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            escape_markup(&self.0.to_string()),
        )
            .into_response()
    }
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

/// A body parsed as JSON of type `T`, or a 400 naming the body.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        let msg = e.to_string();
        ApiError::BadRequest {
            field: crate::error::field_of(&msg).or_else(|| Some("body".into())),
            message: format!("{what}: {msg}"),
        }
    })
}

/// A non-negative integer query parameter, or a 400 naming it.
pub(crate) fn query_usize(
    q: &BTreeMap<String, String>,
    field: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(raw) = q.get(field) else {
        return Ok(default);
    };
    let n: usize = raw.parse().map_err(|_| {
        ApiError::invalid(
            field,
            format!("{field} = {raw:?} is not a non-negative integer"),
        )
    })?;
    if n > max {
        return Err(ApiError::invalid(
            field,
            format!("{field} = {n} is over the limit of {max}"),
        ));
    }
    Ok(n)
}

/// A create body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDatanet {
    name: String,
    #[serde(default)]
    description: String,
    /// An SPDX identifier.
    #[serde(default)]
    license: Option<String>,
    /// A custom licence text (instead of `license`).
    #[serde(default)]
    license_text: Option<String>,
    /// Contribution terms text.
    #[serde(default)]
    terms: Option<String>,
    /// Scanner policy, e.g. `email=reject,phone=redact`.
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    review: Option<bool>,
    /// The owning contributor (admins only; a contributor owns what they create).
    #[serde(default)]
    owner: Option<String>,
}

async fn create(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<(StatusCode, SafeJson), ApiError> {
    let req: NewDatanet = json_body(body, MAX_CREATE_BYTES, "datanet").await?;
    let license = match (&req.license, &req.license_text) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "license",
                "give license (an SPDX id) or license_text, not both",
            ));
        }
        (Some(id), None) => Some(License::spdx(id).map_err(|e| field("license", e))?),
        (None, Some(text)) => Some(License::custom(text).map_err(|e| field("license_text", e))?),
        (None, None) => None,
    };
    let policy = match &req.policy {
        Some(s) => Some(
            Policy::parse(s).map_err(|m| ApiError::invalid("policy", format!("policy: {m}")))?,
        ),
        None => None,
    };
    let owner = match (actor(&caller), req.owner) {
        (Actor::Admin, o) => o,
        (Actor::Contributor(c), Some(o)) if o != c => {
            return Err(ApiError::Forbidden(format!(
                "owner: `{c}` may not create a datanet owned by `{o}` (only an admin may name another owner)"
            )));
        }
        (Actor::Contributor(c), _) => Some(c),
    };
    let change = TermsChange {
        license,
        terms_text: req.terms.map(Some),
        policy,
        review: req.review,
    };
    st.datanets
        .create_governed(&req.name, &req.description, owner.as_deref(), change)
        .instrument(info_span!("http_create_datanet", datanet = %req.name))
        .await?;
    tracing::info!(datanet = %req.name, by = %caller.owner, "datanet created");
    let shown = describe(&st.datanets, &req.name).await?;
    Ok((StatusCode::CREATED, SafeJson(shown)))
}

/// A library error as a 400 naming `name` (for errors whose field the library does not say).
fn field(name: &str, e: tributary_ledger::datanet::DatanetError) -> ApiError {
    ApiError::invalid(name, e.to_string())
}

async fn list(State(st): State<DatanetsState>) -> Result<SafeJson, ApiError> {
    let all = st
        .datanets
        .list()
        .instrument(info_span!("http_list_datanets"))
        .await?;
    Ok(SafeJson(
        json!({ "object": "list", "data": to_json(&all)? }),
    ))
}

/// One datanet: summary, owner, terms in force and versions.
async fn describe(d: &Datanets, name: &str) -> Result<Value, ApiError> {
    let owner = d.owner(name).await?;
    let summary = d.list().await?.into_iter().find(|s| s.name == name);
    let terms = d.terms(name).await?;
    let versions = d.versions(name).await?;
    let takedowns = d.takedown_count(name).await?;
    Ok(json!({
        "name": name,
        "description": summary.as_ref().map(|s| s.description.clone()),
        "head": summary.and_then(|s| s.head),
        "owner": owner,
        "license": terms.as_ref().map(|(t, _)| t.license.label()),
        "terms": terms.as_ref().map(|(t, _)| t),
        "terms_digest": terms.as_ref().map(|(_, d)| d),
        "versions": to_json(&versions)?,
        "takedowns": takedowns,
    }))
}

async fn show(
    State(st): State<DatanetsState>,
    Path(name): Path<String>,
) -> Result<SafeJson, ApiError> {
    let v = describe(&st.datanets, &name)
        .instrument(info_span!("http_show_datanet", datanet = %name))
        .await?;
    Ok(SafeJson(v))
}

/// `latest` means the head.
fn version_arg(v: &str) -> Option<&str> {
    (v != "latest").then_some(v)
}

async fn export_lines(d: &Datanets, name: &str, v: &str) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    d.export(name, version_arg(v), false, &mut out).await?;
    Ok(out)
}

async fn examples(
    State(st): State<DatanetsState>,
    Path((name, v)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<SafeJson, ApiError> {
    let offset = query_usize(&q, "offset", 0, usize::MAX)?;
    let limit = query_usize(&q, "limit", DEFAULT_PAGE, MAX_PAGE)?;
    let digest = st.datanets.resolve_version(&name, version_arg(&v)).await?;
    let out = export_lines(&st.datanets, &name, &digest)
        .instrument(info_span!("http_datanet_examples", datanet = %name))
        .await?;
    let lines: Vec<&[u8]> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let page = lines
        .iter()
        .skip(offset)
        .take(limit)
        .map(|l| serde_json::from_slice::<Value>(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Internal(format!("export line: {e}")))?;
    Ok(SafeJson(json!({
        "datanet": name,
        "version": digest,
        "offset": offset,
        "limit": limit,
        "total": lines.len(),
        "data": page,
    })))
}

async fn export(
    State(st): State<DatanetsState>,
    Path((name, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let out = export_lines(&st.datanets, &name, &v)
        .instrument(info_span!("http_datanet_export", datanet = %name))
        .await?;
    let text = String::from_utf8_lossy(&out);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        escape_markup(&text),
    )
        .into_response())
}

async fn diff(
    State(st): State<DatanetsState>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<SafeJson, ApiError> {
    let from = q
        .get("from")
        .ok_or_else(|| ApiError::invalid("from", "from: the version to compare from is missing"))?;
    let to = q
        .get("to")
        .ok_or_else(|| ApiError::invalid("to", "to: the version to compare to is missing"))?;
    let d = st
        .datanets
        .diff(&name, from, to)
        .instrument(info_span!("http_datanet_diff", datanet = %name))
        .await?;
    Ok(SafeJson(to_json(&d)?))
}

#[allow(clippy::disallowed_methods)] // reads the wall clock for timestamps
async fn upload(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, SafeJson), ApiError> {
    async move {
        // Unknown datanets are named before the body is read.
        st.datanets.owner(&name).await?;
        let bytes = read_body(body, st.max_upload_bytes).await?;
        let parsed = parse_upload(&bytes[..], &st.datanets.limits)?;
        let uploader = Uploader::Authenticated {
            contributor: caller.owner.clone(),
            key_id: caller.metering_key().to_string(),
        };
        let report = st.datanets.publish(&name, parsed, &uploader, None).await?;
        tracing::info!(
            datanet = %name,
            by = %caller.owner,
            accepted = report.accepted,
            rejected = report.rejected.len(),
            "datanet upload"
        );
        let status = if report.published {
            StatusCode::CREATED
        } else {
            StatusCode::ACCEPTED
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = crate::datanet_uploads::record(&st.datanets, &report, now_ms).await?;
        let mut body = to_json(&report)?;
        crate::json::set(&mut body, "upload_id", json!(id));
        Ok((status, SafeJson(body)))
    }
    .instrument(info_span!("http_datanet_upload"))
    .await
}
