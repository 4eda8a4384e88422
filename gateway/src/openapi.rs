//! `/openapi.json`: the OpenAPI 3.1 document of every route the gateway serves, written by
//! hand beside the code and checked against the router by a test (every documented
//! operation is routed; no other method is routed on a documented path), so the hardening
//! issue's fuzzer can generate requests from it.

use axum::Json;
use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;

fn err_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        m.insert(
            (*c).to_string(),
            json!({"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(m)
}

fn op(summary: &str, scope: Option<&str>, body: Option<Value>, ok: &str, errors: &[&str]) -> Value {
    let mut responses = err_responses(errors);
    crate::json::set(
        &mut responses,
        ok,
        json!({"description": "success", "content": {"application/json": {}}}),
    );
    let mut o = json!({ "summary": summary, "responses": responses });
    if let Some(s) = scope {
        crate::json::set(&mut o, "security", json!([{ "bearer": [s] }]));
        crate::json::set(&mut o, "x-scope", json!(s));
    }
    if let Some(schema) = body {
        crate::json::set(
            &mut o,
            "requestBody",
            json!({"required": true, "content": {"application/json": {"schema": schema}}}),
        );
    }
    o
}

/// `o` with its `code` response served as `media` types (not JSON): event streams, JSONL,
/// raw files.
fn with_media(mut o: Value, code: &str, media: &[&str]) -> Value {
    let mut content = serde_json::Map::new();
    for m in media {
        let schema = match *m {
            "application/json" => json!({}),
            // OpenAPI 3.1: the schema of an event stream describes each event.
            "text/event-stream" => json!({"schema": {"type": "object", "required": ["data"],
                "properties": {"data": {"type": "string",
                    "description": "one JSON chunk (chat.completion.chunk or text_completion), or [DONE]"},
                    "event": {"type": "string"}}}}),
            _ => json!({"schema": {"type": "string"}}),
        };
        content.insert((*m).to_string(), schema);
    }
    if let Some(resp) = o.get_mut("responses").and_then(|r| r.get_mut(code)) {
        crate::json::set(resp, "content", Value::Object(content));
    }
    o
}

/// An operator endpoint answering plain text with each of `codes`.
fn text_op(summary: &str, codes: &[&str]) -> Value {
    let mut responses = serde_json::Map::new();
    for c in codes {
        responses.insert(
            (*c).to_string(),
            json!({"description": "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}),
        );
    }
    json!({ "summary": summary, "responses": responses })
}

fn sampling_props() -> serde_json::Map<String, Value> {
    let v = json!({
        "model": {"type": "string", "description": "base model name or digest, adapter name, or adapter digest"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "seed": {"type": "integer"},
        "stop": {"oneOf": [{"type": "string", "maxLength": 256}, {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1, "maxLength": 256}}]},
        "n": {"type": "integer", "minimum": 1, "maximum": 16},
        "presence_penalty": {"type": "number", "enum": [0], "description": "only 0 is supported"},
        "frequency_penalty": {"type": "number", "enum": [0], "description": "only 0 is supported"},
        "user": {"type": "string", "maxLength": 256},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "additionalProperties": false, "properties": {"include_usage": {"type": "boolean"}}},
    });
    v.as_object().cloned().unwrap_or_default()
}

fn chat_schema() -> Value {
    let mut props = sampling_props();
    props.insert("messages".into(), json!({"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object", "required": ["type", "text"], "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]},
            "name": {"type": "string"}
        }}}));
    props.insert(
        "max_completion_tokens".into(),
        json!({"type": "integer", "minimum": 1}),
    );
    props.insert("logprobs".into(), json!({"type": "boolean"}));
    props.insert(
        "top_logprobs".into(),
        json!({"type": "integer", "minimum": 0, "maximum": 20}),
    );
    json!({"type": "object", "required": ["model", "messages"], "additionalProperties": false, "properties": props})
}

fn completion_schema() -> Value {
    let mut props = sampling_props();
    props.insert("prompt".into(), json!({"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "string"}}]}));
    props.insert(
        "logprobs".into(),
        json!({"type": "integer", "minimum": 0, "maximum": 5}),
    );
    json!({"type": "object", "required": ["model", "prompt"], "additionalProperties": false, "properties": props})
}

/// The document.
// Indexing the constant document built just above: every indexed value is an object here.
#[allow(clippy::indexing_slicing)]
pub fn document() -> Value {
    let infer = Some("inference");
    let build = Some("build");
    let contribute = Some("contribute");
    let id_param =
        json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let path_param =
        |n: &str| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}});
    let name_param = json!([path_param("name")]);
    let version_params = json!([path_param("name"), path_param("v")]);
    let item_params = json!([path_param("name"), path_param("item")]);
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Tributary gateway", "version": env!("CARGO_PKG_VERSION"),
                 "description": "OpenAI-compatible inference over one base model and many LoRA adapters; adapters, jobs and datanets; operations."},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
                "ChatCompletionRequest": chat_schema(),
                "CompletionRequest": completion_schema(),
                "NewDatanet": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
                    "description": {"type": "string"},
                    "license": {"type": "string", "description": "an SPDX licence identifier"},
                    "license_text": {"type": "string", "description": "a custom licence text (instead of license)"},
                    "terms": {"type": "string", "description": "contribution terms text"},
                    "policy": {"type": "string", "description": "scanner policy, e.g. email=reject,phone=redact"},
                    "review": {"type": "boolean"},
                    "owner": {"type": "string", "description": "admins only"}}},
                "AdapterRegistration": {"type": "object", "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
                    "url": {"type": "string"},
                    "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "files": {"type": "object", "properties": {
                        "adapter_config.json": {"type": "string", "contentEncoding": "base64"},
                        "adapter_model.safetensors": {"type": "string", "contentEncoding": "base64"}}}}}
            }
        },
        "paths": {
            "/v1/chat/completions": {"post": with_media(op("chat completion (stream: true for server-sent events)", infer,
                Some(json!({"$ref": "#/components/schemas/ChatCompletionRequest"})), "200", &["400", "401", "403", "404", "413", "429", "500", "503"]),
                "200", &["application/json", "text/event-stream"])},
            "/v1/completions": {"post": with_media(op("text completion (stream: true for server-sent events)", infer,
                Some(json!({"$ref": "#/components/schemas/CompletionRequest"})), "200", &["400", "401", "403", "404", "413", "429", "500", "503"]),
                "200", &["application/json", "text/event-stream"])},
            "/v1/models": {"get": op("the base model and every adapter (OpenAI list shape, with digest, base, residency)", infer, None, "200", &["401", "403"])},
            "/v1/models/{id}": {"parameters": id_param, "get": op("one model", infer, None, "200", &["401", "403", "404"])},
            "/v1/usage": {"get": op("requests and tokens per API key since start (admins see every key, others their own)", infer, None, "200", &["401", "403"])},
            "/v1/adapters": {
                "post": op("register an adapter (url, registry digest, or upload), optionally under a name", build,
                    Some(json!({"$ref": "#/components/schemas/AdapterRegistration"})), "201", &["400", "401", "403", "404", "413"]),
                "get": op("every live adapter for this base model", build, None, "200", &["401", "403"])},
            "/v1/adapters/{id}": {"parameters": id_param,
                "get": op("one adapter, by name or digest", build, None, "200", &["401", "403", "404"]),
                "delete": op("tombstone an adapter (files stay); 409 while pinned", build, None, "200", &["401", "403", "404", "409"])},
            "/v1/adapters/{id}/pin": {"parameters": id_param,
                "post": op("pin an adapter in the engine (kept resident, not deletable)", build, None, "200", &["401", "403", "404", "503"]),
                "delete": op("unpin an adapter", build, None, "200", &["401", "403", "404", "503"])},
            "/v1/jobs": {
                "post": op("submit a job spec (JSON, or TOML with Content-Type: application/toml)", build,
                    Some(json!({"type": "object"})), "201", &["400", "401", "403"]),
                "get": op("every job", build, None, "200", &["401", "403"])},
            "/v1/jobs/{id}": {"parameters": id_param, "get": op("one job", build, None, "200", &["400", "401", "403", "404"])},
            "/v1/jobs/{id}/cancel": {"parameters": id_param, "post": op("cancel a job", build, None, "202", &["400", "401", "403", "404", "409"])},
            "/v1/jobs/{id}/logs": {"parameters": id_param, "get": op("a job's event lines", build, None, "200", &["400", "401", "403", "404"])},
            "/v1/cluster": {"get": op("coordinators (leader, fencing tokens), workers (membership records, heartbeat ages), etcd (members, leader, status, alarms; null in embedded mode) and this gateway's object store (reachable, read latency)", build, None, "200", &["401", "403", "404"])},
            "/v1/keys": {
                "post": op("create an API key {owner, scopes}; the secret is in the answer, once", Some("admin"),
                    Some(json!({"type": "object", "required": ["owner", "scopes"], "additionalProperties": false, "properties": {
                        "owner": {"type": "string"}, "scopes": {"type": "array", "items": {"enum": ["inference", "build", "contribute", "admin"]}}}})),
                    "201", &["400", "401", "403"]),
                "get": op("every live key (no secrets)", Some("admin"), None, "200", &["401", "403"])},
            "/v1/keys/{id}": {"parameters": id_param, "delete": op("revoke a key", Some("admin"), None, "200", &["401", "403", "404"])},
            "/v1/datanets": {
                "post": op("create a datanet (licence, terms, scanner policy, review; a contributor owns what they create)", contribute,
                    Some(json!({"$ref": "#/components/schemas/NewDatanet"})), "201", &["400", "401", "403", "409", "413"]),
                "get": op("every datanet (name, description, versions, head)", contribute, None, "200", &["401", "403"])},
            "/v1/datanets/{name}": {"parameters": name_param,
                "get": op("one datanet: owner, licence, terms in force, versions", contribute, None, "200", &["400", "401", "403", "404"])},
            "/v1/datanets/{name}/versions/{v}/examples": {"parameters": version_params,
                "get": op("a page of a version's credited examples (?offset, ?limit up to 200; v: digest, prefix, number or latest)", contribute, None, "200", &["400", "401", "403", "404"])},
            "/v1/datanets/{name}/versions/{v}/export": {"parameters": version_params,
                "get": with_media(op("a version as JSONL (application/x-ndjson)", contribute, None, "200", &["400", "401", "403", "404"]),
                    "200", &["application/x-ndjson"])},
            "/v1/datanets/{name}/diff": {"parameters": name_param,
                "get": op("entries added and removed between ?from and ?to", contribute, None, "200", &["400", "401", "403", "404"])},
            "/v1/datanets/{name}/uploads": {"parameters": name_param,
                "post": op("upload JSONL rows (the body); the row-level report: accepted, duplicates, near-duplicates, rejected rows (line, field, reason), scanner findings without the matched text, rows sent to review; 201 published, 202 all pending", contribute,
                    None, "201", &["400", "401", "403", "404", "409", "413"])},
            "/v1/datanets/{name}/takedowns": {"parameters": name_param,
                "post": op("withdraw and erase examples ({examples} or {contributor}, reason): one's own, or anyone's with admin", contribute,
                    Some(json!({"type": "object", "required": ["reason"], "additionalProperties": false, "properties": {
                        "examples": {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                        "contributor": {"type": "string"}, "reason": {"type": "string", "maxLength": 1000}}})),
                    "200", &["400", "401", "403", "404", "409"]),
                "get": op("the append-only takedown log", contribute, None, "200", &["400", "401", "403", "404"])},
            "/v1/datanets/{name}/pending": {"parameters": name_param,
                "get": op("the review queue (owner and admins: every row; contributors: their own)", contribute, None, "200", &["400", "401", "403", "404"])},
            "/v1/datanets/{name}/pending/{item}": {"parameters": item_params,
                "post": op("accept or reject a pending row (owner or admin)", contribute,
                    Some(json!({"type": "object", "required": ["decision"], "additionalProperties": false, "properties": {
                        "decision": {"enum": ["accept", "reject"]}, "reason": {"type": "string", "maxLength": 1000}}})),
                    "200", &["400", "401", "403", "404", "409"])},
            "/v1/datanets/{name}/reputation": {"parameters": name_param,
                "get": op("the contributor leaderboard (?limit up to 1000), or one contributor (?contributor)", contribute, None, "200", &["400", "401", "403", "404"])},
            "/healthz": {"get": text_op("the process is up", &["200"])},
            "/readyz": {"get": text_op("ready to serve (a base model is loaded, not overloaded); 503 says why not", &["200", "503"])},
            "/metrics": {"get": text_op("Prometheus metrics (text exposition format)", &["200", "500"])},
            "/openapi.json": {"get": op("this document", None, None, "200", &[])},
        }
    });
    let paths = &mut doc["paths"];
    paths["/v1/datanets/{name}/uploads"]["get"] = op(
        "the uploads the caller may read, newest first (id, uploader, counts)",
        contribute,
        None,
        "200",
        &["400", "401", "403", "404"],
    );
    let upload_params = json!([path_param("name"), path_param("id")]);
    paths["/v1/datanets/{name}/uploads/{id}"] = json!({"parameters": upload_params,
        "get": op("one upload's stored report", contribute, None, "200", &["401", "403", "404"])});
    paths["/v1/datanets/{name}/uploads/{id}/rejected"] = json!({"parameters": upload_params,
        "get": op("one upload's rejected rows (line, field, reason)", contribute, None, "200", &["401", "403", "404"])});
    paths["/v1/jobs/{id}/metrics"] = json!({"parameters": id_param,
        "get": op("a job's train and eval loss series (from object storage)", build, None, "200", &["400", "401", "403", "404", "503"])});
    paths["/v1/adapters/{id}/files/{file}"] = json!({"parameters": [path_param("id"), path_param("file")],
        "get": with_media(op("one PEFT file of an adapter (adapter_config.json or adapter_model.safetensors)", build, None, "200", &["400", "401", "403", "404"]),
            "200", &["application/json", "application/octet-stream"])});
    paths["/v1/adapters/{id}/gguf"] = json!({"parameters": id_param,
        "get": with_media(op("the adapter as a llama.cpp GGUF LoRA adapter (application/octet-stream); 409 when the gateway lacks the base model's config or the adapter is for another base", build, None, "200", &["401", "403", "404", "409"]),
            "200", &["application/octet-stream"])});
    paths["/v1/rewards"] = json!({"get": op(
        "the reward log in the gateway's store, verified: per-replica result, balances, fees per adapter, recent records (?recent up to 500)",
        contribute, None, "200", &["400", "401", "403", "503"])});
    attribution_paths(&mut doc, &path_param);
    doc
}

