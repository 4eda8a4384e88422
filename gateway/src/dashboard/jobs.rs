//! Job pages: past runs (tick two or more to overlay their curves) and the submit form
//! (which previews the equivalent spec file and `tributary job submit` command), one job
//! (state, progress, workers, checkpoint, log, train and eval loss curves, cancel) whose live
//! part the script re-fetches every second while the job runs — a reload or another
//! browser re-attaches, since everything shown is the server's — and the overlay of runs.
//! Each reads `/v1/jobs…` and `/v1/jobs/{id}/metrics`.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, PreEscaped, html};
use serde_json::{Value, json};
use tributary_protocol::JobSpec;

use super::svg::{Series, line_chart};
use super::{
    Dash, Pairs, api_error, check_csrf, csrf_input, enc, page, session_or_login, short, text,
};

pub(super) fn routes(r: Router<Dash>) -> Router<Dash> {
    r.route("/jobs", get(list).post(submit))
        .route("/jobs/compare", get(compare))
        .route("/jobs/{id}", get(show))
        .route("/jobs/{id}/live", get(live))
        .route("/jobs/{id}/cancel", post(cancel))
}

macro_rules! session {
    ($st:expr, $h:expr) => {
        match session_or_login(&$st, &$h).await {
            Ok(s) => s,
            Err(r) => return *r,
        }
    };
}

/// The submit form's fields with their defaults.
const FIELDS: [(&str, &str, &str); 15] = [
    ("base_model", "Base model (directory or URL)", ""),
    ("data", "Data (datanet://NAME@latest, a path or URL)", ""),
    ("name", "Adapter name (optional)", ""),
    ("workers", "Workers", "1"),
    ("rank", "LoRA rank", "8"),
    ("alpha", "LoRA alpha", "16"),
    ("dropout", "LoRA dropout", "0"),
    (
        "target_modules",
        "Target modules (comma-separated)",
        "q_proj,v_proj",
    ),
    ("steps", "Steps", "20"),
    ("batch_size", "Batch size", "4"),
    ("grad_accum", "Micro-batches per batch (optional)", ""),
    ("lr", "Learning rate", "0.001"),
    ("warmup", "Warm-up steps", "0"),
    ("eval_fraction", "Eval fraction (held out, optional)", "0.1"),
    ("checkpoint_every", "Checkpoint every (steps, optional)", ""),
];

fn num(f: &BTreeMap<String, String>, k: &str) -> Value {
    match f.get(k).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Value::Null,
        Some(s) => s
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| s.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(s.to_string())),
    }
}

/// The form as a job spec (JSON), parsed and validated by the spec's own rules.
fn spec_of(f: &BTreeMap<String, String>) -> Result<JobSpec, String> {
    let s = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let mut train = json!({ "steps": num(f, "steps"), "batch_size": num(f, "batch_size"),
        "lr": num(f, "lr"), "warmup": num(f, "warmup") });
    for k in ["grad_accum", "eval_fraction", "checkpoint_every"] {
        if !num(f, k).is_null() {
            train[k] = num(f, k);
        }
    }
    let mut v = json!({
        "base_model": s("base_model"),
        "data": s("data"),
        "workers": num(f, "workers"),
        "lora": { "rank": num(f, "rank"), "alpha": num(f, "alpha"), "dropout": num(f, "dropout"),
            "target_modules": s("target_modules").split(',').map(str::trim).filter(|m| !m.is_empty()).collect::<Vec<_>>() },
        "train": train,
    });
    if !s("name").is_empty() {
        v["name"] = json!(s("name"));
    }
    JobSpec::from_json_str(&v.to_string()).map_err(|e| e.to_string())
}

fn spec_toml(spec: &JobSpec) -> String {
    toml::to_string(spec).unwrap_or_else(|e| format!("# {e}"))
}

fn cli(h: &HeaderMap) -> String {
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:7400");
    format!("tributary job submit spec.toml --coordinator http://{host} --wait")
}

