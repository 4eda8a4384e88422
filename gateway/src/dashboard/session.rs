//! Browser sessions: logging in with an API key gives a random session id in an `HttpOnly`,
//! `SameSite=Strict` cookie. The key itself is never kept: a session holds the key's stored
//! hash (what the key store indexes keys by), and the pages call the API in-process as that
//! key ([`crate::auth::SessionKey`], a request extension no client can send), through the same scope
//! checks as the API. Each session has a CSRF token that every form carries (and every
//! script `POST` sends as `x-csrf-token`); the login form, made before any session, uses a
//! double-submit cookie.
//!
//! Sessions survive a restart of the gateway: each is written once, atomically (a
//! conditional create), to the gateway's object store as
//! `dashboard/sessions/<BLAKE3 of the session id>.json` (owner, key hash, CSRF token,
//! expiry; never the session id itself nor the key). A gateway keeps the ones it has seen
//! in memory and re-reads each from the store at most every [`RECHECK`], so a logout on one
//! gateway ends the session on the others sharing the store within that time. Logging out
//! deletes it; a revoked key ends every session made with it (the key is resolved on every
//! page); expired ones are deleted when met and swept every [`SWEEP_EVERY`]. Sessions expire
//! after [`SESSION_TTL`]; at most [`MAX_SESSIONS`] live at once per store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header;
use bytes::Bytes;
use object_store::path::Path;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tributary_ledger::store::{Created, Store};

/// The session cookie's name.
pub const COOKIE: &str = "tributary_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "tributary_login_csrf";
/// How long a session lives.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions held at once (expired ones are dropped first; a full table refuses).
pub const MAX_SESSIONS: usize = 10_000;
/// How long a gateway trusts its memory of a session before reading the store again.
pub const RECHECK: Duration = Duration::from_secs(10);
/// How often expired sessions are swept from the store.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

const PREFIX: &str = "dashboard/sessions";
const HASH_CONTEXT: &str = "tributary dashboard session id v1";

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// The stored hash of the API key the browser logged in with (`None` when the gateway
    /// runs without auth).
    pub key_hash: Option<String>,
    /// Who the key speaks for.
    pub owner: String,
    pub csrf: String,
    pub expires_unix_ms: u64,
}

/// A session as stored (no session id, no key).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    format: u32,
    key_hash: Option<String>,
    owner: String,
    csrf: String,
    created_unix_ms: u64,
    expires_unix_ms: u64,
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("too many sessions are open ({MAX_SESSIONS}); try again later")]
    Full,
    #[error("the session store: {0}")]
    Store(String),
}

#[derive(Debug, Clone)]
struct Cached {
    session: Session,
    checked: Instant,
}

/// The sessions of one gateway, persisted in its store.
#[derive(Debug, Clone)]
pub struct Sessions {
    store: Store,
    inner: Arc<Mutex<HashMap<String, Cached>>>,
    last_sweep: Arc<Mutex<Option<Instant>>>,
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

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // sessions expire by the wall clock (they outlive processes)
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[allow(clippy::disallowed_methods)] // measures elapsed time
fn now() -> Instant {
    Instant::now()
}

/// Where session `id` is stored: its keyed BLAKE3, so the store never holds the id.
fn object(id: &str) -> Path {
    let mut h = blake3::Hasher::new_derive_key(HASH_CONTEXT);
    h.update(id.as_bytes());
    Path::from(format!("{PREFIX}/{}.json", h.finalize().to_hex()))
}

/// A session id as the cookie carries it: 64 hex characters.
fn well_formed(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Sessions {
    /// Sessions kept in `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            inner: Arc::new(Mutex::new(HashMap::new())),
            last_sweep: Arc::new(Mutex::new(None)),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read(&self, id: &str) -> Result<Option<Stored>, SessionError> {
        let bytes = self
            .store
            .get(&object(id))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?;
        // An unreadable record is no session.
        Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Deletes the stored sessions that have expired; returns how many are left.
    pub async fn sweep(&self) -> Result<usize, SessionError> {
        let names = self
            .store
            .list_names(&Path::from(PREFIX))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?;
        let now_unix_ms = now_ms();
        let mut live = 0;
        for n in names {
            let key = Path::from(format!("{PREFIX}/{n}"));
            let stored: Option<Stored> = self
                .store
                .get(&key)
                .await
                .map_err(|e| SessionError::Store(e.to_string()))?
                .and_then(|b| serde_json::from_slice(&b).ok());
            match stored {
                Some(s) if s.expires_unix_ms > now_unix_ms => live += 1,
                _ => {
                    let _ = self.store.delete(&key).await;
                }
            }
        }
        self.map()
            .retain(|_, c| c.session.expires_unix_ms > now_unix_ms);
        *self.last_sweep.lock().unwrap_or_else(|p| p.into_inner()) = Some(now());
        Ok(live)
    }

    fn sweep_due(&self) -> bool {
        self.last_sweep
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= SWEEP_EVERY)
    }

    /// A new session for the key with stored hash `key_hash` (owned by `owner`), written
    /// to the store before it is handed out.
    pub async fn create(
        &self,
        key_hash: Option<String>,
        owner: String,
    ) -> Result<Session, SessionError> {
        if self.map().len() >= MAX_SESSIONS {
            let live = self.sweep().await?;
            if live >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        } else if self.sweep_due() {
            // Mark it started, then sweep in the background (it reads every stored session).
            *self.last_sweep.lock().unwrap_or_else(|p| p.into_inner()) = Some(now());
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.sweep().await {
                    tracing::warn!(error = %e, "sweeping expired dashboard sessions");
                }
            });
        }
        let created = now_ms();
        let s = Session {
            id: token(),
            key_hash,
            owner,
            csrf: token(),
            expires_unix_ms: created + SESSION_TTL.as_millis() as u64,
        };
        let stored = Stored {
            format: 1,
            key_hash: s.key_hash.clone(),
            owner: s.owner.clone(),
            csrf: s.csrf.clone(),
            created_unix_ms: created,
            expires_unix_ms: s.expires_unix_ms,
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| SessionError::Store(e.to_string()))?;
        match self
            .store
            .create(&object(&s.id), Bytes::from(bytes))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?
        {
            Created::New => {}
            // 256 random bits collided: refuse rather than share a session.
            Created::Existing(_) => {
                return Err(SessionError::Store("session id collision".into()));
            }
        }
        self.map().insert(
            s.id.clone(),
            Cached {
                session: s.clone(),
                checked: now(),
            },
        );
        Ok(s)
    }

