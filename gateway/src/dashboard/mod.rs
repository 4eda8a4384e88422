//! The web dashboard, served by the gateway at `/`: server-rendered HTML (maud, compiled
//! templates that escape every interpolated value), a stylesheet and one small script
//! embedded in the binary, charts drawn server-side as SVG ([`svg`]). Pages:
//! [`datanets`] (list, versions, diff, contributors, preview, uploads and their rejected
//! rows, upload form), [`jobs`] (submit form with the equivalent spec and CLI command, live
//! progress and loss curves, cancel, past runs, overlays), [`adapters`] (registry with
//! lineage and residency, PEFT and GGUF download, delete; the playground), [`attribution`]
//! (an answer's attribution and "re-run attribution"), [`status`] (rewards, cluster).
//!
//! Every page is a view of the JSON API: a page handler calls the gateway's own API routes
//! in-process ([`Api`]) as the session's key, so the same scopes apply and the page adds
//! no logic; each page links its JSON twin. Logging in ([`session`]) turns an API key into
//! an `HttpOnly` session cookie (sessions are kept in the object store and survive a
//! restart); every form carries a CSRF token. Static pages read without
//! JavaScript; the script only polls live parts and streams playground answers.
// Indexing here is on `serde_json::Value`s: a read returns `Null` for a missing key and
// never panics; writes go to objects built here with `json!` or `to_json`.
#![allow(clippy::indexing_slicing)]

pub mod adapters;
pub mod attribution;
pub mod datanets;
pub mod jobs;
pub mod session;
pub mod status;
pub mod svg;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;

use crate::auth::Auth;
use session::{COOKIE, LOGIN_COOKIE, SESSION_TTL, Session, Sessions, cookie, same, set_cookie};

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// The gateway's API, called in-process by the pages.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

/// An API answer: status and JSON body (or the raw text when it is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The API's error message, for showing.
    pub fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{}: {}", self.status, self.body))
    }
}

impl Api {
    /// A request to the API as `sess`; the raw response.
    pub async fn raw(
        &self,
        sess: &Session,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Response {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(h) = &sess.key_hash {
            req = req.extension(crate::auth::SessionKey(h.clone()));
        }
        let req = match req.body(Body::from(body)) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
        match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// A request with a JSON (or other) body; the answer parsed.
    pub async fn call(
        &self,
        sess: &Session,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Answer {
        let r = self.raw(sess, method, path, content_type, body).await;
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 256 << 20)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer { status, body }
    }

    pub async fn get(&self, sess: &Session, path: &str) -> Answer {
        self.call(sess, Method::GET, path, "application/json", Bytes::new())
            .await
    }

    pub async fn post_json(&self, sess: &Session, path: &str, v: &Value) -> Answer {
        self.call(
            sess,
            Method::POST,
            path,
            "application/json",
            Bytes::from(v.to_string()),
        )
        .await
    }
}

/// What the pages share.
#[derive(Clone)]
pub struct Dash {
    pub api: Api,
    pub auth: Auth,
    pub sessions: Sessions,
}

/// The dashboard's routes over `api` (the gateway's API router, without the dashboard);
/// browser sessions are kept in `store`.
pub fn dashboard_router(api: Router, auth: &Auth, store: tributary_ledger::store::Store) -> Router {
    let st = Dash {
        api: Api { router: api },
        auth: auth.clone(),
        sessions: Sessions::new(store),
    };
    let r = Router::new()
        .route("/", get(home))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script));
    let r = datanets::routes(r);
    let r = jobs::routes(r);
    let r = adapters::routes(r);
    let r = attribution::routes(r);
    let r = status::routes(r);
    r.with_state(st)
}

/// The session a page request carries, or a redirect to the login page: a session whose
/// key was revoked is ended here.
pub async fn session_or_login(st: &Dash, headers: &HeaderMap) -> Result<Session, Box<Response>> {
    let login = || Box::new(Redirect::to("/login").into_response());
    let sess = st.sessions.of(headers).await.ok_or_else(login)?;
    if let (Some(keys), Some(hash)) = (st.auth.key_store(), &sess.key_hash) {
        match keys.resolve_hash(hash).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                st.sessions.remove(&sess.id).await;
                return Err(login());
            }
            Err(e) => {
                return Err(Box::new(page_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("The key store did not answer: {e}"),
                )));
            }
        }
    }
    Ok(sess)
}

/// Checks a form's CSRF token against the session's.
pub fn check_csrf(sess: &Session, given: &str) -> Result<(), Box<Response>> {
    if same(&sess.csrf, given) {
        Ok(())
    } else {
        Err(Box::new(page_error(
            StatusCode::FORBIDDEN,
            "The form's CSRF token does not match this session: reload the page and submit again.",
        )))
    }
}

