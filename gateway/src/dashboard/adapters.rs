//! Adapter pages and the playground. Adapters: the registry (names, digest, base, job,
//! owner, residency), one adapter's lineage (base digest, the job — its data and spec —, data
//! licences, withdrawn data), PEFT download and delete. Playground: chat with any model
//! `/v1/models` lists, side by side with another; answers stream (the script reads the
//! OpenAI server-sent events through `/playground/stream`, which forwards to
//! `/v1/chat/completions` with the session's key); without JavaScript the form posts and the
//! page shows whole answers. Under each answer, its attribution from
//! `GET /v1/attributions/{request id}` when that route answers, else "attribution pending".

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{
    Dash, api_error, check_csrf, csrf_input, enc, json_block, page, page_error, session_or_login,
    short, text,
};

/// Longest prompt the playground sends.
const MAX_PROMPT: usize = 8192;

pub(super) fn routes(r: Router<Dash>) -> Router<Dash> {
    r.route("/adapters", get(list))
        .route("/adapters/{id}", get(show))
        .route("/adapters/{id}/delete", post(delete))
        .route("/adapters/{id}/files/{file}", get(download))
        .route("/playground", get(playground).post(playground_post))
        .route("/playground/stream", post(stream))
        .route("/playground/attribution/{id}", get(attribution))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h) {
            Ok(s) => s,
            Err(r) => return *r,
        }
    };
}

fn when(ms: &Value) -> String {
    ms.as_u64().map_or("—".into(), |ms| {
        let s = ms / 1000;
        let (d, r) = (s / 86400, s % 86400);
        // Civil date from days since the epoch (Howard Hinnant's algorithm).
        let z = d as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
            r / 3600,
            (r % 3600) / 60
        )
    })
}

fn names(a: &Value) -> String {
    a["names"]
        .as_array()
        .filter(|n| !n.is_empty())
        .map_or("—".into(), |n| {
            n.iter().map(text).collect::<Vec<_>>().join(", ")
        })
}

async fn list(State(st): State<Dash>, h: HeaderMap) -> Response {
    let sess = session!(st, h);
    let a = st.api.get(&sess, "/v1/adapters").await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let rows = a.body["data"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if rows.is_empty() { p { "No adapters yet: a job that succeeds registers one." } } @else {
            div.scroll { table {
                thead { tr { th scope="col" { "Names" } th scope="col" { "Digest" } th scope="col" { "Base" } th scope="col" { "Job" }
                    th scope="col" { "Owner" } th scope="col" { "Residency" } th scope="col" { "Created" } } }
                tbody { @for ad in &rows { tr {
                    td { (names(ad)) }
                    td { a href={"/adapters/" (enc(&text(&ad["digest"])))} { code { (short(&ad["digest"])) } } }
                    td { code { (short(&ad["base"])) } }
                    td { a href={"/jobs/" (enc(&text(&ad["job_id"])))} { (text(&ad["job_id"])) } }
                    td { (text(&ad["owner"])) }
                    td { span class={"residency " (text(&ad["residency"]))} { (text(&ad["residency"])) } }
                    td { (when(&ad["created_unix_ms"])) }
                } } }
            } }
        }
    };
    page(Some(&sess), "Adapters", Some("/v1/adapters"), body)
}

