//! The adapter API over a memory store and the test-only `ScriptedEngine`.
// Tests use fresh store names and real time.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;

use axum::http::{Request, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tributary_ledger::keys::{KeyStore, Scope};
use tributary_protocol::Digest;

use super::*;
use crate::openai::tests::ScriptedEngine;

struct Fx {
    app: Router,
    alice: String,
    bob: String,
    admin: String,
    catalog: Catalog,
}

async fn fx() -> Fx {
    let store = Store::open(&format!("memory://adapters-{}", rand::random::<u64>())).unwrap();
    let keys = KeyStore::new(store.clone());
    let (alice, _) = keys.create("alice", &[Scope::Build], 0).await.unwrap();
    let (bob, _) = keys
        .create("bob", &[Scope::Build, Scope::Inference], 0)
        .await
        .unwrap();
    let (admin, _) = keys.create("ops", &[Scope::Admin], 0).await.unwrap();
    let catalog = Catalog::new(store, Arc::new(ScriptedEngine::default()));
    let app = adapter_router(
        AdaptersState {
            catalog: catalog.clone(),
            max_body_bytes: 1 << 20,
            base_model: None,
            allow: tributary_worker::AllowPaths::only([std::env::temp_dir()]).unwrap(),
        },
        &Auth::keys(keys),
    );
    Fx {
        app,
        alice,
        bob,
        admin,
        catalog,
    }
}

async fn call(app: &Router, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(if body.is_null() {
            String::new()
        } else {
            body.to_string()
        }))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn upload(weights: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"adapter_config.json": b64(r#"{"r": 4, "peft_type": "LORA"}"#),
           "adapter_model.safetensors": b64(weights)})
}

#[tokio::test]
async fn upload_name_list_show_delete() {
    let f = fx().await;
    let (s, v) = call(
        &f.app,
        "POST",
        "/v1/adapters",
        &f.alice,
        json!({"name": "bot", "files": upload("w1")}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let d1 = v["digest"].as_str().unwrap().to_string();
    assert_eq!(v["names"], json!(["bot"]));
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["base"], Digest::of(b"base").to_hex());
    assert_eq!(v["residency"], "store");
    // bob cannot take alice's name, but may register under his own.
    let (s, v) = call(
        &f.app,
        "POST",
        "/v1/adapters",
        &f.bob,
        json!({"name": "bot", "files": upload("w2")}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owned by alice")
    );
    // A registry digest gets a second name.
    let (s, v) = call(
        &f.app,
        "POST",
        "/v1/adapters",
        &f.alice,
        json!({"name": "bot-stable", "digest": d1}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&f.app, "GET", "/v1/adapters", &f.bob, Value::Null).await;
    assert_eq!(s, 200);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{v}");
    let (s, v) = call(&f.app, "GET", "/v1/adapters/bot", &f.bob, Value::Null).await;
    assert_eq!(s, 200);
    assert_eq!(v["digest"], d1);
    // Only the owner (or an admin) deletes; the files stay, the adapter is unlisted.
    let (s, _) = call(&f.app, "DELETE", "/v1/adapters/bot", &f.bob, Value::Null).await;
    assert_eq!(s, 403);
    let (s, v) = call(&f.app, "DELETE", "/v1/adapters/bot", &f.alice, Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deleted"], true);
    let (_, v) = call(&f.app, "GET", "/v1/adapters", &f.alice, Value::Null).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let (s, v) = call(
        &f.app,
        "GET",
        &format!("/v1/adapters/{d1}"),
        &f.alice,
        Value::Null,
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["deleted_unix_ms"].as_u64().is_some(), "{v}");
    assert!(
        f.catalog
            .registry
            .files(&f.catalog.registry.get(&d1).await.unwrap().unwrap())
            .await
            .is_ok()
    );
    let (s, _) = call(
        &f.app,
        "DELETE",
        "/v1/adapters/missing",
        &f.admin,
        Value::Null,
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn bad_registrations_name_the_problem() {
    let f = fx().await;
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = format!("file://{}", empty.path().display());
    for (body, status, needle) in [
        (json!({}), 400, "exactly one"),
        (
            json!({"files": {"adapter_config.json": "e30="}}),
            400,
            "adapter_model.safetensors is missing",
        ),
        (
            json!({"files": {"adapter_config.json": "e30=", "adapter_model.safetensors": "!!"}}),
            400,
            "base64",
        ),
        (
            json!({"files": upload("w"), "extra": 1}),
            400,
            "unknown field",
        ),
        (json!({"digest": "abc"}), 400, "64 lowercase hex"),
        (json!({"digest": "a".repeat(64)}), 404, "no live adapter"),
        (json!({"url": empty_dir}), 400, "has no adapter_config.json"),
        // A local directory outside --allow-path is refused before anything is read.
        (json!({"url": "/etc"}), 400, "--allow-path"),
        (json!({"url": "file:///etc"}), 400, "--allow-path"),
        (
            json!({"name": "Bad Name", "files": upload("w")}),
            400,
            "not allowed",
        ),
    ] {
        let (s, v) = call(&f.app, "POST", "/v1/adapters", &f.alice, body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    // Without the build scope: 403; without a key: 401.
    let store = Store::open(&format!("memory://adapters-{}", rand::random::<u64>())).unwrap();
    let keys = KeyStore::new(store.clone());
    let (infer, _) = keys.create("carol", &[Scope::Inference], 0).await.unwrap();
    let app = adapter_router(
        AdaptersState {
            catalog: Catalog::new(store, Arc::new(ScriptedEngine::default())),
            max_body_bytes: 1024,
            base_model: None,
            allow: tributary_worker::AllowPaths::Only(Vec::new()),
        },
        &Auth::keys(keys),
    );
    assert_eq!(
        call(&app, "GET", "/v1/adapters", &infer, Value::Null)
            .await
            .0,
        403
    );
    assert_eq!(
        call(&app, "GET", "/v1/adapters", "", Value::Null).await.0,
        401
    );
}

#[tokio::test]
async fn gguf_download_without_the_base_model_says_why() {
    let f = fx().await;
    let (s, v) = call(
        &f.app,
        "POST",
        "/v1/adapters",
        &f.alice,
        json!({"name": "bot", "files": upload("w1")}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &f.app,
        "GET",
        "/v1/adapters/bot/gguf",
        &f.alice,
        Value::Null,
    )
    .await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("--base-model") && msg.contains("export-lora"),
        "{msg}"
    );
    let (s, _) = call(
        &f.app,
        "GET",
        "/v1/adapters/nope/gguf",
        &f.alice,
        Value::Null,
    )
    .await;
    assert_eq!(s, 404);
}
