//! The Rewards and Cluster pages. Rewards: the reward log's verifier result per replica
//! (green, or red with the first bad sequence number), balances per contributor and per
//! adapter and the recent records, from `GET /v1/rewards`. Cluster: readiness (`/readyz`),
//! the served base model (`/v1/models`), and from `GET /v1/cluster` the coordinators (who
//! leads, fencing tokens) and the workers (device, slots, heartbeat age, serving load and
//! resident adapters), with the running job each works on (`/v1/jobs`), then etcd's members
//! and health and whether the gateway's object store answers.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde_json::Value;

use super::{Dash, api_error, page, session_or_login, short, text};

pub(super) fn routes(r: Router<Dash>) -> Router<Dash> {
    r.route("/rewards", get(rewards))
        .route("/cluster", get(cluster))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h).await {
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
    let view = st.api.get(&sess, "/v1/cluster").await;
    let base = models.body["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["base"].is_null()).cloned());
    // Which running job each worker is on.
    let mut on_job: BTreeMap<String, String> = BTreeMap::new();
    for j in jobs.body.as_array().cloned().unwrap_or_default() {
        if j["state"] == "running" {
            for w in j["workers"].as_array().cloned().unwrap_or_default() {
                on_job.insert(text(&w), text(&j["id"]));
            }
        }
    }
    let coordinators = view.body["coordinators"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let workers = view.body["workers"].as_array().cloned().unwrap_or_default();
    let age = |v: &Value| {
        v.as_i64()
            .map_or("— (in process)".into(), |s| format!("{s} s"))
    };
    let body = html! {
        dl.facts {
            dt { "Readiness" } dd { span class={"badge " (if ready.ok() { "good" } else { "bad" })} id="readiness" {
                @if ready.ok() { "ready" } @else { "not ready" } } " " code { (text(&ready.body).trim()) } }
            dt { "Mode" } dd { (text(&view.body["mode"])) }
            dt { "Base model" } dd { @if let Some(b) = &base { (text(&b["id"])) " · " code { (short(&b["digest"])) } } @else { "not served here" } }
            dt { "Jobs" } dd { @if jobs.ok() { (jobs.body.as_array().map_or(0, Vec::len)) } @else { (jobs.message()) } }
        }
        @if !view.ok() { p.error { "Cluster view: " (view.message()) } }
        section aria-labelledby="c-h" {
            h2 id="c-h" { "Coordinators" }
            table id="coordinators" { thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Fencing token" } } }
                tbody { @for c in &coordinators { tr {
                    td { (text(&c["name"])) }
                    td { @if c["leader"] == true { strong { "leader" } } @else { "standby" } }
                    // A standby's token is its campaign's revision: the token it will
                    // write under once it leads (always above the current leader's).
                    td { @if c["leader"] == true { (text(&c["fencing_token"])) }
                         @else { (text(&c["fencing_token"])) " once it leads" } }
                } } } }
        }
        section aria-labelledby="w-h" {
            h2 id="w-h" { "Workers" }
            @if workers.is_empty() { p { "No worker in membership." } } @else {
                div.scroll { table id="workers" {
                    thead { tr { th scope="col" { "Worker" } th scope="col" { "Device" } th scope="col" { "Cores" } th scope="col" { "Slots free" }
                        th scope="col" { "Heartbeat age" } th scope="col" { "Serving: in flight / queued" } th scope="col" { "Resident adapters" } th scope="col" { "Job" } } }
                    tbody { @for w in &workers {
                        @let node = text(&w["node"]);
                        @let serving = &w["serving"];
                        tr {
                            td { (node) } td { (text(&w["device"])) } td { (text(&w["cores"])) }
                            td { (text(&w["free_slots"])) " / " (text(&w["slots"])) }
                            td { (age(&w["heartbeat_age_secs"])) }
                            td { @if serving.is_null() { "—" } @else { (text(&serving["in_flight"])) " / " (text(&serving["queue_depth"])) } }
                            td { @if serving.is_null() { "—" } @else { (serving["resident"].as_array().map_or(0, Vec::len)) } }
                            td { @if let Some(j) = on_job.get(&node) { a href={"/jobs/" (super::enc(j))} { (j) } } @else { "—" } }
                        }
                    } }
                } }
            }
        }
        (etcd_section(&view.body["etcd"], view.body["mode"] == "embedded"))
        (store_section(&view.body["store"]))
    };
    page(Some(&sess), "Cluster", Some("/v1/cluster"), body)
}

/// etcd's members (the raft leader marked), the answering member's status, alarms and
/// errors, with a good/bad badge.
fn etcd_section(etcd: &Value, embedded: bool) -> Markup {
    let healthy = etcd["healthy"] == true;
    let members = etcd["members"].as_array().cloned().unwrap_or_default();
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    html! {
        section aria-labelledby="e-h" {
            h2 id="e-h" { "etcd" }
            @if embedded || etcd.is_null() {
                p id="etcd-health" { "No etcd: " code { "tributary dev" } " keeps jobs and membership in its own process." }
            } @else {
                p { span id="etcd-health" class={"badge " (if healthy { "good" } else { "bad" })} {
                        @if healthy { "healthy" } @else { "unhealthy" } }
                    " · version " (text(&etcd["version"]))
                    " · database " (text(&etcd["db_size_bytes"])) " bytes"
                    " · raft term " (text(&etcd["raft_term"])) ", index " (text(&etcd["raft_index"]))
                    " · answered by " code { (text(&etcd["answered_by"])) } }
                @if !list(&etcd["alarms"]).is_empty() { p.error { "Alarms: " (list(&etcd["alarms"])) } }
                @if !list(&etcd["errors"]).is_empty() { p.error { "Errors: " (list(&etcd["errors"])) } }
                table id="etcd-members" { thead { tr { th scope="col" { "Member" } th scope="col" { "Id" } th scope="col" { "Client URLs" } th scope="col" { "Role" } } }
                    tbody { @for m in &members { tr {
                        td { (text(&m["name"])) } td { code { (text(&m["id"])) } } td { (list(&m["client_urls"])) }
                        td { @if m["leader"] == true { strong { "raft leader" } } @else if m["learner"] == true { "learner" } @else { "follower" } }
                    } } } }
            }
        }
    }
}

/// Whether the gateway's object store answered a read, and how fast.
fn store_section(store: &Value) -> Markup {
    html! {
        section aria-labelledby="s-h" {
            h2 id="s-h" { "Object store" }
            @if store.is_null() { p { "Not probed by this process." } } @else {
                p { span id="store-health" class={"badge " (if store["reachable"] == true { "good" } else { "bad" })} {
                        @if store["reachable"] == true { "reachable" } @else { "unreachable" } }
                    " · " code { (text(&store["label"])) }
                    " · read in " (text(&store["read_ms"])) " ms"
                    @if !store["error"].is_null() { " · " span.error { (text(&store["error"])) } } }
            }
        }
    }
}