async fn show(State(st): State<Dash>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = session!(st, h);
    let i = enc(&id);
    let a = st.api.get(&sess, &format!("/v1/adapters/{i}")).await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let ad = a.body;
    let job = st
        .api
        .get(&sess, &format!("/v1/jobs/{}", enc(&text(&ad["job_id"]))))
        .await;
    let deleted = !ad["deleted_unix_ms"].is_null();
    let body = html! {
        p { a href="/adapters" { "← Adapters" } }
        dl.facts {
            dt { "Names" } dd { (names(&ad)) }
            dt { "Digest" } dd { code { (text(&ad["digest"])) } }
            dt { "Base model digest" } dd { code { (text(&ad["base"])) } }
            dt { "Job" } dd { a href={"/jobs/" (enc(&text(&ad["job_id"])))} { (text(&ad["job_id"])) } }
            @if job.ok() {
                dt { "Data" } dd { code { (text(&job.body["spec"]["data"])) } }
                dt { "Data digest" } dd { code { (short(&job.body["data_digest"])) } }
            }
            dt { "Owner" } dd { (text(&ad["owner"])) }
            dt { "Residency" } dd { (text(&ad["residency"])) }
            dt { "Created" } dd { (when(&ad["created_unix_ms"])) }
            @if deleted { dt { "Deleted" } dd { (when(&ad["deleted_unix_ms"])) } }
        }
        @if !deleted {
            h2 { "Download (PEFT)" }
            ul { @for f in ad["files"].as_array().cloned().unwrap_or_default() {
                li { a href={"/adapters/" (i) "/files/" (enc(&text(&f)))} download { (text(&f)) } }
            } }
            p.note { "GGUF export is not served yet: " code { "tributary model export-lora" } " makes one from these files." }
            form method="post" action={"/adapters/" (i) "/delete"} {
                (csrf_input(&sess))
                button.danger type="submit" { "Delete adapter" }
            }
        }
        @if ad["data_licenses"].is_array() { h2 { "Data licences" } (json_block(&ad["data_licenses"])) }
        @if ad["withdrawn_data"].is_array() { h2 { "Withdrawn data (retrain)" } (json_block(&ad["withdrawn_data"])) }
        @if job.ok() { details { summary { "Training spec" } (json_block(&job.body["spec"])) } }
    };
    page(
        Some(&sess),
        &format!("Adapter {}", short(&ad["digest"])),
        Some(&format!("/v1/adapters/{i}")),
        body,
    )
}

async fn delete(
    State(st): State<Dash>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    if let Err(r) = check_csrf(&sess, f.get("csrf").map_or("", |s| s.as_str())) {
        return *r;
    }
    let a = st
        .api
        .call(
            &sess,
            Method::DELETE,
            &format!("/v1/adapters/{}", enc(&id)),
            "application/json",
            Bytes::new(),
        )
        .await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    Redirect::to("/adapters").into_response()
}

async fn download(
    State(st): State<Dash>,
    h: HeaderMap,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    let sess = session!(st, h);
    st.api
        .raw(
            &sess,
            Method::GET,
            &format!("/v1/adapters/{}/files/{}", enc(&id), enc(&file)),
            "application/json",
            Bytes::new(),
        )
        .await
}

