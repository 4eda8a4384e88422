//! The OpenAI routes over [`ScriptedEngine`], a test-only engine whose answers follow the
//! prompt (`hold` keeps a request open until its client leaves, `fail` fails after the
//! first token, `overload` is refused at submit). The real engine is exercised end to end
//! in the repository's `tests/serve_*.rs`.
// Tests use fresh store names and real time.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tributary_ledger::adapters::{AdapterFile, Provenance};
use tributary_ledger::keys::{KeyStore, Scope};
use tributary_ledger::store::Store;
use tributary_protocol::{Digest, ModelChoice};

use super::*;
pub use crate::openai::scripted::ScriptedEngine;

struct Fixture {
    app: Router,
    engine: Arc<ScriptedEngine>,
    store: Store,
    catalog: Catalog,
}

fn fixture_with(auth: &Auth, store: Store, in_flight: usize, limits: Limits) -> Fixture {
    let engine = Arc::new(ScriptedEngine::default());
    let catalog = Catalog::new(store.clone(), engine.clone());
    let state = ServeState {
        catalog: catalog.clone(),
        admission: Admission::new(in_flight, 1000),
        limits,
    };
    Fixture {
        app: openai_router(state, auth),
        engine,
        store,
        catalog,
    }
}

fn mem_store() -> Store {
    Store::open(&format!("memory://openai-{}", rand::random::<u64>())).unwrap()
}