/// The attribution read API (`crate::attributions`; shapes in docs/api.md).
#[allow(clippy::indexing_slicing)] // `doc["paths"]` is the object built in `document`
fn attribution_paths(doc: &mut Value, path_param: &dyn Fn(&str) -> Value) {
    let paths = &mut doc["paths"];
    paths["/v1/attributions/{request_id}"] = json!({"parameters": [path_param("request_id")],
        "get": op("an answer's attribution record (scores, evidence, shares, fee split) and its reward once acknowledged; the requesting key or an admin", Some("inference"), None, "200", &["401", "403", "404", "503"])});
    paths["/v1/attributions/{request_id}/rerun"] = json!({"parameters": [path_param("request_id")],
        "post": op("recompute an answer's scores, shares and fee split from the stored index, data and features; whether the bits match the record (digests, first difference); one at a time per gateway (429 with Retry-After)", Some("inference"), None, "200", &["401", "403", "404", "409", "429", "503"])});
    paths["/v1/contributors/{id}/rewards"] = json!({"parameters": [path_param("id")],
        "get": op("an identity's rewards from attributed answers, in answer order (that identity or an admin); `?limit=N` (1 to 10000) pages, `?after=` takes the previous page's `next`", Some("contribute"), None, "200", &["400", "401", "403", "503"])});
    paths["/v1/adapters/{id}/contributors"] = json!({"parameters": [path_param("id")],
        "get": op("who made an adapter useful, all time: fees and parts per identity", Some("build"), None, "200", &["401", "403", "404", "503"])});
}

