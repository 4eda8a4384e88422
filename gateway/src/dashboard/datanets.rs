//! Datanet pages: the list (and a create form), one datanet (versions, a diff form,
//! contributors with accepted/duplicate/near-duplicate/rejected counts and quarantine — the
//! leaderboard —, uploads and the JSONL upload form), a paged preview of a version's
//! examples, a diff between two versions and an upload's report with its rejected rows.
//! Each reads the `/v1/datanets…` routes (see [`crate::datanets`]).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Dash, api_error, check_csrf, csrf_input, enc, json_block, page, page_error, session_or_login,
    short, text,
};

/// Examples per preview page.
const PAGE: usize = 20;

pub(super) fn routes(r: Router<Dash>) -> Router<Dash> {
    r.route("/datanets", get(list).post(create))
        .route("/datanets/{name}", get(show))
        .route("/datanets/{name}/upload", post(upload))
        .route("/datanets/{name}/examples", get(examples))
        .route("/datanets/{name}/diff", get(diff))
        .route("/datanets/{name}/uploads/{id}", get(upload_report))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h).await {
            Ok(s) => s,
            Err(r) => return *r,
        }
    };
}

async fn list(State(st): State<Dash>, h: HeaderMap) -> Response {
    let sess = session!(st, h);
    let a = st.api.get(&sess, "/v1/datanets").await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let rows = a.body["data"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if rows.is_empty() { p { "No datanets yet." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Description" } th scope="col" { "Versions" } th scope="col" { "Head" } } }
                tbody { @for d in &rows {
                    tr {
                        td { a href={"/datanets/" (enc(&text(&d["name"])))} { (text(&d["name"])) } }
                        td { (text(&d["description"])) }
                        td { (text(&d["versions"])) }
                        td { code { (short(&d["head"])) } }
                    }
                } }
            } }
        }
        section aria-labelledby="create-h" {
            h2 id="create-h" { "Create a datanet" }
            form.card method="post" action="/datanets" {
                (csrf_input(&sess))
                label for="dn-name" { "Name" }
                input id="dn-name" name="name" required pattern="[a-z0-9][a-z0-9._-]*" maxlength="64";
                label for="dn-desc" { "Description" }
                input id="dn-desc" name="description";
                label for="dn-lic" { "Licence (SPDX id, optional)" }
                input id="dn-lic" name="license" placeholder="CC-BY-4.0";
                button type="submit" { "Create" }
            }
        }
    };
    page(Some(&sess), "Datanets", Some("/v1/datanets"), body)
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    license: String,
}

async fn create(State(st): State<Dash>, h: HeaderMap, Form(f): Form<CreateForm>) -> Response {
    let sess = session!(st, h);
    if let Err(r) = check_csrf(&sess, &f.csrf) {
        return *r;
    }
    let mut req = json!({"name": f.name.trim(), "description": f.description});
    if !f.license.trim().is_empty() {
        req["license"] = json!(f.license.trim());
    }
    let a = st.api.post_json(&sess, "/v1/datanets", &req).await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    Redirect::to(&format!("/datanets/{}", enc(f.name.trim()))).into_response()
}

/// The leaderboard: each contributor's counts in this datanet and, where the caller may read
/// the reward log, the rewards they have earned (all datanets; `balances` of `/v1/rewards`).
fn counts_table(board: &[Value], balances: &Value) -> Markup {
    html! {
        div.scroll { table {
            caption { "Contributors, most accepted first (the leaderboard)" }
            thead { tr {
                th scope="col" { "#" } th scope="col" { "Contributor" } th scope="col" { "Accepted" }
                th scope="col" { "Duplicates" } th scope="col" { "Near-duplicates" }
                th scope="col" { "Rejected" } th scope="col" { "Withdrawn" } th scope="col" { "Pending" }
                th scope="col" { "Acceptance" } th scope="col" { "Status" }
                th scope="col" { "Rewards earned" }
            } }
            tbody { @for (i, r) in board.iter().enumerate() {
                tr {
                    td { (i + 1) }
                    td { (text(&r["contributor"])) }
                    td { (text(&r["accepted"])) }
                    td { (text(&r["duplicates"])) }
                    td { (text(&r["near_duplicates"])) }
                    td { (text(&r["rejected"])) }
                    td { (text(&r["withdrawn"])) }
                    td { (text(&r["pending"])) }
                    td { (format!("{:.0}%", r["acceptance_rate"].as_f64().unwrap_or(0.0) * 100.0)) }
                    td { @if r["quarantined"].as_bool() == Some(true) { strong.bad { "quarantined" } } @else { "ok" } }
                    td { (r["contributor"].as_str().and_then(|c| balances.get(c)).map_or("—".into(), text)) }
                }
            } }
        } }
    }
}