fn fixture() -> Fixture {
    fixture_with(&Auth::open(), mem_store(), 8, Limits::default())
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

async fn call_json(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (s, _, b) = call(app, req).await;
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

fn chat_body(model: &str, content: &str, extra: Value) -> String {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v.to_string()
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}

#[tokio::test]
async fn chat_answers_in_openai_shape_with_usage_and_unique_ids() {
    let f = fixture();
    let (s, v) = call_json(
        &f.app,
        post("/v1/chat/completions", chat_body("tiny", "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
    let (_, v2) = call_json(
        &f.app,
        post("/v1/chat/completions", chat_body("tiny", "hi", json!({}))),
    )
    .await;
    assert_ne!(v["id"], v2["id"]);
    // The engine got the id, the base model and the sampling fields.
    let reqs = f.engine.requests.lock().unwrap().clone();
    assert_eq!(reqs[0].request_id, v["id"].as_str().unwrap());
    assert_eq!(reqs[0].model, ModelChoice::Base);
    // n, max_tokens, logprobs.
    let (s, v) = call_json(
        &f.app,
        post(
            "/v1/chat/completions",
            chat_body(
                "tiny",
                "hi",
                json!({"n": 2, "max_tokens": 1, "logprobs": true, "top_logprobs": 2}),
            ),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["message"]["content"], "Hel");
    assert_eq!(v["choices"][1]["finish_reason"], "length");
    assert_eq!(
        v["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"],
        "alt1"
    );
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn streams_end_with_usage_and_done() {
    let f = fixture();
    let body = chat_body(
        "tiny",
        "hi",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (s, h, text) = call(&f.app, post("/v1/chat/completions", body)).await;
    assert_eq!(s, 200, "{text}");
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]", "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(finish["usage"].is_null());
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 5);
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));

    // Completions, streaming and not.
    let (s, v) = call_json(
        &f.app,
        post(
            "/v1/completions",
            r#"{"model":"tiny","prompt":"Once","logprobs":1}"#,
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "Hello");
    assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(["Hel", "lo"]));
    assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([0, 3]));
    let (s, _, text) = call(
        &f.app,
        post(
            "/v1/completions",
            r#"{"model":"tiny","prompt":"Once","stream":true}"#,
        ),
    )
    .await;
    assert_eq!(s, 200);
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], "Hel");
    assert!(first.get("usage").is_none(), "no usage field unless asked");
}

#[tokio::test]
async fn failures_map_to_statuses_and_stream_errors_end_the_stream() {
    let f = fixture();
    let (s, v) = call_json(
        &f.app,
        post("/v1/chat/completions", chat_body("nope", "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert!(v["error"]["message"].as_str().unwrap().contains("`nope`"));
    let (s, h, b) = call(
        &f.app,
        post(
            "/v1/chat/completions",
            chat_body("tiny", "overload", json!({})),
        ),
    )
    .await;
    assert_eq!(s, 429, "{b}");
    assert_eq!(h[header::RETRY_AFTER], "3");
    // A failure after the first token, while streaming: an error event, then [DONE].
    let (s, _, text) = call(
        &f.app,
        post(
            "/v1/chat/completions",
            chat_body("tiny", "fail", json!({"stream": true})),
        ),
    )
    .await;
    assert_eq!(s, 200);
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{text}");
    // Not streaming: a 500 in OpenAI's shape.
    let (s, v) = call_json(
        &f.app,
        post("/v1/chat/completions", chat_body("tiny", "fail", json!({}))),
    )
    .await;
    assert_eq!(s, 500, "{v}");
    assert_eq!(v["error"]["type"], "server_error");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_bad_fields_400() {
    let limits = Limits {
        max_body_bytes: 1000,
        ..Limits::default()
    };
    let f = fixture_with(&Auth::open(), mem_store(), 8, limits);
    let big = chat_body("tiny", &"x".repeat(2000), json!({}));
    let (s, v) = call_json(&f.app, post("/v1/chat/completions", big)).await;
    assert_eq!(s, 413, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("1000"));
    let (s, v) = call_json(
        &f.app,
        post(
            "/v1/chat/completions",
            chat_body("tiny", "x", json!({"top_p": 2})),
        ),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "top_p");
    assert!(
        f.engine.requests.lock().unwrap().is_empty(),
        "nothing reached the engine"
    );
}

#[tokio::test]
async fn the_gateway_bound_answers_429_at_once_and_a_dropped_stream_cancels() {
    let f = fixture_with(&Auth::open(), mem_store(), 1, Limits::default());
    let resp = f
        .app
        .clone()
        .oneshot(post(
            "/v1/chat/completions",
            chat_body("tiny", "hold", json!({"stream": true})),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    let first = String::from_utf8_lossy(frame.data_ref().unwrap()).into_owned();
    assert!(first.contains("Hel"), "{first}");
    // The one slot is taken: the next request is refused at once.
    let t = std::time::Instant::now();
    let (s, h, _) = call(
        &f.app,
        post("/v1/chat/completions", chat_body("tiny", "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 429);
    assert!(h.contains_key(header::RETRY_AFTER));
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    // The client goes away: the engine sees its stream closed within a second, and the
    // slot is free again.
    drop(body);
    tokio::time::timeout(Duration::from_secs(1), f.engine.cancelled.notified())
        .await
        .expect("the engine saw the cancellation");
    let (s, _, _) = call(
        &f.app,
        post("/v1/chat/completions", chat_body("tiny", "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 200);
}

async fn register(store: &Store, weights: &[u8], base: Digest, owner: &str) -> String {
    let reg = tributary_ledger::adapters::AdapterRegistry::new(store.clone());
    let files = vec![
        AdapterFile {
            name: "adapter_config.json".into(),
            bytes: bytes::Bytes::from_static(br#"{"r": 4}"#),
        },
        AdapterFile {
            name: "adapter_model.safetensors".into(),
            bytes: bytes::Bytes::copy_from_slice(weights),
        },
    ];
    let prov = Provenance {
        base_model_digest: base.to_hex(),
        data_digest: String::new(),
        job_id: String::new(),
        spec: Value::Null,
        created_unix_ms: 1,
    };
    reg.register_owned(&files, prov, Some(owner.into()))
        .await
        .unwrap()
        .adapter_digest
}

#[tokio::test]
async fn adapters_are_served_by_name_and_digest_and_listed() {
    let f = fixture();
    let base = Digest::of(b"base");
    let d1 = register(&f.store, b"v1", base, "alice").await;
    let d2 = register(&f.store, b"v2", base, "alice").await;
    let other = register(&f.store, b"other", Digest::of(b"another base"), "bob").await;
    f.catalog
        .names
        .claim("support", &d1, "alice", 1)
        .await
        .unwrap();
    let (s, v) = call_json(
        &f.app,
        post(
            "/v1/chat/completions",
            chat_body("support", "hi", json!({})),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "support");
    // A new version of the name: new requests get the new digest; the old digest still
    // serves the old weights.
    f.catalog
        .names
        .claim("support", &d2, "alice", 2)
        .await
        .unwrap();
    call_json(
        &f.app,
        post(
            "/v1/chat/completions",
            chat_body("support", "hi", json!({})),
        ),
    )
    .await;
    call_json(
        &f.app,
        post("/v1/chat/completions", chat_body(&d1, "hi", json!({}))),
    )
    .await;
    let models: Vec<ModelChoice> = f
        .engine
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.model)
        .collect();
    let dg = |d: &str| ModelChoice::Adapter(d.parse().unwrap());
    assert_eq!(models, vec![dg(&d1), dg(&d2), dg(&d1)]);
    // Another base's adapter is refused, naming both bases.
    let (s, v) = call_json(
        &f.app,
        post("/v1/chat/completions", chat_body(&other, "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("trained on base model"),
        "{v}"
    );
    // /v1/models: the base, then the two adapters (the other base's is not listed).
    let (s, v) = call_json(
        &f.app,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{v}");
    assert_eq!(data[0]["id"], "tiny");
    assert_eq!(data[0]["digest"], base.to_hex());
    assert!(data[0]["base"].is_null());
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&"support") && ids.contains(&d1.as_str()),
        "{ids:?}"
    );
    assert!(
        data.iter()
            .all(|m| m["object"] == "model" && m["residency"].is_string())
    );
    assert_eq!(data[1]["base"], base.to_hex());
    let (s, v) = call_json(
        &f.app,
        Request::get("/v1/models/support")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["digest"], d2);
    let (s, _) = call_json(
        &f.app,
        Request::get(format!("/v1/models/{other}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    // A tombstoned adapter is not served.
    f.catalog.names.tombstone(&d1, "alice", 3).await.unwrap();
    let (s, _) = call_json(
        &f.app,
        post("/v1/chat/completions", chat_body(&d1, "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn keys_and_scopes_guard_the_routes_and_usage_is_metered_per_key() {
    let store = mem_store();
    let keys = KeyStore::new(store.clone());
    let (infer, rec) = keys.create("alice", &[Scope::Inference], 0).await.unwrap();
    let (build, _) = keys.create("bob", &[Scope::Build], 0).await.unwrap();
    let f = fixture_with(&Auth::keys(keys), store, 8, Limits::default());
    let with_key = |key: &str| {
        Request::post("/v1/chat/completions")
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .body(Body::from(chat_body("tiny", "hi", json!({}))))
            .unwrap()
    };
    let (s, h, b) = call(
        &f.app,
        post("/v1/chat/completions", chat_body("tiny", "hi", json!({}))),
    )
    .await;
    assert_eq!(s, 401, "{b}");
    assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
    let (s, v) = call_json(&f.app, with_key("trib_0000000000000000000000000000")).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["type"], "authentication_error");
    let (s, v) = call_json(&f.app, with_key(&build)).await;
    assert_eq!(s, 403);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`inference` scope"),
        "{v}"
    );
    let (s, v) = call_json(&f.app, with_key(&infer)).await;
    assert_eq!(s, 200, "{v}");
    let reqs = f.engine.requests.lock().unwrap().clone();
    assert_eq!(reqs[0].identity.as_deref(), Some(rec.id.as_str()));
    // Usage for this key: 3 in, 2 out.
    let m = super::metrics::metrics().unwrap();
    assert_eq!(m.usage_tokens.with_label_values(&[&rec.id, "in"]).get(), 3);
    assert_eq!(m.usage_tokens.with_label_values(&[&rec.id, "out"]).get(), 2);
    // GET /v1/usage: this key's row only (not an admin).
    let req = Request::get("/v1/usage")
        .header(header::AUTHORIZATION, format!("Bearer {infer}"))
        .body(Body::empty())
        .unwrap();
    let (s, v) = call_json(&f.app, req).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["data"][0]["key"], rec.id);
    assert_eq!(v["data"][0]["prompt_tokens"], 3);
    assert_eq!(v["data"][0]["completion_tokens"], 2);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    for name in [
        "tributary_request_ttft_seconds_bucket{class=\"base\"",
        "tributary_request_tpot_seconds_bucket{class=\"base\"",
        "tributary_request_e2e_seconds_bucket{class=\"base\"",
        "tributary_gateway_queue_depth",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn a_client_that_leaves_a_non_streaming_request_cancels_it() {
    use tokio::io::AsyncWriteExt;
    let f = fixture();
    let (addr, _task) = crate::ops::serve(
        "127.0.0.1:0".parse().unwrap(),
        f.app.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let body = chat_body("tiny", "hold", json!({}));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Wait until the engine has the request, then leave.
    let t0 = std::time::Instant::now();
    while f.engine.requests.lock().unwrap().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(s);
    tokio::time::timeout(Duration::from_secs(1), f.engine.cancelled.notified())
        .await
        .expect("the engine saw the non-streaming request cancelled within 1 s");
}