/// Which optional parts of the API a process serves (a gateway without a base model has
/// no OpenAI or adapter routes, one without a coordinator no job routes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    /// The OpenAI API and the adapter routes (a base model is loaded).
    pub inference: bool,
    /// The job API and `/v1/cluster` (a coordinator is attached).
    pub jobs: bool,
    /// `/v1/keys` (API keys are on).
    pub keys: bool,
}

impl Served {
    /// Every part.
    pub const ALL: Served = Served {
        inference: true,
        jobs: true,
        keys: true,
    };
}

/// The paths only served with a base model.
const INFERENCE_PATHS: [&str; 10] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/models/{id}",
    "/v1/usage",
    "/v1/adapters",
    "/v1/adapters/{id}",
    "/v1/adapters/{id}/pin",
    "/v1/adapters/{id}/files/{file}",
    "/v1/adapters/{id}/gguf",
];
/// The paths only served with a coordinator.
const JOB_PATHS: [&str; 6] = [
    "/v1/jobs",
    "/v1/jobs/{id}",
    "/v1/jobs/{id}/cancel",
    "/v1/jobs/{id}/logs",
    "/v1/jobs/{id}/metrics",
    "/v1/cluster",
];
const KEY_PATHS: [&str; 2] = ["/v1/keys", "/v1/keys/{id}"];

