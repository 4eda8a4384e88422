//! Browser sessions: logging in with an API key gives a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie; the key itself stays on the server (in memory, never in the
//! page), and every page and form acts with it, through the same scope checks as the API.
//! Each session has a CSRF token that every form carries (and every script `POST` sends as
//! `x-csrf-token`); the login form, made before any session, uses a double-submit cookie.
//! Sessions expire after [`SESSION_TTL`]; at most [`MAX_SESSIONS`] live at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header;
use rand::Rng;

/// The session cookie's name.
pub const COOKIE: &str = "tributary_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "tributary_login_csrf";
/// How long a session lives.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once (the oldest expired ones are dropped first; a full table refuses).
pub const MAX_SESSIONS: usize = 10_000;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// The API key the browser logged in with (`None` when the gateway runs without auth).
    pub key: Option<String>,
    /// Who the key speaks for.
    pub owner: String,
    pub csrf: String,
    created: Instant,
}

/// The live sessions.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

/// A random token: 32 bytes from the thread's CSPRNG, hex.
#[allow(clippy::disallowed_methods)] // takes fresh entropy
pub fn token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that does not stop at the first differing byte.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in `headers`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for `name=value` (`HttpOnly`, `SameSite=Strict`, whole site).
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

impl Sessions {
    /// A new session for `key` (owned by `owner`); `None` when the table is full.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    pub fn create(&self, key: Option<String>, owner: String) -> Option<Session> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        }
        if map.len() >= MAX_SESSIONS {
            return None;
        }
        let s = Session {
            id: token(),
            key,
            owner,
            csrf: token(),
            created: Instant::now(),
        };
        map.insert(s.id.clone(), s.clone());
        Some(s)
    }

    /// The live session `headers`' cookie names.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&id) {
            Some(s) if s.created.elapsed() < SESSION_TTL => Some(s.clone()),
            Some(_) => {
                map.remove(&id);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_parse_and_sessions_expire_only_by_ttl_or_logout() {
        let s = Sessions::default();
        let sess = s.create(Some("k".into()), "alice".into()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}", sess.id)).unwrap(),
        );
        assert_eq!(s.of(&h).unwrap().owner, "alice");
        assert_eq!(cookie(&h, "a").as_deref(), Some("b"));
        s.remove(&sess.id);
        assert!(s.of(&h).is_none());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("ab", "abc"));
        assert_eq!(token().len(), 64);
        assert!(set_cookie(COOKIE, "x", SESSION_TTL).contains("HttpOnly; SameSite=Strict"));
    }
}
