//! `GET /v1/rewards?recent=N` (`contribute` scope): the reward log kept in the gateway's
//! store (`rewards/<seq>`, the layout of [`tributary_ledger::rewards`]; `tributary ledger …
//! --replicas <that store>` writes there), verified on every call: the verifier's result per
//! replica (ok, first bad sequence number, faults), balances per contributor (from the
//! verifier) and per adapter (fees summed over the agreed chain), and the `N` most recent
//! records (default 20, at most [`MAX_RECENT`]). An empty log verifies with no entries.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tracing::{Instrument, info_span};
use tributary_ledger::keys::Scope;
use tributary_ledger::rewards::entry::entry_key;
use tributary_ledger::rewards::{Replicas, RewardEntry, verify};
use tributary_ledger::store::Store;

use crate::auth::Auth;
use crate::datanets::query_usize;
use crate::error::ApiError;

/// Most recent records one call returns.
pub const MAX_RECENT: usize = 500;

/// The `/v1/rewards` route over the reward log in `store`.
pub fn rewards_router(store: Store, auth: &Auth) -> Router {
    let r = Router::new().route("/v1/rewards", get(rewards));
    auth.guard(r, Scope::Contribute).with_state(store)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn rewards(
    State(store): State<Store>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let recent = query_usize(&q, "recent", 20, MAX_RECENT)?;
    async move {
        let replicas = Replicas::new(vec![store.clone()])
            .map_err(|e| ApiError::Unavailable(format!("reward log: {e}")))?;
        let report = verify(&replicas)
            .await
            .map_err(|e| ApiError::Unavailable(format!("reward log: {e}")))?;
        let mut per_adapter: BTreeMap<String, u64> = BTreeMap::new();
        let mut records = Vec::new();
        for seq in (0..report.entries).rev() {
            let Some(bytes) = store
                .get(&entry_key(seq))
                .await
                .map_err(|e| ApiError::Unavailable(format!("reward log: {e}")))?
            else {
                continue;
            };
            let Ok(entry) = RewardEntry::decode(&bytes) else {
                continue;
            };
            for r in entry.batch.iter().rev() {
                *per_adapter.entry(hex(&r.adapter)).or_default() += r.total;
                if records.len() < recent {
                    records.push(json!({
                        "seq": seq,
                        "request_id": r.request_id,
                        "adapter": hex(&r.adapter),
                        "attribution": hex(&r.attribution),
                        "time_ms": r.time_ms,
                        "total": r.total,
                        "shares": r.shares.iter().map(|s| json!({"contributor": s.contributor, "amount": s.amount})).collect::<Vec<_>>(),
                    }));
                }
            }
        }
        Ok(Json(json!({
            "ok": report.ok,
            "first_bad_seq": report.first_bad_seq,
            "entries": report.entries,
            "records": report.records,
            "replicas": report.replicas,
            "faults": report.faults,
            "balances": report.balances,
            "adapter_fees": per_adapter,
            "recent": records,
        })))
    }
    .instrument(info_span!("http_rewards"))
    .await
}
