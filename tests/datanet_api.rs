//! The datanet HTTP API against a live `tributary dev`: a contributor creates a datanet and
//! uploads rows with bad ones among them and reads the row-level report; a `<script>` row
//! comes back escaped; previews page and are bounded; a takedown of someone else's
//! example is a 403 naming it, one's own goes through and is logged; the owner reviews a
//! queue; the leaderboard counts; unknown names and licences are 400/404s naming them.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A request; returns (status, content type, raw body).
fn call(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

/// A JSON request; returns (status, parsed body).
fn api(port: u16, method: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (code, _, raw) = call(port, method, path, Some(key), &text);
    let v = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{method} {path}: {e}: {raw}"));
    (code, v)
}

fn row(q: &str, a: &str) -> String {
    json!({"prompt": q, "completion": a}).to_string() + "\n"
}

fn new_key(port: u16, admin: &str, owner: &str) -> String {
    let (s, v) = api(
        port,
        "POST",
        "/v1/keys",
        admin,
        json!({"owner": owner, "scopes": ["contribute"]}),
    );
    assert_eq!(s, 201, "{v}");
    v["key"].as_str().unwrap().to_string()
}

fn upload(port: u16, name: &str, key: &str, rows: &str) -> (u16, Value) {
    let (code, _, raw) = call(
        port,
        "POST",
        &format!("/v1/datanets/{name}/uploads"),
        Some(key),
        rows,
    );
    (
        code,
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}")),
    )
}

