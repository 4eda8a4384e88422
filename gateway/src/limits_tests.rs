//! The limits against a real server on loopback.
// Tests use fresh store names and real time.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;

use super::*;

const UPLOAD_LIMIT: usize = 4096;

fn post_req(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn server(limits: Limits) -> std::net::SocketAddr {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        )
        .route("/echo", post(|b: Bytes| async move { b.len().to_string() }))
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        // An upload route with a limit of its own, as the adapter upload has.
        .route(
            crate::adapters::UPLOAD_ROUTE,
            post(|b: axum::body::Body| async move {
                match crate::openai::read_body(b, UPLOAD_LIMIT).await {
                    Ok(bytes) => bytes.len().to_string().into_response(),
                    Err(e) => e.into_response(),
                }
            }),
        );
    let app = apply(app, limits);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// One raw HTTP/1.1 request; returns the status line and headers, lower-cased.
async fn raw(addr: std::net::SocketAddr, req: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_lowercase()
}

fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_timeouts_and_big_bodies_get_clear_refusals() {
    let addr = server(Limits {
        max_body_bytes: 16,
        request_timeout: Duration::from_millis(200),
        max_in_flight: 1,
        retry_after_secs: 2,
    })
    .await;
    // Over the body limit, declared up front.
    let body = "x".repeat(17);
    let r = raw(
        addr,
        format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 17\r\nconnection: close\r\n\r\n{body}"
        ),
    )
    .await;
    assert!(r.starts_with("http/1.1 413"), "{r}");
    let r = raw(
        addr,
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
            .into(),
    )
    .await;
    assert!(r.starts_with("http/1.1 200") && r.ends_with("3"), "{r}");
    // Slower than the timeout: 503 with Retry-After.
    let r = raw(addr, get_req("/slow")).await;
    assert!(r.starts_with("http/1.1 503"), "{r}");
    assert!(
        r.contains("retry-after: 2") && r.contains("timed out"),
        "{r}"
    );
    // A handler's own 503 gets Retry-After too.
    let r = raw(addr, get_req("/down")).await;
    assert!(
        r.starts_with("http/1.1 503") && r.contains("retry-after: 2"),
        "{r}"
    );
    // One in flight: a second at the same time is refused at once.
    let first = tokio::spawn(raw(addr, get_req("/slow")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = std::time::Instant::now();
    let r = raw(addr, get_req("/down")).await;
    assert!(
        r.contains("server busy") && r.contains("retry-after: 2"),
        "{r}"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(150),
        "refused without waiting"
    );
    first.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_routes_are_held_to_their_own_limit_not_the_servers() {
    let addr = server(Limits {
        max_body_bytes: 16,
        ..Limits::default()
    })
    .await;
    let body = "x".repeat(1000);
    // Over the server's 16 bytes, under the route's own 4096: taken whole.
    let r = raw(addr, post_req("/v1/adapters", &body)).await;
    assert!(r.starts_with("http/1.1 200") && r.ends_with("1000"), "{r}");
    // The same body to any other route: the server's limit.
    let r = raw(addr, post_req("/echo", &body)).await;
    assert!(r.starts_with("http/1.1 413"), "{r}");
    // Over the route's own limit: 413 too, from the route.
    let r = raw(
        addr,
        post_req("/v1/adapters", &"x".repeat(UPLOAD_LIMIT + 1)),
    )
    .await;
    assert!(r.starts_with("http/1.1 413") && r.contains("4096"), "{r}");
}
