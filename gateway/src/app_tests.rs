//! The assembled gateway: `/openapi.json` against the router (no drift), the JSON 404,
//! `/readyz`, and the job API behind auth.
// Tests use fresh store names and real time.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tributary_coordinator::{CoordError, JobRecord};
use tributary_ledger::keys::{KeyStore, Scope};
use tributary_protocol::{BoxFuture, JobId, JobSpec};

use super::*;
use crate::openai::tests::ScriptedEngine;

/// A test-only job API: records submissions, knows no jobs.
#[derive(Default)]
struct RecordingJobs(std::sync::Mutex<Vec<JobSpec>>);

impl JobApi for RecordingJobs {
    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, Result<JobId, CoordError>> {
        self.0.lock().unwrap().push(spec);
        Box::pin(async { Ok(JobId::new("job-000000000001").unwrap()) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn get(&self, _id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>, CoordError>> {
        Box::pin(async { Ok(None) })
    }
    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<(), CoordError>> {
        Box::pin(async move { Err(CoordError::NoSuchJob(id.to_string())) })
    }
}

fn parts(auth: Auth, store: Store, jobs: Arc<RecordingJobs>) -> Parts {
    Parts {
        reward_log: None,
        auth,
        store,
        engine: Some(Arc::new(ScriptedEngine::default())),
        jobs: Some(jobs),
        ready: Arc::new(|| Box::pin(async { Ok(()) })),
        config: ServeConfig::default(),
    }
}

fn mem() -> Store {
    Store::open(&format!("memory://app-{}", rand::random::<u64>())).unwrap()
}

async fn send(
    app: &Router,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let resp = app
        .clone()
        .oneshot(
            req.header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let s = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (
        s,
        serde_json::from_slice(&b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into())),
    )
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else_on_its_path() {
    let store = mem();
    let keys = KeyStore::new(store.clone());
    let (admin, _) = keys.create("ops", &[Scope::Admin], 0).await.unwrap();
    let app = app(parts(Auth::keys(keys), store, Arc::default()));
    let (s, doc) = send(&app, Method::GET, "/openapi.json", None, "").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 13);
    let all = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "job-000000000009")
            .replace("{name}", "nodata")
            .replace("{v}", "latest")
            .replace("{item}", "item-1")
            .replace("{file}", "adapter_config.json");
        for m in &all {
            let documented = item.get(m.as_str().to_lowercase()).is_some();
            let (s, body) = send(&app, m.clone(), &concrete, Some(&admin), "{}").await;
            if documented {
                assert_ne!(s, 405, "{m} {path} is documented but not routed");
                assert_ne!(
                    body["error"]["code"], "no_route",
                    "{m} {path} is documented but not routed"
                );
            } else {
                assert_eq!(s, 405, "{m} {path} is routed but not documented ({body})");
            }
        }
    }
    let (s, v) = send(&app, Method::GET, "/v1/nothing", None, "").await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "no_route");
}

#[tokio::test]
async fn admins_make_and_revoke_keys_and_others_cannot() {
    let store = mem();
    let keys = KeyStore::new(store.clone());
    let (admin, _) = keys.create("ops", &[Scope::Admin], 0).await.unwrap();
    let (build, _) = keys.create("b", &[Scope::Build], 0).await.unwrap();
    let app = app(parts(Auth::keys(keys), store, Arc::default()));
    let body = r#"{"owner":"carol","scopes":["inference"]}"#;
    assert_eq!(
        send(&app, Method::POST, "/v1/keys", Some(&build), body)
            .await
            .0,
        403
    );
    let (s, v) = send(&app, Method::POST, "/v1/keys", Some(&admin), body).await;
    assert_eq!(s, 201, "{v}");
    let carol = v["key"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        send(&app, Method::GET, "/v1/models", Some(&carol), "")
            .await
            .0,
        200
    );
    assert_eq!(
        send(&app, Method::GET, "/v1/adapters", Some(&carol), "")
            .await
            .0,
        403
    );
    let (_, v) = send(&app, Method::GET, "/v1/keys", Some(&admin), "").await;
    assert!(!v.to_string().contains(&carol), "no secrets in the list");
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    let (s, v) = send(
        &app,
        Method::POST,
        "/v1/keys",
        Some(&admin),
        r#"{"owner":"x","scopes":["root"]}"#,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("root"));
    assert_eq!(
        send(
            &app,
            Method::DELETE,
            &format!("/v1/keys/{id}"),
            Some(&admin),
            ""
        )
        .await
        .0,
        200
    );
    assert_eq!(
        send(&app, Method::GET, "/v1/models", Some(&carol), "")
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn the_job_api_needs_a_build_key_and_records_the_owner() {
    let store = mem();
    let keys = KeyStore::new(store.clone());
    let (build, _) = keys.create("builder-1", &[Scope::Build], 0).await.unwrap();
    let (infer, _) = keys.create("user-1", &[Scope::Inference], 0).await.unwrap();
    let jobs = Arc::new(RecordingJobs::default());
    let app = app(parts(Auth::keys(keys), store.clone(), jobs.clone()));
    let spec = r#"{"base_model":"m","data":"d","train":{"steps":1},"name":"my-bot","owner":"someone-else"}"#;
    assert_eq!(
        send(&app, Method::POST, "/v1/jobs", None, spec).await.0,
        401
    );
    assert_eq!(
        send(&app, Method::POST, "/v1/jobs", Some(&infer), spec)
            .await
            .0,
        403
    );
    assert_eq!(
        send(&app, Method::GET, "/v1/jobs", Some(&infer), "")
            .await
            .0,
        403
    );
    let (s, v) = send(&app, Method::POST, "/v1/jobs", Some(&build), spec).await;
    assert_eq!(s, 201, "{v}");
    let got = jobs.0.lock().unwrap()[0].clone();
    assert_eq!(
        got.owner.as_deref(),
        Some("builder-1"),
        "the caller, not the body"
    );
    assert_eq!(got.name.as_deref(), Some("my-bot"));
    // A name someone else owns is refused at submit.
    AdapterNames::new(store)
        .claim("taken", &"a".repeat(64), "other", 0)
        .await
        .unwrap();
    let spec = r#"{"base_model":"m","data":"d","train":{"steps":1},"name":"taken"}"#;
    let (s, v) = send(&app, Method::POST, "/v1/jobs", Some(&build), spec).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("owned by other")
    );
    let spec = r#"{"base_model":"m","data":"d","train":{"steps":1},"name":"Bad Name"}"#;
    let (s, v) = send(&app, Method::POST, "/v1/jobs", Some(&build), spec).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "name");
    // Operations routes stay open.
    assert_eq!(send(&app, Method::GET, "/healthz", None, "").await.0, 200);
    assert_eq!(send(&app, Method::GET, "/readyz", None, "").await.0, 200);
}