    /// The live session `headers`' cookie names (from memory when checked within
    /// [`RECHECK`], else from the store); an expired one is deleted.
    pub async fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE).filter(|id| well_formed(id))?;
        let now_ms = now_ms();
        let cached = self.map().get(&id).cloned();
        if let Some(c) = &cached
            && c.checked.elapsed() < RECHECK
        {
            if c.session.expires_unix_ms > now_ms {
                return Some(c.session.clone());
            }
            self.remove(&id).await;
            return None;
        }
        let stored = match self.read(&id).await {
            Ok(s) => s,
            // The store is unreachable: a session seen before stays usable until then.
            Err(_) => return cached.map(|c| c.session),
        };
        let Some(st) = stored else {
            self.map().remove(&id);
            return None;
        };
        if st.expires_unix_ms <= now_ms {
            self.remove(&id).await;
            return None;
        }
        let s = Session {
            id: id.clone(),
            key_hash: st.key_hash,
            owner: st.owner,
            csrf: st.csrf,
            expires_unix_ms: st.expires_unix_ms,
        };
        let mut map = self.map();
        if map.len() < MAX_SESSIONS || map.contains_key(&id) {
            map.insert(
                id,
                Cached {
                    session: s.clone(),
                    checked: now(),
                },
            );
        }
        Some(s)
    }

    /// Ends a session, here and in the store.
    pub async fn remove(&self, id: &str) {
        self.map().remove(id);
        let _ = self.store.delete(&object(id)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}")).unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn sessions_persist_hashed_and_end_by_logout_or_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().to_string_lossy()).unwrap();
        let s = Sessions::new(store.clone());
        let sess = s
            .create(Some("keyhash".into()), "alice".into())
            .await
            .unwrap();
        let h = headers(&sess.id);
        assert_eq!(s.of(&h).await.unwrap().owner, "alice");
        assert_eq!(cookie(&h, "a").as_deref(), Some("b"));
        // Stored under the id's hash, holding neither the id nor a key.
        let names = store.list_names(&Path::from(PREFIX)).await.unwrap();
        assert_eq!(names.len(), 1);
        assert!(!names[0].contains(&sess.id));
        let raw = std::fs::read_to_string(dir.path().join(PREFIX).join(&names[0])).unwrap();
        assert!(!raw.contains(&sess.id) && raw.contains("keyhash"), "{raw}");
        // A second table over the same store (a restarted gateway) knows it.
        let again = Sessions::new(store.clone());
        let back = again.of(&h).await.unwrap();
        assert_eq!(
            (back.owner.as_str(), back.csrf.as_str()),
            ("alice", sess.csrf.as_str())
        );
        assert_eq!(back.key_hash.as_deref(), Some("keyhash"));
        // Logout on one ends it on the other once it re-reads the store.
        s.remove(&sess.id).await;
        assert!(s.of(&h).await.is_none());
        again.map().get_mut(&sess.id).unwrap().checked = now() - RECHECK;
        assert!(again.of(&h).await.is_none());
        assert!(Sessions::new(store.clone()).of(&h).await.is_none());
        // An expired one is refused and deleted.
        let old = s.create(None, "bob".into()).await.unwrap();
        let bytes = serde_json::to_vec(&Stored {
            format: 1,
            key_hash: None,
            owner: "bob".into(),
            csrf: old.csrf.clone(),
            created_unix_ms: 0,
            expires_unix_ms: 1,
        })
        .unwrap();
        store
            .put(&object(&old.id), Bytes::from(bytes))
            .await
            .unwrap();
        assert!(
            Sessions::new(store.clone())
                .of(&headers(&old.id))
                .await
                .is_none()
        );
        assert!(store.get(&object(&old.id)).await.unwrap().is_none());
        // A sweep deletes the expired ones it finds and counts the live ones.
        let live = s.create(None, "carol".into()).await.unwrap();
        let stale = s.create(None, "dave".into()).await.unwrap();
        let mut old = serde_json::from_slice::<Stored>(
            &store.get(&object(&stale.id)).await.unwrap().unwrap(),
        )
        .unwrap();
        old.expires_unix_ms = 1;
        store
            .put(
                &object(&stale.id),
                Bytes::from(serde_json::to_vec(&old).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(Sessions::new(store.clone()).sweep().await.unwrap(), 1);
        assert!(store.get(&object(&stale.id)).await.unwrap().is_none());
        assert!(store.get(&object(&live.id)).await.unwrap().is_some());
        // Malformed cookies are no session.
        assert!(s.of(&headers("../../x")).await.is_none());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("ab", "abc"));
        assert_eq!(token().len(), 64);
        assert!(set_cookie(COOKIE, "x", SESSION_TTL).contains("HttpOnly; SameSite=Strict"));
    }
}
