//! Adapter pages and the playground. Adapters: the registry (names, digest, base, job,
//! owner, residency), one adapter's lineage (base digest, the job — its data and spec —, data
//! licences, withdrawn data), PEFT and GGUF download, delete. Playground: chat with any model
//! `/v1/models` lists, side by side with another; answers stream (the script reads the
//! OpenAI server-sent events through `/playground/stream`, which forwards to
//! `/v1/chat/completions` with the session's key); without JavaScript the form posts and the
//! page shows whole answers. Under each answer, its attribution ([`super::attribution`]).

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
        .route("/adapters/{id}/gguf", get(download_gguf))
        .route("/playground", get(playground).post(playground_post))
        .route("/playground/stream", post(stream))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h).await {
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
            h2 { "Download (GGUF, llama.cpp)" }
            p { a href={"/adapters/" (i) "/gguf"} download id="gguf-link" { (short(&ad["digest"])) "-lora.gguf" }
                " — a GGUF LoRA adapter for " code { "llama-cli -m BASE.gguf --lora FILE" } " (converted on request; "
                "a gateway without the base model's config answers why it cannot)." }
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

async fn download_gguf(State(st): State<Dash>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = session!(st, h);
    let r = st
        .api
        .raw(
            &sess,
            Method::GET,
            &format!("/v1/adapters/{}/gguf", enc(&id)),
            "application/json",
            Bytes::new(),
        )
        .await;
    if r.status().is_success() {
        return r;
    }
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    api_error(&sess, &super::Answer { status, body })
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
