//! The attribution read API, over the records and reward receipts online attribution keeps
//! in the store (`tributary_worker::attribution`):
//!
//! | method and path | scope | does |
//! | --- | --- | --- |
//! | `GET /v1/attributions/{request_id}` | `inference` | an answer's attribution record, and its reward once the log acknowledged it (or, when attribution failed on every attempt, `"status": "failed"` with the error) |
//! | `GET /v1/contributors/{id}/rewards` | `contribute` | what an identity was paid, answer by answer |
//! | `GET /v1/adapters/{id}/contributors` | `build` | who made an adapter useful, all time |
//!
//! A record is readable by the API key that asked for the answer and by admins (to others
//! it is a 404, so ids do not leak). A contributor's rewards are readable by that identity
//! and admins. The contributor views read only the receipts they need: the reward actor keeps
//! each receipt also under its contributors and its adapter
//! (`tributary_worker::attribution::receipt_index`). `GET /v1/contributors/{id}/rewards`
//! pages with `?limit=N&after=CURSOR` (`next` in the answer is the cursor of the following
//! page; without `limit` every reward is returned and `total` is the identity's all-time
//! total, else the page's). The reward log itself stays the truth: `tributary ledger verify`
//! and `balances` read it.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tributary_ledger::adapter_names::{AdapterNames, check_name, looks_like_digest};
use tributary_ledger::keys::Scope;
use tributary_ledger::store::Store;
use tributary_worker::attribution::RewardReceipt;
use tributary_worker::attribution::receipt_index::{
    ContributorEntry, adapter_prefix, contributor_prefix, list_entries,
};
use tributary_worker::attribution::record::{
    failed_key, receipt_key, record_key, valid_request_id,
};

use crate::auth::{Auth, Caller};
use crate::error::ApiError;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("attribution store: {e}"))
}

async fn get_json(store: &Store, key: &str) -> Result<Option<Value>, ApiError> {
    let bytes = store
        .get(&object_store::path::Path::from(key))
        .await
        .map_err(unavailable)?;
    bytes
        .map(|b| serde_json::from_slice(&b).map_err(|e| ApiError::Internal(format!("{key}: {e}"))))
        .transpose()
}

/// The attribution routes.
pub fn attribution_router(store: Store, auth: &Auth) -> Router {
    let infer = auth.guard(
        Router::new().route("/v1/attributions/{request_id}", get(attribution)),
        Scope::Inference,
    );
    let contribute = auth.guard(
        Router::new().route("/v1/contributors/{id}/rewards", get(contributor_rewards)),
        Scope::Contribute,
    );
    let build = auth.guard(
        Router::new().route("/v1/adapters/{id}/contributors", get(adapter_contributors)),
        Scope::Build,
    );
    infer.merge(contribute).merge(build).with_state(store)
}