fn form(sess: &super::session::Session, values: &BTreeMap<String, String>) -> Markup {
    html! {
        form.card.grid method="post" action="/jobs" {
            (csrf_input(sess))
            @for (k, label, default) in FIELDS {
                div {
                    label for={"f-" (k)} { (label) }
                    input id={"f-" (k)} name=(k) value=(values.get(k).map_or(default, |s| s.as_str()))
                        required[k == "base_model" || k == "data" || k == "steps"];
                }
            }
            div.actions {
                button type="submit" name="action" value="preview" { "Preview spec" }
                button type="submit" name="action" value="submit" { "Submit job" }
            }
        }
    }
}

fn state_of(rec: &Value) -> String {
    text(&rec["state"])
}

async fn list(State(st): State<Dash>, h: HeaderMap) -> Response {
    let sess = session!(st, h);
    let a = st.api.get(&sess, "/v1/jobs").await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    let jobs = a.body.as_array().cloned().unwrap_or_default();
    let mut defaults = BTreeMap::new();
    if let Some(last) = jobs.last() {
        defaults.insert("base_model".into(), text(&last["spec"]["base_model"]));
        defaults.insert("data".into(), text(&last["spec"]["data"]));
    }
    let body = html! {
        section aria-labelledby="runs-h" {
            h2 id="runs-h" { "Runs" }
            @if jobs.is_empty() { p { "No jobs yet." } } @else {
                form method="get" action="/jobs/compare" {
                    div.scroll { table {
                        thead { tr { th scope="col" { "Compare" } th scope="col" { "Job" } th scope="col" { "Adapter name" } th scope="col" { "State" } th scope="col" { "Step" } th scope="col" { "Final loss" } } }
                        tbody { @for j in jobs.iter().rev() {
                            @let id = text(&j["id"]);
                            tr {
                                td { input type="checkbox" name="id" value=(id) aria-label={"compare " (id)}; }
                                td { a href={"/jobs/" (enc(&id))} { (id) } }
                                td { (text(&j["spec"]["name"])) }
                                td { span class={"state " (state_of(j))} { (state_of(j)) } }
                                td { (text(&j["progress"]["step"])) "/" (text(&j["progress"]["total_steps"])) }
                                td { (j["final_loss"].as_f64().map_or("—".into(), |l| format!("{l:.4}"))) }
                            }
                        } }
                    } }
                    button type="submit" { "Overlay the ticked runs' curves" }
                }
            }
        }
        section aria-labelledby="new-h" {
            h2 id="new-h" { "Submit a fine-tune" }
            (form(&sess, &defaults))
        }
    };
    page(Some(&sess), "Jobs", Some("/v1/jobs"), body)
}

async fn submit(
    State(st): State<Dash>,
    h: HeaderMap,
    Form(f): Form<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    if let Err(r) = check_csrf(&sess, f.get("csrf").map_or("", |s| s.as_str())) {
        return *r;
    }
    let spec = spec_of(&f);
    if let (Ok(spec), Some("submit")) = (&spec, f.get("action").map(|s| s.as_str())) {
        let body = serde_json::to_value(spec).unwrap_or_default();
        let a = st.api.post_json(&sess, "/v1/jobs", &body).await;
        return match a.body["id"].as_str() {
            Some(id) if a.ok() => Redirect::to(&format!("/jobs/{}", enc(id))).into_response(),
            _ => api_error(&sess, &a),
        };
    }
    let body = html! {
        @match &spec {
            Ok(spec) => {
                h2 { "Equivalent spec file" }
                pre.spec id="spec-toml" { (spec_toml(spec)) }
                p { "Submit it from a shell:" }
                pre id="spec-cli" { (cli(&h)) }
            }
            Err(e) => { p.error role="alert" { (e) } }
        }
        (form(&sess, &f))
    };
    page(Some(&sess), "Jobs", Some("/v1/jobs"), body)
}

