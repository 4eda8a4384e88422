//! The datanet governance routes (merged into [`crate::datanets::datanet_router`], same
//! `contribute` scope):
//!
//! | method and path | does |
//! | --- | --- |
//! | `POST /v1/datanets/{name}/takedowns` | `{examples: [id…]}` or `{contributor}`, and `reason`: withdraw and erase. A contributor may take down their own examples; an admin anyone's (someone else's example is a 403 naming it) |
//! | `GET /v1/datanets/{name}/takedowns` | the append-only takedown log, each entry with its digest |
//! | `GET /v1/datanets/{name}/pending` | the review queue: the owner and admins see every row, a contributor their own |
//! | `POST /v1/datanets/{name}/pending/{item}` | `{decision: "accept" \| "reject", reason}` (owner or admin) |
//! | `GET /v1/datanets/{name}/reputation?limit&contributor` | the leaderboard, or one contributor's standing |

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::{Instrument, info_span};
use tributary_ledger::datanet::Scope as TakedownScope;

use crate::auth::Caller;
use crate::datanets::{DatanetsState, SafeJson, actor, json_body, query_usize, to_json};
use crate::error::ApiError;

/// Largest takedown or review body.
const MAX_BODY: usize = 1 << 20;
/// Most leaderboard entries one call returns.
pub const MAX_LEADERBOARD: usize = 1000;

/// Adds the governance routes to `r`.
pub(crate) fn routes(r: Router<DatanetsState>) -> Router<DatanetsState> {
    r.route(
        "/v1/datanets/{name}/takedowns",
        post(takedown).get(takedowns),
    )
    .route("/v1/datanets/{name}/pending", get(pending))
    .route("/v1/datanets/{name}/pending/{item}", post(decide))
    .route("/v1/datanets/{name}/reputation", get(reputation))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TakedownRequest {
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    contributor: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn takedown(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Body,
) -> Result<SafeJson, ApiError> {
    let req: TakedownRequest = json_body(body, MAX_BODY, "takedown").await?;
    let scope = match (req.contributor, req.examples.is_empty()) {
        (Some(c), true) => TakedownScope::Contributor(c),
        (None, false) => TakedownScope::Examples(req.examples),
        _ => {
            return Err(ApiError::invalid(
                "examples",
                "give examples (a list of example ids) or contributor, not both or neither",
            ));
        }
    };
    if req.reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "reason: a takedown needs a reason",
        ));
    }
    let report = st
        .datanets
        .takedown(&name, &actor(&caller), &scope, &req.reason)
        .instrument(info_span!("http_datanet_takedown", datanet = %name))
        .await?;
    tracing::info!(datanet = %name, by = %caller.owner, withdrawn = report.withdrawn.len(), "takedown");
    Ok(SafeJson(to_json(&report)?))
}

async fn takedowns(
    State(st): State<DatanetsState>,
    Path(name): Path<String>,
) -> Result<SafeJson, ApiError> {
    let log = st
        .datanets
        .takedown_log(&name)
        .instrument(info_span!("http_datanet_takedowns", datanet = %name))
        .await?;
    let data = log
        .iter()
        .map(|(e, d)| Ok(json!({ "entry": to_json(e)?, "digest": d })))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(SafeJson(json!({ "object": "list", "data": data })))
}

async fn pending(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<SafeJson, ApiError> {
    let items = st
        .datanets
        .pending(&name, &actor(&caller))
        .instrument(info_span!("http_datanet_pending", datanet = %name))
        .await?;
    Ok(SafeJson(
        json!({ "object": "list", "data": to_json(&items)? }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    decision: String,
    #[serde(default)]
    reason: String,
}

async fn decide(
    State(st): State<DatanetsState>,
    Extension(caller): Extension<Caller>,
    Path((name, item)): Path<(String, String)>,
    body: Body,
) -> Result<SafeJson, ApiError> {
    let req: Decision = json_body(body, MAX_BODY, "decision").await?;
    let accept = match req.decision.as_str() {
        "accept" => true,
        "reject" => false,
        other => {
            return Err(ApiError::invalid(
                "decision",
                format!("decision = {other:?}: must be \"accept\" or \"reject\""),
            ));
        }
    };
    if !accept && req.reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "reason",
            "reason: rejecting a row needs a reason",
        ));
    }
    let report = st
        .datanets
        .review(&name, &actor(&caller), &[item], accept, &req.reason)
        .instrument(info_span!("http_datanet_review", datanet = %name))
        .await?;
    Ok(SafeJson(to_json(&report)?))
}

async fn reputation(
    State(st): State<DatanetsState>,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<SafeJson, ApiError> {
    let limit = query_usize(&q, "limit", 100, MAX_LEADERBOARD)?;
    if let Some(c) = q.get("contributor") {
        st.datanets.owner(&name).await?;
        let r = st.datanets.reputation(&name, c).await?;
        return Ok(SafeJson(to_json(&r)?));
    }
    st.datanets.owner(&name).await?;
    let board = st
        .datanets
        .leaderboard(&name, limit)
        .instrument(info_span!("http_datanet_leaderboard", datanet = %name))
        .await?;
    Ok(SafeJson(
        json!({ "object": "list", "data": to_json(&board)? }),
    ))
}