/// The document of what `served` routes: a path this process answers with `no_route` is
/// not in it (a client generating requests from the document would get undocumented 404s).
pub fn document_for(served: Served) -> Value {
    let mut doc = document();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        let gone = [
            (!served.inference, &INFERENCE_PATHS[..]),
            (!served.jobs, &JOB_PATHS[..]),
            (!served.keys, &KEY_PATHS[..]),
        ];
        for (absent, list) in gone {
            if absent {
                for p in list {
                    paths.remove(*p);
                }
            }
        }
    }
    doc
}

/// `GET /openapi.json`: the document of the parts in `served`.
pub fn openapi_router(served: Served) -> Router {
    let doc = Arc::new(document_for(served));
    Router::new().route(
        "/openapi.json",
        get(move || {
            let doc = doc.clone();
            async move { Json(doc.as_ref().clone()) }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_only_the_parts_served() {
        let all = document_for(Served::ALL);
        let bare = document_for(Served {
            inference: false,
            jobs: false,
            keys: false,
        });
        let paths = |d: &Value| d["paths"].as_object().map_or(0, |p| p.len());
        assert_eq!(paths(&all), paths(&document()));
        assert_eq!(
            paths(&bare) + INFERENCE_PATHS.len() + JOB_PATHS.len() + KEY_PATHS.len(),
            paths(&all)
        );
        for p in INFERENCE_PATHS.iter().chain(&JOB_PATHS).chain(&KEY_PATHS) {
            assert!(all["paths"].get(*p).is_some(), "{p} is documented");
            assert!(bare["paths"].get(*p).is_none(), "{p} is not served bare");
        }
        // What every process serves stays.
        assert!(bare["paths"].get("/v1/datanets").is_some());
        assert!(
            bare["paths"]
                .get("/v1/adapters/{id}/contributors")
                .is_some()
        );
    }
}