#[test]
fn datanets_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(tmp.path(), 1);
    let (port, admin) = (dev.port, dev.key());
    let alice = new_key(port, &admin, "alice");
    let bob = new_key(port, &admin, "bob");

    // Bad input: an unknown licence names itself; an unknown datanet is a 404 naming it.
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets",
        &alice,
        json!({"name": "x", "license": "CC-BY-5.0"}),
    );
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("license")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CC-BY-5.0"),
        "{v}"
    );
    let (s, v) = api(port, "GET", "/v1/datanets/nosuch", &alice, Value::Null);
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nosuch"),
        "{v}"
    );
    let (s, v) = upload(port, "nosuch", &alice, &row("q", "a"));
    assert_eq!(s, 404, "{v}");
    let (s, _, _) = call(port, "GET", "/v1/datanets", None, "");
    assert_eq!(s, 401);

    // Alice creates a datanet she owns.
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets",
        &alice,
        json!({"name": "docs", "description": "docs Q&A", "license": "MIT"}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["owner"].as_str(), v["license"].as_str()),
        (Some("alice"), Some("MIT")),
        "{v}"
    );
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets",
        &alice,
        json!({"name": "docs"}),
    );
    assert_eq!(s, 409, "{v}");

    // An upload with bad rows: the row-level report.
    let script = "<script>alert(1)</script> is how pages get owned";
    let rows = [
        row(
            "What is a LoRA adapter?",
            "A low-rank update to a model's weights.",
        ),
        row("How do I escape HTML?", script),
        row(
            "What is a LoRA adapter?",
            "A low-rank update to a model's weights.",
        ),
        "{not json\n".to_string(),
        json!({"prompt": "no answer"}).to_string() + "\n",
        row(
            "Who answers questions?",
            "Write to carol.k@example.org please.",
        ),
    ]
    .concat();
    let (s, r) = upload(port, "docs", &alice, &rows);
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["rows"], 6, "{r}");
    assert_eq!(r["accepted"], 3, "{r}");
    assert_eq!(r["duplicates"], 1, "{r}");
    let rejected = r["rejected"].as_array().unwrap();
    let lines: Vec<u64> = rejected
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [4, 5], "{r}");
    assert!(
        rejected
            .iter()
            .all(|e| !e["reason"].as_str().unwrap().is_empty()),
        "{r}"
    );
    assert_eq!(r["scan"][0]["kind"], "email", "{r}");
    assert_eq!(r["scan"][0]["line"], 6, "{r}");
    assert!(
        !r.to_string().contains("carol.k@"),
        "the report echoes the secret: {r}"
    );

    // The preview pages, is bounded, and escapes markup.
    let (code, ctype, raw) = call(
        port,
        "GET",
        "/v1/datanets/docs/versions/latest/examples?limit=2",
        Some(&alice),
        "",
    );
    assert_eq!(code, 200, "{raw}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    assert!(
        !raw.contains("<script>"),
        "raw markup in a JSON answer: {raw}"
    );
    assert!(raw.contains("\\u003cscript\\u003e"), "{raw}");
    let page: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (
            page["total"].as_u64(),
            page["data"].as_array().unwrap().len()
        ),
        (Some(3), 2),
        "{page}"
    );
    let (_, all) = api(
        port,
        "GET",
        "/v1/datanets/docs/versions/1/examples",
        &alice,
        Value::Null,
    );
    let texts = all["data"].to_string();
    assert!(
        texts.contains(script),
        "the parsed text is the original: {texts}"
    );
    assert!(!texts.contains("carol.k@"), "{texts}");
    let (s, v) = api(
        port,
        "GET",
        "/v1/datanets/docs/versions/latest/examples?limit=100000",
        &alice,
        Value::Null,
    );
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("limit")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("200"),
        "{v}"
    );
    let (s, v) = api(
        port,
        "GET",
        "/v1/datanets/docs/versions/9/examples",
        &alice,
        Value::Null,
    );
    assert_eq!(s, 404, "{v}");
    let (code, ctype, raw) = call(
        port,
        "GET",
        "/v1/datanets/docs/versions/latest/export",
        Some(&alice),
        "",
    );
    assert_eq!((code, raw.lines().count()), (200, 3), "{raw}");
    assert!(
        ctype.contains("ndjson") && !raw.contains('<'),
        "{ctype} {raw}"
    );

    // Bob contributes; he cannot take down Alice's example (403 naming it).
    let (s, r) = upload(
        port,
        "docs",
        &bob,
        &row("What does bob know?", "Bob knows rebasing."),
    );
    assert_eq!((s, r["accepted"].as_u64()), (201, Some(1)), "{r}");
    let (_, all) = api(
        port,
        "GET",
        "/v1/datanets/docs/versions/latest/examples",
        &bob,
        Value::Null,
    );
    let of = |who: &str| -> Vec<String> {
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["contributor"] == who)
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (alices, bobs) = (of("alice"), of("bob"));
    assert_eq!((alices.len(), bobs.len()), (3, 1), "{all}");
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets/docs/takedowns",
        &bob,
        json!({"examples": [alices[0]], "reason": "I want it gone"}),
    );
    assert_eq!(s, 403, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains(&alices[0]),
        "{v}"
    );
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets/docs/takedowns",
        &bob,
        json!({"examples": [bobs[0]]}),
    );
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("reason")),
        "{v}"
    );
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets/docs/takedowns",
        &bob,
        json!({"examples": [bobs[0]], "reason": "changed my mind"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["withdrawn"][0]["id"], bobs[0].as_str(), "{v}");
    let (s, log) = api(
        port,
        "GET",
        "/v1/datanets/docs/takedowns",
        &alice,
        Value::Null,
    );
    assert_eq!(
        (s, log["data"].as_array().unwrap().len()),
        (200, 1),
        "{log}"
    );
    assert_eq!(log["data"][0]["entry"]["actor"], "bob", "{log}");

    // Show and diff.
    let (s, shown) = api(port, "GET", "/v1/datanets/docs", &bob, Value::Null);
    assert_eq!(s, 200, "{shown}");
    assert_eq!(shown["versions"].as_array().unwrap().len(), 3, "{shown}");
    assert_eq!(shown["takedowns"], 1, "{shown}");
    let (s, d) = api(
        port,
        "GET",
        "/v1/datanets/docs/diff?from=1&to=2",
        &bob,
        Value::Null,
    );
    assert_eq!(
        (s, d["added"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{d}"
    );
    let (s, v) = api(
        port,
        "GET",
        "/v1/datanets/docs/diff?from=1",
        &bob,
        Value::Null,
    );
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("to")), "{v}");

    // Review: Alice's queue datanet holds Bob's rows until she decides.
    let (s, v) = api(
        port,
        "POST",
        "/v1/datanets",
        &alice,
        json!({"name": "queue", "license": "CC-BY-4.0", "review": true}),
    );
    assert_eq!(s, 201, "{v}");
    let (s, r) = upload(
        port,
        "queue",
        &bob,
        &[
            row("Keep this?", "Yes, it is useful."),
            row("And this?", "No, it is noise."),
        ]
        .concat(),
    );
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["pending"].as_array().unwrap().len(), 2, "{r}");
    let (_, mine) = api(port, "GET", "/v1/datanets/queue/pending", &bob, Value::Null);
    let items: Vec<String> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["item"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(items.len(), 2, "{mine}");
    let decide = |key: &str, item: &str, body: Value| {
        api(
            port,
            "POST",
            &format!("/v1/datanets/queue/pending/{item}"),
            key,
            body,
        )
    };
    let (s, v) = decide(&bob, &items[0], json!({"decision": "accept"}));
    assert_eq!(s, 403, "the contributor accepted his own row: {v}");
    let (s, v) = decide(&alice, &items[0], json!({"decision": "maybe"}));
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("decision")),
        "{v}"
    );
    let (s, v) = decide(&alice, &items[0], json!({"decision": "accept"}));
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = decide(
        &alice,
        &items[1],
        json!({"decision": "reject", "reason": "noise"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rejected"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, v) = decide(&alice, &items[1], json!({"decision": "accept"}));
    assert_eq!(s, 404, "a decided item is still pending: {v}");
    let (_, left) = api(
        port,
        "GET",
        "/v1/datanets/queue/pending",
        &alice,
        Value::Null,
    );
    assert_eq!(left["data"].as_array().map(Vec::len), Some(0), "{left}");

    // Reputation.
    let (s, board) = api(
        port,
        "GET",
        "/v1/datanets/queue/reputation",
        &alice,
        Value::Null,
    );
    assert_eq!(s, 200, "{board}");
    let b = &board["data"][0];
    assert_eq!(
        (
            b["contributor"].as_str(),
            b["accepted"].as_u64(),
            b["rejected"].as_u64()
        ),
        (Some("bob"), Some(1), Some(1)),
        "{board}"
    );
    let (s, board) = api(
        port,
        "GET",
        "/v1/datanets/docs/reputation",
        &alice,
        Value::Null,
    );
    assert_eq!(s, 200, "{board}");
    let alice_rep = board["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["contributor"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            alice_rep["accepted"].as_u64(),
            alice_rep["duplicates"].as_u64()
        ),
        (Some(3), Some(1)),
        "{board}"
    );
    let (s, v) = api(
        port,
        "GET",
        "/v1/datanets/docs/reputation?limit=5000",
        &alice,
        Value::Null,
    );
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("limit")),
        "{v}"
    );

    // The list.
    let (s, list) = api(port, "GET", "/v1/datanets", &bob, Value::Null);
    assert_eq!(s, 200);
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["docs", "queue"], "{list}");
}