/// The models a chat can name: the base and every adapter (id, label).
async fn models(st: &Dash, sess: &super::session::Session) -> Vec<(String, String)> {
    let a = st.api.get(sess, "/v1/models").await;
    a.body["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|m| {
                    let id = text(&m["id"]);
                    let kind = if m["base"].is_null() {
                        "base"
                    } else {
                        "adapter"
                    };
                    (id.clone(), format!("{id} ({kind})"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pane(
    side: &str,
    models: &[(String, String)],
    chosen: Option<&str>,
    answer: Option<(&str, &str)>,
) -> Markup {
    html! {
        section.pane aria-labelledby={"pane-" (side)} data-side=(side) {
            h2 id={"pane-" (side)} { "Model " (side.to_uppercase()) }
            label for={"model-" (side)} { "Model" }
            select id={"model-" (side)} name={"model_" (side)} form="chat" {
                @if side == "b" { option value="" selected[chosen.is_none_or(str::is_empty)] { "— none —" } }
                @for (id, label) in models { option value=(id) selected[chosen == Some(id.as_str())] { (label) } }
            }
            div.answer id={"answer-" (side)} aria-live="polite" { @if let Some((text, _)) = answer { (text) } }
            div.attribution id={"attr-" (side)} data-request=[answer.map(|(_, id)| id.to_string())] {
                @if answer.is_some() { p.note { "Attribution: loading…" } }
            }
        }
    }
}

async fn playground(State(st): State<Dash>, h: HeaderMap) -> Response {
    let sess = session!(st, h);
    let models = models(&st, &sess).await;
    render_playground(&sess, &models, &BTreeMap::new(), [None, None])
}

fn render_playground(
    sess: &super::session::Session,
    models: &[(String, String)],
    f: &BTreeMap<String, String>,
    answers: [Option<(String, String)>; 2],
) -> Response {
    let a = f
        .get("model_a")
        .map(String::as_str)
        .or(models.first().map(|m| m.0.as_str()));
    let b = f.get("model_b").map(String::as_str);
    let body = html! {
        @if models.is_empty() { p.error { "No model is served here (start " code { "tributary dev --base-model DIR" } ")." } }
        form.card id="chat" method="post" action="/playground" {
            (csrf_input(sess))
            label for="prompt" { "Message" }
            textarea id="prompt" name="prompt" rows="3" required maxlength=(MAX_PROMPT) { (f.get("prompt").map_or("", |s| s.as_str())) }
            label for="max_tokens" { "Max tokens" }
            input id="max_tokens" name="max_tokens" type="number" min="1" max="512" value=(f.get("max_tokens").map_or("32", |s| s.as_str()));
            button type="submit" { "Send" }
        }
        div.panes {
            (pane("a", models, a, answers[0].as_ref().map(|(t, i)| (t.as_str(), i.as_str()))))
            (pane("b", models, b, answers[1].as_ref().map(|(t, i)| (t.as_str(), i.as_str()))))
        }
    };
    page(Some(sess), "Playground", Some("/v1/models"), body)
}

fn chat_body(model: &str, prompt: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// The no-JavaScript path: whole answers for both panes.
async fn playground_post(
    State(st): State<Dash>,
    h: HeaderMap,
    Form(f): Form<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    if let Err(r) = check_csrf(&sess, f.get("csrf").map_or("", |s| s.as_str())) {
        return *r;
    }
    let prompt = f.get("prompt").cloned().unwrap_or_default();
    let max: u64 = f
        .get("max_tokens")
        .and_then(|m| m.parse().ok())
        .unwrap_or(32);
    let mut answers = [None, None];
    for (slot, side) in answers.iter_mut().zip(["model_a", "model_b"]) {
        let Some(model) = f.get(side).filter(|m| !m.is_empty()) else {
            continue;
        };
        let a = st
            .api
            .post_json(
                &sess,
                "/v1/chat/completions",
                &chat_body(model, &prompt, max, false),
            )
            .await;
        *slot = Some(if a.ok() {
            (
                text(&a.body["choices"][0]["message"]["content"]),
                text(&a.body["id"]),
            )
        } else {
            (format!("error: {}", a.message()), String::new())
        });
    }
    let models = models(&st, &sess).await;
    render_playground(&sess, &models, &f, answers)
}

/// The script's streaming path: `{model, prompt, max_tokens}` with `x-csrf-token`; the
/// answer is `/v1/chat/completions`' own event stream.
async fn stream(State(st): State<Dash>, h: HeaderMap, body: Bytes) -> Response {
    let sess = session!(st, h);
    let token = h
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(r) = check_csrf(&sess, token) {
        return *r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "body: expected {model, prompt, max_tokens}",
        );
    };
    let prompt = text(&req["prompt"]);
    if prompt.len() > MAX_PROMPT {
        return page_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "prompt is {} bytes; the limit is {MAX_PROMPT}",
                prompt.len()
            ),
        );
    }
    let max = req["max_tokens"].as_u64().unwrap_or(32);
    let chat = chat_body(&text(&req["model"]), &prompt, max, true);
    let mut r = st
        .api
        .raw(
            &sess,
            Method::POST,
            "/v1/chat/completions",
            "application/json",
            Bytes::from(chat.to_string()),
        )
        .await;
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// An attribution record (`GET /v1/attributions/{id}`) as HTML, per choice: the
/// contributors' shares, the top examples with their scores (withdrawn ones marked unpaid),
/// the verbatim evidence spans highlighted inside the answer, the fee split, and the
/// reward-log entry once the log acknowledged it. Everything a contributor wrote is escaped.
fn attribution_view(v: &Value) -> Markup {
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
                " (" (text(&v["reward"]["total"])) " paid). Recompute it: " code { "tributary attribution rerun " (text(&v["request_id"])) } }
        }
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
        attribution_view(&a.body)
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
