//! An answer's attribution under it in the playground: the record from
//! `GET /v1/attributions/{request id}` as HTML (shares, top examples, verbatim evidence
//! highlighted, fee split, reward-log entry), and "Re-run attribution": a form (CSRF, works
//! without JavaScript; the script posts it in place) that calls
//! `POST /v1/attributions/{request id}/rerun` and shows whether the recomputed bits match
//! the stored ones, with both digests and the first difference when they do not.

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::session::Session;
use super::{Dash, check_csrf, csrf_input, enc, json_block, page, session_or_login, short, text};

pub(super) fn routes(r: Router<Dash>) -> Router<Dash> {
    r.route("/playground/attribution/{id}", get(attribution))
        .route("/playground/attribution/{id}/rerun", post(rerun))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h).await {
            Ok(s) => s,
            Err(r) => return *r,
        }
    };
}

/// The "Re-run attribution" form of request `rid`.
fn rerun_form(sess: &Session, rid: &str) -> Markup {
    html! {
        form.rerun method="post" action={"/playground/attribution/" (enc(rid)) "/rerun"} data-request=(rid) {
            (csrf_input(sess))
            button type="submit" { "Re-run attribution" }
            " "
            span.note { "recomputes the scores, shares and fee split from the stored index and features, and compares the bits" }
        }
    }
}

/// A rerun's answer (`POST /v1/attributions/{id}/rerun`) as HTML, in `div.rerun-result`.
fn rerun_view(status: StatusCode, v: &Value) -> Markup {
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    html! {
        div.rerun-result role="status" {
            @if !status.is_success() {
                p.error { "Re-run refused (" (status.as_u16()) "): " (text(&v["error"]["message"])) }
            } @else if v["bits_match"] == true {
                p { span.badge.good { "bits match" } " — recomputed over " (text(&v["examples"])) " indexed examples in "
                    (v["seconds"].as_f64().map_or("—".into(), |s| format!("{s:.2} s"))) "." }
            } @else {
                p { span.badge.bad { "bits differ" } " — the stored record is not what its inputs give." }
            }
            @for c in &choices {
                dl.facts {
                    @if choices.len() > 1 { dt { "Choice" } dd { (text(&c["index"])) } }
                    dt { "Stored digest" } dd { code { (text(&c["stored_digest"])) } }
                    dt { "Recomputed digest" } dd { code { (text(&c["recomputed_digest"])) } }
                    @if !c["first_difference"].is_null() {
                        dt { "First difference" } dd { code { (text(&c["first_difference"]["field"])) } ": stored "
                            code { (c["first_difference"]["stored"].to_string()) } ", recomputed "
                            code { (c["first_difference"]["recomputed"].to_string()) } }
                    }
                }
            }
        }
    }
}

/// The form's target: without JavaScript a page with the result; the script reads the
/// same page and puts its `div.rerun-result` under the form.
async fn rerun(
    State(st): State<Dash>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    if let Err(r) = check_csrf(&sess, f.get("csrf").map_or("", |s| s.as_str())) {
        return *r;
    }
    let path = format!("/v1/attributions/{}/rerun", enc(&id));
    let a = st.api.post_json(&sess, &path, &json!({})).await;
    let body = html! {
        p { a href="/playground" { "← Playground" } }
        p { "Attribution of " code { (id) } " re-run from the stored index, data and features:" }
        (rerun_view(a.status, &a.body))
        details { summary { "As JSON" } (json_block(&a.body)) }
    };
    let mut r = page(Some(&sess), "Re-run attribution", Some(&path), body);
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        *r.status_mut() = a.status;
    }
    r
}

