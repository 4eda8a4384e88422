//! The Rewards and Cluster pages. Rewards: the reward log's verifier result per replica
//! (green, or red with the first bad sequence number), balances per contributor and per
//! adapter and the recent records, from `GET /v1/rewards`. Cluster: what this gateway's
//! status endpoints show — readiness (`/readyz`: the coordinator, workers and store as the
//! process checks them), the served base model (`/v1/models`) and the workers the jobs run
//! on (`/v1/jobs`). Leader and fencing token per coordinator need a cluster status route
//! (planned); `tributary dev` runs one in-process coordinator.

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use maud::html;
use serde_json::Value;

use super::{Dash, api_error, page, session_or_login, short, text};

pub(super) fn routes(r: Router<Dash>) -> Router<Dash> {
    r.route("/rewards", get(rewards))
        .route("/cluster", get(cluster))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h) {
            Ok(s) => s,
            Err(r) => return *r,
        }
    };
}

async fn rewards(State(st): State<Dash>, h: HeaderMap) -> Response {
    let sess = session!(st, h);
    let a = st.api.get(&sess, "/v1/rewards?recent=50").await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let r = a.body;
    let ok = r["ok"].as_bool() == Some(true);
    let balances: Vec<(String, Value)> = r["balances"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let fees: Vec<(String, Value)> = r["adapter_fees"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let recent = r["recent"].as_array().cloned().unwrap_or_default();
    let body = html! {
        section aria-labelledby="v-h" {
            h2 id="v-h" { "Verifier" }
            p { span class={"badge " (if ok { "good" } else { "bad" })} id="verify-result" {
                @if ok { "verified" } @else { "FAULT at seq " (text(&r["first_bad_seq"])) } }
                " · " (text(&r["entries"])) " entries, " (text(&r["records"])) " records" }
            div.scroll { table {
                thead { tr { th scope="col" { "Replica" } th scope="col" { "Valid entries" } th scope="col" { "Objects" } th scope="col" { "Tip" } } }
                tbody { @for rep in r["replicas"].as_array().cloned().unwrap_or_default() { tr {
                    td { (text(&rep["replica"])) } td { (text(&rep["valid_entries"])) } td { (text(&rep["objects"])) } td { code { (short(&rep["tip"])) } }
                } } }
            } }
            @for f in r["faults"].as_array().cloned().unwrap_or_default() {
                p.error { (text(&f["replica"])) " seq " (text(&f["seq"])) ": " (text(&f["kind"])) " — " (text(&f["detail"])) }
            }
        }
        div.panes {
            section aria-labelledby="b-h" {
                h2 id="b-h" { "Balances per contributor" }
                @if balances.is_empty() { p { "No rewards yet." } } @else {
                    table { thead { tr { th scope="col" { "Contributor" } th scope="col" { "Micro-units" } } }
                        tbody { @for (c, v) in &balances { tr { td { (c) } td { (text(v)) } } } } }
                }
            }
            section aria-labelledby="f-h" {
                h2 id="f-h" { "Fees per adapter" }
                @if fees.is_empty() { p { "No fees yet." } } @else {
                    table { thead { tr { th scope="col" { "Adapter" } th scope="col" { "Micro-units" } } }
                        tbody { @for (ad, v) in &fees { tr { td { code { (&ad[..12.min(ad.len())]) } } td { (text(v)) } } } } }
                }
            }
        }
        section aria-labelledby="r-h" {
            h2 id="r-h" { "Recent reward-log records" }
            @if recent.is_empty() { p { "The log is empty." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Seq" } th scope="col" { "Request" } th scope="col" { "Adapter" } th scope="col" { "Fee" } th scope="col" { "Shares" } } }
                    tbody { @for e in &recent { tr id={"req-" (text(&e["request_id"]))} {
                        td { (text(&e["seq"])) } td { code { (text(&e["request_id"])) } } td { code { (short(&e["adapter"])) } }
                        td { (text(&e["total"])) }
                        td { (e["shares"].as_array().map_or(String::new(), |s| s.iter().map(|x| format!("{} {}", text(&x["contributor"]), text(&x["amount"]))).collect::<Vec<_>>().join(", "))) }
                    } } }
                } }
            }
        }
    };
    page(Some(&sess), "Rewards", Some("/v1/rewards"), body)
}

async fn cluster(State(st): State<Dash>, h: HeaderMap) -> Response {
    let sess = session!(st, h);
    let ready = st.api.get(&sess, "/readyz").await;
    let models = st.api.get(&sess, "/v1/models").await;
    let jobs = st.api.get(&sess, "/v1/jobs").await;
    if jobs.status.as_u16() == 401 {
        return api_error(&sess, &jobs);
    }
    let base = models.body["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["base"].is_null()).cloned());
    let mut workers: Vec<(String, String)> = Vec::new();
    for j in jobs.body.as_array().cloned().unwrap_or_default() {
        if j["state"] == "running" {
            for w in j["workers"].as_array().cloned().unwrap_or_default() {
                workers.push((text(&w), text(&j["id"])));
            }
        }
    }
    let body = html! {
        dl.facts {
            dt { "Readiness" } dd { span class={"badge " (if ready.ok() { "good" } else { "bad" })} id="readiness" {
                @if ready.ok() { "ready" } @else { "not ready" } } " " code { (text(&ready.body).trim()) } }
            dt { "Coordinator" } dd { "one, in this process's gateway view; leader and fencing token per coordinator need the cluster status route (planned)" }
            dt { "Base model" } dd { @if let Some(b) = &base { (text(&b["id"])) " · " code { (short(&b["digest"])) } } @else { "not served here" } }
            dt { "Jobs" } dd { @if jobs.ok() { (jobs.body.as_array().map_or(0, Vec::len)) } @else { (jobs.message()) } }
        }
        h2 { "Workers on running jobs" }
        @if workers.is_empty() { p { "None running now." } } @else {
            table { thead { tr { th scope="col" { "Worker" } th scope="col" { "Job" } } }
                tbody { @for (w, j) in &workers { tr { td { (w) } td { a href={"/jobs/" (super::enc(j))} { (j) } } } } } }
        }
    };
    page(Some(&sess), "Cluster", Some("/readyz"), body)
}