fn points(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["step"].as_f64()?, p["loss"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The live part of a job page (progress, curves, workers, checkpoint, log).
fn live_part(id: &str, rec: &Value, m: &Value, csrf: &str) -> Markup {
    let state = state_of(rec);
    let p = &rec["progress"];
    let mut series = vec![Series {
        label: "train loss".into(),
        points: points(&m["train"]),
        ..Series::default()
    }];
    if !points(&m["eval"]).is_empty() {
        series.push(Series {
            label: "eval loss".into(),
            points: points(&m["eval"]),
            dashed: true,
            color: 1,
        });
    }
    let chart = line_chart(&format!("Loss of {id}"), "step", "loss per token", &series);
    let terminal = matches!(state.as_str(), "succeeded" | "failed" | "cancelled");
    let logs = rec["log"].as_array().cloned().unwrap_or_default();
    html! {
        div id="live" data-state=(state) data-poll=[(!terminal).then(|| format!("/jobs/{}/live", enc(id)))] aria-live="polite" {
            dl.facts {
                dt { "State" } dd { span class={"state " (state)} id="job-state" { (state) } }
                dt { "Step" } dd id="job-step" { (text(&p["step"])) " / " (text(&p["total_steps"])) }
                dt { "Train loss" } dd { (p["loss"].as_f64().map_or("—".into(), |l| format!("{l:.4}"))) }
                dt { "Eval loss" } dd id="eval-loss" { (m["eval"].as_array().and_then(|a| a.last()).and_then(|l| l["loss"].as_f64()).map_or("—".into(), |l| format!("{l:.4}"))) }
                dt { "Tokens/s" } dd { (p["tokens_per_sec"].as_f64().map_or("—".into(), |t| format!("{t:.0}"))) }
                dt { "ETA" } dd { (p["eta_secs"].as_f64().map_or("—".into(), |t| format!("{t:.0} s"))) }
                dt { "Workers" } dd { (rec["workers"].as_array().map_or("—".into(), |w| if w.is_empty() { "—".into() } else { w.iter().map(text).collect::<Vec<_>>().join(", ") })) }
                dt { "Checkpoint" } dd { (rec["checkpoint"]["step"].as_u64().map_or("—".into(), |s| format!("step {s}"))) }
                @if !rec["adapter_digest"].is_null() { dt { "Adapter" } dd { a href={"/adapters/" (enc(&text(&rec["adapter_digest"])))} { code { (short(&rec["adapter_digest"])) } } } }
                @if !rec["error"].is_null() { dt { "Error" } dd.error { (text(&rec["error"])) } }
            }
            figure.chart id="loss-chart" data-train-points=(points(&m["train"]).len()) data-eval-points=(points(&m["eval"]).len()) {
                (PreEscaped(chart))
                figcaption { "Train loss (solid) per step; eval loss (dashed) on the held-out "
                    (text(&m["eval_examples"])) " examples. JSON: " a href={"/v1/jobs/" (enc(id)) "/metrics"} { "metrics" } }
            }
            @if !terminal {
                form method="post" action={"/jobs/" (enc(id)) "/cancel"} {
                    input type="hidden" name="csrf" value=(csrf);
                    button.danger type="submit" { "Cancel job" }
                }
            }
            details {
                summary { "Log (" (logs.len()) " lines)" }
                pre.log { @for l in logs.iter().rev().take(200).collect::<Vec<_>>().into_iter().rev() { (text(&l["msg"])) "\n" } }
            }
        }
    }
}

async fn fetch(
    st: &Dash,
    sess: &super::session::Session,
    id: &str,
) -> Result<(Value, Value), Response> {
    let i = enc(id);
    let a = st.api.get(sess, &format!("/v1/jobs/{i}")).await;
    if !a.ok() {
        return Err(api_error(sess, &a));
    }
    let m = st.api.get(sess, &format!("/v1/jobs/{i}/metrics")).await;
    Ok((a.body, if m.ok() { m.body } else { Value::Null }))
}

async fn show(State(st): State<Dash>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = session!(st, h);
    let (rec, m) = match fetch(&st, &sess, &id).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let spec: Option<JobSpec> = serde_json::from_value(rec["spec"].clone()).ok();
    let terminal = rec["state"]
        .as_str()
        .is_some_and(|s| matches!(s, "succeeded" | "failed" | "cancelled"));
    let body = html! {
        p { a href="/jobs" { "← Jobs" } }
        (live_part(&id, &rec, &m, &sess.csrf))
        @if !terminal {
            noscript { p { a href={"/jobs/" (enc(&id))} { "Refresh" } " to see progress (the page updates itself with JavaScript)." } }
        }
        @if let Some(spec) = spec {
            details {
                summary { "Spec and CLI command" }
                pre.spec { (spec_toml(&spec)) }
                pre { (cli(&h)) }
            }
        }
    };
    page(
        Some(&sess),
        &format!("Job {id}"),
        Some(&format!("/v1/jobs/{}", enc(&id))),
        body,
    )
}

async fn live(State(st): State<Dash>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = session!(st, h);
    match fetch(&st, &sess, &id).await {
        Ok((rec, m)) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            live_part(&id, &rec, &m, &sess.csrf).0,
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn cancel(
    State(st): State<Dash>,
    h: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<BTreeMap<String, String>>,
) -> Response {
    let sess = session!(st, h);
    if let Err(r) = check_csrf(&sess, f.get("csrf").map_or("", |s| s.as_str())) {
        return *r;
    }
    let i = enc(&id);
    let a = st
        .api
        .post_json(&sess, &format!("/v1/jobs/{i}/cancel"), &Value::Null)
        .await;
    if !a.ok() {
        return api_error(&sess, &a);
    }
    Redirect::to(&format!("/jobs/{i}")).into_response()
}

async fn compare(State(st): State<Dash>, h: HeaderMap, Query(q): Pairs) -> Response {
    let sess = session!(st, h);
    let ids: Vec<String> = q
        .into_iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v)
        .take(8)
        .collect();
    let mut series = Vec::new();
    let mut rows = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let m = st
            .api
            .get(&sess, &format!("/v1/jobs/{}/metrics", enc(id)))
            .await;
        if !m.ok() {
            return api_error(&sess, &m);
        }
        series.push(Series {
            label: format!("{id} train"),
            points: points(&m.body["train"]),
            dashed: false,
            color: i,
        });
        if !points(&m.body["eval"]).is_empty() {
            series.push(Series {
                label: format!("{id} eval"),
                points: points(&m.body["eval"]),
                dashed: true,
                color: i,
            });
        }
        rows.push(m.body);
    }
    let chart = line_chart("Runs compared", "step", "loss per token", &series);
    let body = html! {
        p { a href="/jobs" { "← Jobs" } }
        @if ids.len() < 2 { p.error role="alert" { "Tick two or more runs on the Jobs page to compare them." } }
        figure.chart id="compare-chart" data-series=(series.len()) { (PreEscaped(chart)) }
        div.scroll { table {
            thead { tr { th scope="col" { "Job" } th scope="col" { "State" } th scope="col" { "Last train loss" } th scope="col" { "Last eval loss" } } }
            tbody { @for m in &rows { tr {
                td { a href={"/jobs/" (enc(&text(&m["id"])))} { (text(&m["id"])) } }
                td { (text(&m["state"])) }
                td { (points(&m["train"]).last().map_or("—".into(), |p| format!("{:.4}", p.1))) }
                td { (points(&m["eval"]).last().map_or("—".into(), |p| format!("{:.4}", p.1))) }
            } } }
        } }
    };
    page(Some(&sess), "Compare runs", None, body)
}