async fn attribution(
    State(store): State<Store>,
    Extension(caller): Extension<Caller>,
    Path(rid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let missing = || ApiError::NotFound {
        field: Some("request_id".into()),
        message: format!(
            "no attribution for request {rid:?} (answers are attributed after they are sent: \
             retry in a few seconds)"
        ),
        code: "not_found",
    };
    if !valid_request_id(&rid) {
        return Err(missing());
    }
    let Some(mut rec) = get_json(&store, &record_key(&rid)).await? else {
        // Attribution failed on every attempt: the error, for the key that asked.
        let mut failed = get_json(&store, &failed_key(&rid))
            .await?
            .ok_or_else(missing)?;
        let requester = failed.get("requester").and_then(|v| v.as_str());
        if !caller.admin && requester != caller.key_id.as_deref() {
            return Err(missing());
        }
        crate::json::set(&mut failed, "status", json!("failed"));
        crate::json::set(&mut failed, "reward", Value::Null);
        return Ok(Json(failed));
    };
    let requester = rec.get("requester").and_then(|v| v.as_str());
    if !caller.admin && requester != caller.key_id.as_deref() {
        return Err(missing());
    }
    let reward = get_json(&store, &receipt_key(&rid))
        .await?
        .unwrap_or(Value::Null);
    crate::json::set(&mut rec, "reward", reward);
    Ok(Json(rec))
}

async fn contributor_rewards(
    State(store): State<Store>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if !caller.admin && caller.owner != id {
        return Err(ApiError::Forbidden(format!(
            "the rewards of {id:?} are readable by that identity and admins; this key speaks for {:?}",
            caller.owner
        )));
    }
    let limit = match q.contains_key("limit") {
        true => Some(crate::datanets::query_usize(
            &q, "limit", MAX_PAGE, MAX_PAGE,
        )?),
        false => None,
    };
    if limit == Some(0) {
        return Err(ApiError::invalid("limit", "limit = 0: at least 1"));
    }
    let after = q.get("after").map(String::as_str);
    if let Some(a) = after
        && !valid_cursor(a)
    {
        return Err(ApiError::invalid(
            "after",
            format!("after = {a:?} is not a cursor from an earlier page's `next`"),
        ));
    }
    let mut entries: Vec<(String, ContributorEntry)> = list_entries(
        &store,
        &contributor_prefix(&id),
        after,
        limit.map(|l| l + 1),
    )
    .await
    .map_err(unavailable)?;
    let more = limit.is_some_and(|l| entries.len() > l);
    if let Some(l) = limit {
        entries.truncate(l);
    }
    let total = entries
        .iter()
        .fold(0u64, |t, (_, e)| t.saturating_add(e.amount));
    let rows: Vec<Value> = entries
        .iter()
        .map(|(_, e)| {
            json!({
                "request_id": e.request_id,
                "adapter": e.adapter,
                "amount": e.amount,
                "as_builder": e.as_builder,
                "time_ms": e.time_ms,
                "seq": e.seq,
            })
        })
        .collect();
    let next = more
        .then(|| entries.last().map(|(name, _)| name.clone()))
        .flatten();
    Ok(Json(
        json!({ "contributor": id, "total": total, "rewards": rows, "next": next }),
    ))
}

/// Rewards per page at most (`?limit=`).
pub const MAX_PAGE: usize = 10_000;

/// A cursor is an entry name (`<13 digits>-<request id>`).
fn valid_cursor(c: &str) -> bool {
    c.split_once('-').is_some_and(|(t, rid)| {
        t.len() == 13 && t.bytes().all(|b| b.is_ascii_digit()) && valid_request_id(rid)
    })
}

async fn adapter_contributors(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let no_such = || ApiError::NotFound {
        field: Some("id".into()),
        message: format!("no adapter named {id:?}"),
        code: "not_found",
    };
    let digest = if looks_like_digest(&id) {
        id.clone()
    } else if check_name(&id).is_err() {
        // No adapter can have a name the registry refuses (as `Catalog::digest_of`); a
        // store error here would be a 503 for what is the caller's typo.
        return Err(no_such());
    } else {
        AdapterNames::new(store.clone())
            .latest(&id)
            .await
            .map_err(unavailable)?
            .map(|p| p.adapter_digest)
            .ok_or_else(no_such)?
    };
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut fees, mut answers) = (0u64, 0u64);
    let mut builder = None;
    let receipts: Vec<(String, RewardReceipt)> =
        list_entries(&store, &adapter_prefix(&digest), None, None)
            .await
            .map_err(unavailable)?;
    for (_, r) in receipts {
        if r.adapter != digest {
            continue;
        }
        answers += 1;
        fees = fees.saturating_add(r.total);
        builder = Some(r.builder.clone());
        for (who, amount) in &r.shares {
            let e = by.entry(who.clone()).or_default();
            e.0 = e.0.saturating_add(*amount);
            e.1 += 1;
        }
    }
    let mut list: Vec<Value> = by
        .into_iter()
        .map(|(who, (amount, n))| {
            json!({
                "contributor": who,
                "amount": amount,
                "answers": n,
                "is_builder": builder.as_deref() == Some(who.as_str()),
            })
        })
        .collect();
    list.sort_by(|a, b| {
        b["amount"]
            .as_u64()
            .cmp(&a["amount"].as_u64())
            .then(a["contributor"].as_str().cmp(&b["contributor"].as_str()))
    });
    Ok(Json(json!({
        "adapter": digest,
        "builder": builder,
        "answers": answers,
        "fees": fees,
        "contributors": list,
    })))
}