/// An attribution record (`GET /v1/attributions/{id}`) as HTML, per choice: the
/// contributors' shares, the top examples with their scores (withdrawn ones marked unpaid),
/// the verbatim evidence spans highlighted inside the answer, the fee split, and the
/// reward-log entry once the log acknowledged it. Everything a contributor wrote is escaped.
fn attribution_view(sess: &Session, v: &Value) -> Markup {
    let units = v["params"]["shares"]["units"].as_u64().unwrap_or(1).max(1);
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    let percent = |u: &Value| format!("{:.1} %", u.as_f64().unwrap_or(0.0) * 100.0 / units as f64);
    html! {
        h3 { "Attribution" }
        p.note { "Method " code { (text(&v["method"])) } " over " (text(&v["data"])) "; adapter " code { (short(&v["adapter"])) } ", built by " (text(&v["builder"])) "." }
        @for c in &choices {
            @let bits = &c["bits"];
            @let shares = bits["shares"].as_object().cloned().unwrap_or_default();
            @let top = bits["top"].as_array().cloned().unwrap_or_default();
            @let evidence = c["evidence"].as_array().cloned().unwrap_or_default();
            @if choices.len() > 1 { h4 { "Choice " (text(&c["index"])) } }
            p.answer { (highlighted(c["answer"].as_str().unwrap_or_default(), &evidence)) }
            @if shares.is_empty() { p { "No contributor scored: the whole fee goes to the builder." } } @else {
                table.shares {
                    caption { "Whose data made this answer likely" }
                    thead { tr { th scope="col" { "Contributor" } th scope="col" { "Share" } th scope="col" { "Paid" } } }
                    tbody { @for (who, u) in &shares { tr {
                        td { (who) } td { (percent(u)) } td { (text(&bits["fee"]["contributors"][who.as_str()])) }
                    } } }
                }
            }
            @if !top.is_empty() {
                details open {
                    summary { "Top training examples (positive: made this answer more likely)" }
                    ol.examples { @for t in &top { li {
                        code { (short(&t["id"])) } " " (text(&t["contributor"])) " "
                        (t["score"].as_f64().map_or("—".into(), |s| format!("{s:.5}")))
                        @if t["paid"] == false { " " strong.bad { "withdrawn: not paid" } }
                    } } }
                }
            }
            @for e in &evidence {
                blockquote.evidence { "Verbatim in training data: " mark { (text(&e["text"])) }
                    " (" (e["examples"].as_array().map_or(0, Vec::len)) " example(s))" }
            }
            p.fee { "Fee " (text(&bits["fee"]["total"])) " for " (text(&c["completion_tokens"])) " tokens: builder "
                (text(&bits["fee"]["builder"])) ", contributors "
                (bits["fee"]["contributors"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>())) "." }
        }
        @if v["reward"].is_null() { p.note { "Reward: pending (not acknowledged by the reward log yet)." } } @else {
            p { "Reward-log entry " a href={"/rewards#req-" (enc(&text(&v["request_id"])))} { "#" (text(&v["reward"]["seq"])) }
                " (" (text(&v["reward"]["total"])) " paid)." }
        }
        (rerun_form(sess, &text(&v["request_id"])))
        details { summary { "As JSON" } (json_block(v)) }
    }
}

/// `answer` with each evidence span (by first occurrence of its text) wrapped in `<mark>`;
/// every piece is escaped.
fn highlighted(answer: &str, evidence: &[Value]) -> Markup {
    let mut spans: Vec<(usize, usize)> = evidence
        .iter()
        .filter_map(|e| e["text"].as_str())
        .filter(|t| !t.is_empty())
        .filter_map(|t| answer.find(t).map(|at| (at, at + t.len())))
        .collect();
    spans.sort_unstable();
    let mut pieces: Vec<(bool, &str)> = Vec::new();
    let mut at = 0;
    for (start, end) in spans {
        if start < at {
            continue;
        }
        if let (Some(before), Some(span)) = (answer.get(at..start), answer.get(start..end)) {
            pieces.push((false, before));
            pieces.push((true, span));
            at = end;
        }
    }
    pieces.push((false, answer.get(at..).unwrap_or_default()));
    html! { @for (marked, piece) in pieces { @if marked { mark { (piece) } } @else { (piece) } } }
}

async fn attribution(State(st): State<Dash>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = session!(st, h);
    let a = st
        .api
        .get(&sess, &format!("/v1/attributions/{}", enc(&id)))
        .await;
    let m = if a.ok() {
        attribution_view(&sess, &a.body)
    } else if a.status == StatusCode::NOT_FOUND && a.body["error"]["code"] == "no_route" {
        html! { p.note { "Attribution not available: this gateway does not serve " code { "/v1/attributions" } " yet." } }
    } else {
        html! { p.note { "Attribution pending (" (a.status.as_u16()) ": " (a.message()) ")." } }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        m.0,
    )
        .into_response()
}