async fn show(State(st): State<Dash>, h: HeaderMap, Path(name): Path<String>) -> Response {
    let sess = session!(st, h);
    let n = enc(&name);
    let a = st.api.get(&sess, &format!("/v1/datanets/{n}")).await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let d = a.body;
    let versions = d["versions"].as_array().cloned().unwrap_or_default();
    let board = st
        .api
        .get(&sess, &format!("/v1/datanets/{n}/reputation"))
        .await;
    let uploads = st
        .api
        .get(&sess, &format!("/v1/datanets/{n}/uploads"))
        .await;
    // Keys without access to the reward log see the counts only.
    let rewards = st.api.get(&sess, "/v1/rewards?recent=0").await;
    let balances = if rewards.ok() {
        rewards.body["balances"].clone()
    } else {
        Value::Null
    };
    let vlabel = |v: &Value| format!("v{} · {}", text(&v["number"]), short(&v["version"]));
    let body = html! {
        p { (text(&d["description"])) }
        dl.facts {
            dt { "Owner" } dd { (text(&d["owner"])) }
            dt { "Licence" } dd { (text(&d["license"])) }
            dt { "Head" } dd { code { (short(&d["head"])) } }
            dt { "Takedowns" } dd { (text(&d["takedowns"])) }
        }
        section aria-labelledby="v-h" {
            h2 id="v-h" { "Versions" }
            @if versions.is_empty() { p { "No versions yet: upload rows below." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Version" } th scope="col" { "Entries" } th scope="col" { "Preview" } } }
                    tbody { @for v in versions.iter().rev() {
                        tr {
                            td { code { (vlabel(v)) } }
                            td { (text(&v["entries"])) }
                            td { a href={"/datanets/" (n) "/examples?v=" (enc(&text(&v["version"])))} { "examples" } }
                        }
                    } }
                } }
                @if versions.len() >= 2 {
                    form.inline method="get" action={"/datanets/" (n) "/diff"} {
                        label for="from" { "Diff from" }
                        select id="from" name="from" { @for v in &versions { option value=(text(&v["version"])) { (vlabel(v)) } } }
                        label for="to" { "to" }
                        select id="to" name="to" { @for (i, v) in versions.iter().enumerate() {
                            option value=(text(&v["version"])) selected[i + 1 == versions.len()] { (vlabel(v)) }
                        } }
                        button type="submit" { "Compare" }
                    }
                }
            }
        }
        section aria-labelledby="c-h" {
            h2 id="c-h" { "Contributors" }
            @if board.ok() { (counts_table(board.body["data"].as_array().map_or(&[][..], Vec::as_slice), &balances)) }
            @else { p.error { (board.message()) } }
            p.note { "Rewards are all-time totals from the reward log; per adapter and per entry on the " a href="/rewards" { "Rewards" } " page." }
        }
        section aria-labelledby="u-h" {
            h2 id="u-h" { "Uploads" }
            @if uploads.ok() {
                @let list = uploads.body["data"].as_array().cloned().unwrap_or_default();
                @if list.is_empty() { p { "No uploads you may see." } } @else {
                    div.scroll { table {
                        thead { tr { th scope="col" { "Upload" } th scope="col" { "By" } th scope="col" { "Rows" } th scope="col" { "Accepted" } th scope="col" { "Duplicates" } th scope="col" { "Near-dup." } th scope="col" { "Rejected" } } }
                        tbody { @for u in &list { tr {
                            td { a href={"/datanets/" (n) "/uploads/" (enc(&text(&u["upload_id"])))} { (text(&u["upload_id"])) } }
                            td { (text(&u["uploader"])) } td { (text(&u["rows"])) } td { (text(&u["accepted"])) }
                            td { (text(&u["duplicates"])) } td { (text(&u["near_duplicates"])) } td { (text(&u["rejected"])) }
                        } } }
                    } }
                }
            } @else { p.error { (uploads.message()) } }
            h3 { "Upload JSONL" }
            form.card method="post" action={"/datanets/" (n) "/upload"} enctype="multipart/form-data" {
                (csrf_input(&sess))
                label for="file" { "JSONL file (one " code { "{\"prompt\", \"completion\"}" } " or " code { "{\"messages\"}" } " object a line)" }
                input id="file" name="file" type="file" accept=".jsonl,.json,application/x-ndjson,text/plain";
                label for="rows" { "…or paste rows" }
                textarea id="rows" name="rows" rows="4" {}
                button type="submit" { "Upload" }
            }
        }
    };
    page(
        Some(&sess),
        &format!("Datanet {name}"),
        Some(&format!("/v1/datanets/{n}")),
        body,
    )
}