/// Security headers on every page.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A whole page: header with navigation (and logout), `body`, and a link to the JSON twin.
pub fn page(sess: Option<&Session>, title: &str, twin: Option<&str>, body: Markup) -> Response {
    let nav = [
        ("/datanets", "Datanets"),
        ("/jobs", "Jobs"),
        ("/adapters", "Adapters"),
        ("/playground", "Playground"),
        ("/rewards", "Rewards"),
        ("/cluster", "Cluster"),
    ];
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = sess { meta name="csrf-token" content=(s.csrf); }
                title { (title) " · Tributary" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Main" {
                        a.brand href="/" { "Tributary" }
                        ul {
                            @for (href, name) in nav {
                                li { a href=(href) aria-current=[(title == name).then_some("page")] { (name) } }
                            }
                        }
                        @if let Some(s) = sess {
                            form.logout method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                span.who { (s.owner) }
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
                footer {
                    @if let Some(t) = twin {
                        p { "JSON: " a href=(t) { code { (t) } } " (same data, with an API key)" }
                    }
                }
            }
        }
    };
    harden(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], m.0).into_response())
}

/// An error page with `status`.
pub fn page_error(status: StatusCode, message: &str) -> Response {
    let mut r = page(
        None,
        "Error",
        None,
        html! { p.error role="alert" { (message) } p { a href="/" { "Back" } } },
    );
    *r.status_mut() = status;
    r
}

/// A page for an API answer that failed (its status and message).
pub fn api_error(sess: &Session, a: &Answer) -> Response {
    let mut r = page(
        Some(sess),
        "Error",
        None,
        html! { p.error role="alert" { (a.status.as_u16()) " — " (a.message()) } },
    );
    *r.status_mut() = a.status;
    r
}

/// A hidden CSRF input for `sess`'s forms.
pub fn csrf_input(sess: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(sess.csrf); }
}

/// `v` as pretty JSON in a `<pre>` (escaped).
pub fn json_block(v: &Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// `s` with path-unsafe characters percent-encoded (for building API paths from names).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A value as short text (strings without quotes, null as "—").
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first 12 characters of a digest.
pub fn short(v: &Value) -> String {
    text(v).chars().take(12).collect()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        STYLE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn home(State(st): State<Dash>, headers: HeaderMap) -> Response {
    match session_or_login(&st, &headers).await {
        Ok(_) => Redirect::to("/datanets").into_response(),
        Err(r) => *r,
    }
}

async fn login_form(State(st): State<Dash>, headers: HeaderMap) -> Response {
    let token = cookie(&headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 64)
        .unwrap_or_else(session::token);
    let open = st.auth.is_open();
    let body = html! {
        form.card method="post" action="/login" {
            input type="hidden" name="csrf" value=(token);
            @if open {
                p { "This gateway runs without authentication: every visitor acts with every scope." }
            } @else {
                p { "Log in with an API key (" code { "tributary dev" } " prints its admin key and writes it to "
                    code { "<data-dir>/admin.key" } "; " code { "tributary api-key create" } " makes more)." }
                label for="key" { "API key" }
                input id="key" name="key" type="password" autocomplete="off" required;
            }
            button type="submit" { "Log in" }
        }
    };
    let mut r = page(None, "Log in", None, body);
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &token, SESSION_TTL)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    #[serde(default)]
    key: String,
}

async fn login(State(st): State<Dash>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.len() != 64 || !same(&expected, &f.csrf) {
        return page_error(
            StatusCode::FORBIDDEN,
            "The login form's CSRF token does not match: reload the login page.",
        );
    }
    let (key, owner) = match st.auth.key_store() {
        None => (None, crate::auth::ANONYMOUS.to_string()),
        Some(keys) => match keys.resolve(f.key.trim()).await {
            Ok(Some(rec)) => (Some(rec.hash), rec.owner),
            Ok(None) => {
                return page_error(StatusCode::UNAUTHORIZED, "That API key is not valid.");
            }
            Err(e) => {
                return page_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("The key store did not answer: {e}"),
                );
            }
        },
    };
    let sess = match st.sessions.create(key, owner).await {
        Ok(s) => s,
        Err(e) => {
            return page_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("No session could be opened: {e}."),
            );
        }
    };
    let mut r = Redirect::to("/datanets").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, &sess.id, SESSION_TTL)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(st): State<Dash>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let sess = match session_or_login(&st, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Err(r) = check_csrf(&sess, &f.csrf) {
        return *r;
    }
    st.sessions.remove(&sess.id).await;
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, "", std::time::Duration::ZERO)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The raw query string's pairs (repeated keys kept), for pages that take lists.
pub type Pairs = Query<Vec<(String, String)>>;

/// Unused-import guard for `PreEscaped` users in submodules.
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests;
