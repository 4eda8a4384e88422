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
//! and admins. The contributor views read every receipt (a scan: fine for `dev`, an
//! aggregated view is planned for large logs). The reward log itself stays the truth:
//! `tributary ledger verify` and `balances` read it.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use tributary_ledger::adapter_names::{AdapterNames, check_name, looks_like_digest};
use tributary_ledger::keys::Scope;
use tributary_ledger::store::Store;
use tributary_worker::attribution::RewardReceipt;
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

async fn receipts(store: &Store) -> Result<Vec<RewardReceipt>, ApiError> {
    let names = store
        .list_names(&object_store::path::Path::from("attribution/rewards"))
        .await
        .map_err(unavailable)?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let Some(rid) = n.strip_suffix(".json") else {
            continue;
        };
        if let Some(v) = get_json(store, &receipt_key(rid)).await?
            && let Ok(r) = serde_json::from_value::<RewardReceipt>(v)
        {
            out.push(r);
        }
    }
    out.sort_by(|a, b| {
        a.time_ms
            .cmp(&b.time_ms)
            .then(a.request_id.cmp(&b.request_id))
    });
    Ok(out)
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
) -> Result<Json<Value>, ApiError> {
    if !caller.admin && caller.owner != id {
        return Err(ApiError::Forbidden(format!(
            "the rewards of {id:?} are readable by that identity and admins; this key speaks for {:?}",
            caller.owner
        )));
    }
    let mut total = 0u64;
    let mut rows = Vec::new();
    for r in receipts(&store).await? {
        if let Some(&amount) = r.shares.get(&id) {
            total = total.saturating_add(amount);
            rows.push(json!({
                "request_id": r.request_id,
                "adapter": r.adapter,
                "amount": amount,
                "as_builder": r.builder == id,
                "time_ms": r.time_ms,
                "seq": r.seq,
            }));
        }
    }
    Ok(Json(
        json!({ "contributor": id, "total": total, "rewards": rows }),
    ))
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
    for r in receipts(&store).await? {
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
