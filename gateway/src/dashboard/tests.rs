//! The dashboard in-process (no browser): login turns a key into an `HttpOnly`,
//! `SameSite=Strict` session cookie; pages without a session go to the login form; a form
//! without the session's CSRF token is refused; a multipart upload lands on its stored
//! report; a `<script>` row and a description with markup show escaped; logout ends the
//! session.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, header};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tributary_ledger::keys::{KeyStore, Scope};
use tributary_ledger::store::Store;

use crate::app::{Parts, ServeConfig, app};
use crate::auth::Auth;

struct Resp {
    status: u16,
    location: String,
    cookies: Vec<String>,
    csp: bool,
    body: String,
}

async fn send(
    app: &axum::Router,
    method: Method,
    path: &str,
    cookie: &str,
    ctype: &str,
    body: &str,
) -> Resp {
    let r = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, ctype)
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let h = r.headers().clone();
    let get = |k: header::HeaderName| {
        h.get_all(k)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    Resp {
        status: r.status().as_u16(),
        location: get(header::LOCATION).join(""),
        cookies: get(header::SET_COOKIE),
        csp: h.contains_key(header::CONTENT_SECURITY_POLICY),
        body: String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes())
            .into_owned(),
    }
}

fn cookie_value(set: &[String], name: &str) -> String {
    set.iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string()
}

fn meta_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf-token\" content=\"").unwrap() + 27;
    html[at..at + 64].to_string()
}

#[tokio::test]
#[allow(clippy::disallowed_methods)] // takes fresh entropy
async fn login_csrf_escaping_scopes_and_logout() {
    let store = Store::open(&format!("memory://dash-{}", rand::random::<u64>())).unwrap();
    let keys = KeyStore::new(store.clone());
    let (alice, _) = keys.create("alice", &[Scope::Contribute], 0).await.unwrap();
    let app = app(Parts {
        reward_log: None,
        auth: Auth::keys(keys),
        store,
        engine: None,
        jobs: None,
        ready: Arc::new(|| Box::pin(async { Ok(()) })),
        config: ServeConfig::default(),
    });
    let form = "application/x-www-form-urlencoded";

    let r = send(&app, Method::GET, "/datanets", "", "", "").await;
    assert_eq!((r.status, r.location.as_str()), (303, "/login"));
    let r = send(&app, Method::GET, "/login", "", "", "").await;
    assert!(r.csp && r.body.contains("API key"), "{}", r.body);
    let login_csrf = cookie_value(&r.cookies, "tributary_login_csrf");
    let lc = format!("tributary_login_csrf={login_csrf}");
    // A login post without the double-submit cookie's value is refused.
    let r = send(
        &app,
        Method::POST,
        "/login",
        &lc,
        form,
        &format!("csrf={}&key={alice}", "0".repeat(64)),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        &app,
        Method::POST,
        "/login",
        &lc,
        form,
        &format!("csrf={login_csrf}&key=trib_nope"),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        &app,
        Method::POST,
        "/login",
        &lc,
        form,
        &format!("csrf={login_csrf}&key={alice}"),
    )
    .await;
    assert_eq!((r.status, r.location.as_str()), (303, "/datanets"));
    let set = r.cookies.join("\n");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(&alice), "the key is never in a cookie");
    let sc = format!(
        "tributary_session={}",
        cookie_value(&r.cookies, "tributary_session")
    );

    let r = send(&app, Method::GET, "/datanets", &sc, "", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.csp && r.body.contains("/v1/datanets"));
    let csrf = meta_csrf(&r.body);
    // A form without the session's token is refused; with it, the datanet is made.
    let r = send(
        &app,
        Method::POST,
        "/datanets",
        &sc,
        form,
        "csrf=bad&name=docs",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        &app,
        Method::POST,
        "/datanets",
        &sc,
        form,
        &format!("csrf={csrf}&name=docs&description=%3Ci%3Eit%3C%2Fi%3E"),
    )
    .await;
    assert_eq!(
        (r.status, r.location.as_str()),
        (303, "/datanets/docs"),
        "{}",
        r.body
    );

    // An upload through the page (multipart) with a bad row and a <script> row.
    let rows =
        "{\"prompt\": \"q1\", \"completion\": \"<script>alert(1)</script> a1\"}\n{not json\n";
    let mp = format!(
        "--XX\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--XX\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"r.jsonl\"\r\n\
         Content-Type: application/x-ndjson\r\n\r\n{rows}\r\n--XX--\r\n"
    );
    let r = send(
        &app,
        Method::POST,
        "/datanets/docs/upload",
        &sc,
        "multipart/form-data; boundary=XX",
        &mp,
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location.starts_with("/datanets/docs/uploads/u"),
        "{}",
        r.location
    );
    let report = send(&app, Method::GET, &r.location, &sc, "", "").await;
    assert!(
        report.body.contains("id=\"rejected\">1<"),
        "{}",
        report.body
    );
    assert!(
        report.body.contains("<td>2</td>"),
        "the bad row's line: {}",
        report.body
    );
    let page = send(&app, Method::GET, "/datanets/docs", &sc, "", "").await;
    assert!(page.body.contains("&lt;i&gt;it&lt;/i&gt;") && !page.body.contains("<i>it</i>"));
    let ex = send(
        &app,
        Method::GET,
        "/datanets/docs/examples?v=latest",
        &sc,
        "",
        "",
    )
    .await;
    assert!(
        ex.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        ex.body
    );
    assert!(!ex.body.contains("<script>alert"), "{}", ex.body);

    // The rewards page over an empty reward log.
    let r = send(&app, Method::GET, "/rewards", &sc, "", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("verified"),
        "an empty log verifies: {}",
        r.body
    );

    let r = send(
        &app,
        Method::POST,
        "/logout",
        &sc,
        form,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!((r.status, r.location.as_str()), (303, "/login"));
    let r = send(&app, Method::GET, "/datanets", &sc, "", "").await;
    assert_eq!(r.status, 303);
}