async fn upload(
    State(st): State<Dash>,
    h: HeaderMap,
    Path(name): Path<String>,
    mut mp: Multipart,
) -> Response {
    let sess = session!(st, h);
    let (mut csrf, mut data) = (String::new(), Vec::<u8>::new());
    loop {
        match mp.next_field().await {
            Ok(Some(f)) => {
                let field = f.name().unwrap_or_default().to_string();
                let bytes = match f.bytes().await {
                    Ok(b) => b,
                    Err(e) => return page_error(StatusCode::BAD_REQUEST, &format!("{field}: {e}")),
                };
                match field.as_str() {
                    "csrf" => csrf = String::from_utf8_lossy(&bytes).into_owned(),
                    "file" | "rows" if !bytes.is_empty() => {
                        data.extend_from_slice(&bytes);
                        if !data.ends_with(b"\n") {
                            data.push(b'\n');
                        }
                    }
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return page_error(StatusCode::BAD_REQUEST, &format!("upload form: {e}")),
        }
    }
    if let Err(r) = check_csrf(&sess, &csrf) {
        return *r;
    }
    let n = enc(&name);
    let a = st
        .api
        .call(
            &sess,
            Method::POST,
            &format!("/v1/datanets/{n}/uploads"),
            "application/x-ndjson",
            Bytes::from(data),
        )
        .await;
    match a.body["upload_id"].as_str() {
        Some(id) if a.ok() => {
            Redirect::to(&format!("/datanets/{n}/uploads/{}", enc(id))).into_response()
        }
        _ => api_error(&sess, &a),
    }
}

async fn upload_report(
    State(st): State<Dash>,
    h: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    let sess = session!(st, h);
    let (n, i) = (enc(&name), enc(&id));
    let a = st
        .api
        .get(&sess, &format!("/v1/datanets/{n}/uploads/{i}"))
        .await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let r = a.body;
    let rejected = r["rejected"].as_array().cloned().unwrap_or_default();
    let scan = r["scan"].as_array().cloned().unwrap_or_default();
    let body = html! {
        p { a href={"/datanets/" (n)} { "← " (name) } }
        dl.facts.report {
            dt { "Rows" } dd id="rows" { (text(&r["rows"])) }
            dt { "Accepted" } dd id="accepted" { (text(&r["accepted"])) }
            dt { "Duplicates" } dd id="duplicates" { (text(&r["duplicates"])) }
            dt { "Near-duplicates" } dd id="near-duplicates" { (text(&r["near_duplicates"])) }
            dt { "Rejected" } dd id="rejected" { (rejected.len()) }
            dt { "Version" } dd { code { "v" (text(&r["number"])) " · " (short(&r["version"])) } }
            dt { "Uploader" } dd { (text(&r["uploader"])) }
            dt { "Quarantined" } dd { (r["quarantined"].as_array().map_or(String::from("—"), |q| if q.is_empty() { "—".into() } else { q.iter().map(text).collect::<Vec<_>>().join(", ") })) }
        }
        section aria-labelledby="rej-h" {
            h2 id="rej-h" { "Rejected rows" }
            @if rejected.is_empty() { p { "None." } } @else {
                div.scroll { table.rejected {
                    thead { tr { th scope="col" { "Line" } th scope="col" { "Field" } th scope="col" { "Reason" } } }
                    tbody { @for e in &rejected { tr {
                        td { (text(&e["line"])) } td { code { (text(&e["field"])) } } td { (text(&e["reason"])) }
                    } } }
                } }
            }
        }
        @if !scan.is_empty() {
            section aria-labelledby="scan-h" {
                h2 id="scan-h" { "Scanner findings" }
                (json_block(&Value::Array(scan)))
            }
        }
    };
    page(
        Some(&sess),
        &format!("Upload {id}"),
        Some(&format!("/v1/datanets/{n}/uploads/{i}/rejected")),
        body,
    )
}

/// One example's text: its messages (role: content) or its prompt and completion.
fn example(e: &Value) -> Markup {
    let conv = if e["messages"].is_array() {
        &e["messages"]
    } else {
        &e["example"]["messages"]
    };
    html! {
        @if let Some(msgs) = conv.as_array() {
            @for m in msgs { p.msg { strong { (text(&m["role"])) ": " } span.content { (text(&m["content"])) } } }
        } @else if !e["prompt"].is_null() {
            p.msg { strong { "prompt: " } span.content { (text(&e["prompt"])) } }
            p.msg { strong { "completion: " } span.content { (text(&e["completion"])) } }
        } @else { (json_block(e)) }
    }
}

async fn examples(
    State(st): State<Dash>,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    let n = enc(&name);
    let v = q.get("v").map_or("latest".to_string(), |s| s.clone());
    let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let path = format!(
        "/v1/datanets/{n}/versions/{}/examples?offset={offset}&limit={PAGE}",
        enc(&v)
    );
    let a = st.api.get(&sess, &path).await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let total = a.body["total"].as_u64().unwrap_or(0) as usize;
    let data = a.body["data"].as_array().cloned().unwrap_or_default();
    let base = format!("/datanets/{n}/examples?v={}", enc(&v));
    let body = html! {
        p { a href={"/datanets/" (n)} { "← " (name) } " · version " code { (short(&a.body["version"])) }
            " · examples " (offset + 1) "–" (offset + data.len()) " of " (total) }
        ol.examples start=(offset + 1) { @for e in &data { li { (example(e)) } } }
        nav.pager aria-label="Pages" {
            @if offset > 0 { a href={(base) "&offset=" (offset.saturating_sub(PAGE))} rel="prev" { "← Previous" } }
            @if offset + PAGE < total { a href={(base) "&offset=" (offset + PAGE)} rel="next" { "Next →" } }
        }
    };
    page(
        Some(&sess),
        &format!("Examples of {name}"),
        Some(&path),
        body,
    )
}

async fn diff(
    State(st): State<Dash>,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    let n = enc(&name);
    let (from, to) = (
        q.get("from").cloned().unwrap_or_default(),
        q.get("to").cloned().unwrap_or_default(),
    );
    let path = format!("/v1/datanets/{n}/diff?from={}&to={}", enc(&from), enc(&to));
    let a = st.api.get(&sess, &path).await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let list = |k: &str| a.body[k].as_array().cloned().unwrap_or_default();
    let (added, removed) = (list("added"), list("removed"));
    let body = html! {
        p { a href={"/datanets/" (n)} { "← " (name) } }
        p { "From " code { (from) } " to " code { (to) } ": "
            strong { (added.len()) " added" } ", " strong { (removed.len()) " removed" } }
        @for (title, rows) in [("Added", &added), ("Removed", &removed)] {
            h2 { (title) }
            @if rows.is_empty() { p { "None." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Example id" } th scope="col" { "Contributor" } th scope="col" { "Kind" } th scope="col" { "Weight" } } }
                    tbody { @for e in rows.iter() { tr {
                        td { code { (short(&e["id"])) } } td { (text(&e["contributor"])) } td { (text(&e["kind"])) } td { (text(&e["weight"])) }
                    } } }
                } }
            }
        }
    };
    page(Some(&sess), &format!("Diff of {name}"), Some(&path), body)
}
