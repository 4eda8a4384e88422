//! Object stores by URL, and the few operations the ledger needs on them: conditional
//! create with read-back, get, list, delete. Also the start-up self-test that refuses a
//! store whose conditional create is not atomic.
//!
//! URLs: `memory://NAME` (process-wide in-memory store, for tests), `file:///abs/path` or a
//! plain path (the local filesystem; the directory is created), and
//! `s3://bucket/prefix?endpoint=http://127.0.0.1:PORT&region=…` (any `AmazonS3ConfigKey` as a
//! query parameter; the usual `AWS_*` environment variables are read too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

/// Errors from opening or talking to an object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("store {store}: {op} `{key}`: {source}")]
    Io {
        store: String,
        op: &'static str,
        key: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("store {store}: local directory `{path}`: {source}")]
    LocalDir {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "store {store} refused: its conditional create (PutMode::Create / If-None-Match) is not \
         safe: {reason}. Tributary needs atomic create-if-absent for fencing and immutability; \
         use the local filesystem, S3, or an S3-compatible server that honours If-None-Match"
    )]
    UnsafeConditionalCreate { store: String, reason: String },
    #[error(
        "store {store}: {op} not answered within {waited_ms} ms of a majority of replicas answering; counted as unreachable"
    )]
    Unanswered {
        store: String,
        op: &'static str,
        waited_ms: u64,
    },
}

/// Outcome of a conditional create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The object did not exist; ours is now stored.
    New,
    /// The key was taken; these are the bytes found there.
    Existing(Bytes),
}

/// One object store (optionally under a prefix), named by the URL it was opened from.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    label: Arc<str>,
    self_tested: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.label)
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

fn memory_stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    STORES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Request timeout for remote stores unless the URL sets `timeout=`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest and longest `timeout=` a store URL may set, in seconds.
pub const TIMEOUT_RANGE_SECS: (f64, f64) = (0.05, 3600.0);

/// Parses a store URL's `timeout=` value (seconds, an optional trailing `s`): a finite
/// number within [`TIMEOUT_RANGE_SECS`]; anything else is an error naming the parameter.
pub fn parse_timeout(v: &str) -> Result<Duration, String> {
    let (lo, hi) = TIMEOUT_RANGE_SECS;
    let secs: f64 = v
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("query parameter `timeout={v}` is not a number of seconds"))?;
    if !secs.is_finite() || !(lo..=hi).contains(&secs) {
        return Err(format!(
            "query parameter `timeout={v}` is out of range: must be {lo} to {hi} seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("query parameter `timeout={v}`: {e}"))
}

impl Store {
    /// Wraps an existing object store (injected storage, e.g. a fault-injecting wrapper).
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, label: impl Into<String>) -> Self {
        let label: String = label.into();
        Self {
            inner,
            label: label.into(),
            self_tested: Arc::new(tokio::sync::OnceCell::new()),
        }
    }

    /// Opens a store from a URL or a plain local path.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.trim().is_empty() {
            return Err(bad("empty"));
        }
        if let Some(name) = url.strip_prefix("memory://") {
            let mut stores = memory_stores()
                .lock()
                .map_err(|_| bad("memory store registry poisoned"))?;
            let inner = stores
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(InMemory::new()) as Arc<dyn ObjectStore>)
                .clone();
            return Ok(Self::from_object_store(inner, url));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            return Self::open_s3(url, rest);
        }
        let path = if let Some(p) = url.strip_prefix("file://") {
            if !p.starts_with('/') {
                return Err(bad("file:// URLs need an absolute path (file:///dir)"));
            }
            p
        } else if url.contains("://") {
            return Err(bad(
                "unknown scheme; use file:///path, a plain path, s3://bucket/prefix or memory://name",
            ));
        } else {
            url
        };
        std::fs::create_dir_all(path).map_err(|source| StoreError::LocalDir {
            store: url.to_string(),
            path: path.to_string(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(path).map_err(|source| StoreError::Io {
            store: url.to_string(),
            op: "open",
            key: path.to_string(),
            source: Box::new(source),
        })?;
        Ok(Self::from_object_store(Arc::new(fs), url))
    }

    fn open_s3(url: &str, rest: &str) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let (loc, query) = match rest.split_once('?') {
            Some((l, q)) => (l, q),
            None => (rest, ""),
        };
        let (bucket, prefix) = match loc.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (loc, ""),
        };
        if bucket.is_empty() {
            return Err(bad("missing bucket name (s3://bucket/prefix)".into()));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let mut timeout = DEFAULT_TIMEOUT;
        let mut allow_http = false;
        let mut has_region = std::env::var_os("AWS_REGION").is_some()
            || std::env::var_os("AWS_DEFAULT_REGION").is_some();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("query parameter `{pair}` has no `=`")))?;
            if k == "timeout" {
                timeout = parse_timeout(v).map_err(bad)?;
                continue;
            }
            let key: AmazonS3ConfigKey = k
                .parse()
                .map_err(|e| bad(format!("query parameter `{k}`: {e}")))?;
            if matches!(key, AmazonS3ConfigKey::Endpoint) && v.starts_with("http://") {
                allow_http = true;
            }
            if matches!(key, AmazonS3ConfigKey::Region) {
                has_region = true;
            }
            builder = builder.with_config(key, v);
        }
        if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL")
            && ep.starts_with("http://")
        {
            allow_http = true;
        }
        if !has_region {
            builder = builder.with_region("us-east-1");
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: timeout * 3,
        };
        let s3 = builder
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(allow_http)
                    .with_timeout(timeout)
                    .with_connect_timeout(timeout),
            )
            .build()
            .map_err(|source| StoreError::Io {
                store: url.to_string(),
                op: "open",
                key: String::new(),
                source: Box::new(source),
            })?;
        // Never print credentials given in the query string.
        let label = match url.split_once('?') {
            Some((base, q)) => {
                let kept: Vec<&str> = q
                    .split('&')
                    .filter(|p| p.starts_with("endpoint=") || p.starts_with("region="))
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        };
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self::from_object_store(inner, label))
    }

    /// The URL this store was opened from (credentials removed).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn io(&self, op: &'static str, key: &Path, source: object_store::Error) -> StoreError {
        StoreError::Io {
            store: self.label.to_string(),
            op,
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// Creates `key` only if absent. When the key is taken, reads it back so the caller can
    /// compare: an identical object is our own earlier (retried) write.
    pub async fn create(&self, key: &Path, bytes: Bytes) -> Result<Created, StoreError> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(key, PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(Created::New),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => match self.get(key).await? {
                Some(found) => Ok(Created::Existing(found)),
                None => Err(self.io(
                    "create",
                    key,
                    object_store::Error::Generic {
                        store: "ledger",
                        source: "key reported as existing but reads back as absent".into(),
                    },
                )),
            },
            Err(e) => Err(self.io("create", key, e)),
        }
    }

    /// Unconditional write (used only for objects whose name is their content digest).
    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<(), StoreError> {
        self.inner
            .put(key, PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.io("put", key, e))
    }

    /// Reads `key`; `None` when absent.
    pub async fn get(&self, key: &Path) -> Result<Option<Bytes>, StoreError> {
        match self.inner.get(key).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.io("get", key, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io("get", key, e)),
        }
    }

    /// Deletes `key` (absent is fine).
    pub async fn delete(&self, key: &Path) -> Result<(), StoreError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("delete", key, e)),
        }
    }

    /// Every object name under `prefix`, as the part after `prefix/`, sorted.
    pub async fn list_names(&self, prefix: &Path) -> Result<Vec<String>, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.io("list", prefix, e))?;
        Ok(names_under(prefix, metas))
    }

    /// Object names under `prefix` that sort after `prefix/after`, sorted.
    pub async fn list_names_after(
        &self,
        prefix: &Path,
        after: &str,
    ) -> Result<Vec<String>, StoreError> {
        let offset = prefix.clone().join(after);
        let metas: Vec<_> = self
            .inner
            .list_with_offset(Some(prefix), &offset)
            .try_collect()
            .await
            .map_err(|e| self.io("list", prefix, e))?;
        Ok(names_under(prefix, metas))
    }

    /// Checks, once per `Store`, that conditional create is atomic here: a second create of
    /// one key fails, and of 32 concurrent creates of another key exactly one wins.
    pub async fn ensure_conditional_create(&self) -> Result<(), StoreError> {
        self.self_tested
            .get_or_try_init(|| self.self_test_conditional_create())
            .await
            .map(|_| ())
    }

    #[tracing::instrument(skip(self), fields(store = %self.label))]
    #[allow(clippy::disallowed_methods)] // a nonce must never repeat across processes
    async fn self_test_conditional_create(&self) -> Result<(), StoreError> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        let first = Path::from(format!("_selftest/{nonce}/once"));
        let unsafe_store = |reason: String| StoreError::UnsafeConditionalCreate {
            store: self.label.to_string(),
            reason,
        };
        if self.create(&first, Bytes::from_static(b"a")).await? != Created::New {
            return Err(unsafe_store(
                "a create of a fresh random key reported it as existing".into(),
            ));
        }
        match self.create(&first, Bytes::from_static(b"b")).await? {
            Created::Existing(b) if b.as_ref() == b"a" => {}
            Created::Existing(_) => {
                return Err(unsafe_store(
                    "a second create of the same key replaced the first object".into(),
                ));
            }
            Created::New => {
                return Err(unsafe_store(
                    "a second create of the same key succeeded (the store ignores If-None-Match)"
                        .into(),
                ));
            }
        }
        let race = Path::from(format!("_selftest/{nonce}/race"));
        let tasks: Vec<_> = (0..32u8)
            .map(|i| {
                let store = self.clone();
                let key = race.clone();
                tokio::spawn(async move { store.create(&key, Bytes::from(vec![i])).await })
            })
            .collect();
        let mut winners = 0usize;
        for t in futures::future::join_all(tasks).await {
            match t {
                Ok(Ok(Created::New)) => winners += 1,
                Ok(Ok(Created::Existing(_))) => {}
                Ok(Err(e)) => return Err(e),
                Err(join) => {
                    return Err(unsafe_store(format!("self-test task failed: {join}")));
                }
            }
        }
        let _ = self.delete(&first).await;
        let _ = self.delete(&race).await;
        if winners != 1 {
            return Err(unsafe_store(format!(
                "{winners} of 32 concurrent creates of one key succeeded (exactly 1 must)"
            )));
        }
        tracing::debug!("conditional create self-test passed");
        Ok(())
    }
}

/// The names of `metas` relative to `prefix` (the part after `prefix/`), sorted.
fn names_under(prefix: &Path, metas: Vec<object_store::ObjectMeta>) -> Vec<String> {
    let base = prefix.as_ref();
    let mut names: Vec<String> = metas
        .into_iter()
        .filter_map(|m| {
            m.location
                .as_ref()
                .strip_prefix(base)
                .map(|s| s.trim_start_matches('/').to_string())
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_timeouts_are_errors_not_panics() {
        for bad in ["inf", "-inf", "NaN", "1e300", "-1", "0", "abc", ""] {
            let err = Store::open(&format!("s3://b/p?timeout={bad}")).unwrap_err();
            assert!(err.to_string().contains("timeout"), "{bad}: {err}");
        }
        assert_eq!(parse_timeout("2.5s"), Ok(Duration::from_millis(2500)));
    }

    #[tokio::test]
    async fn memory_and_local_stores_pass_the_self_test() {
        let mem = Store::open("memory://store-selftest").unwrap();
        mem.ensure_conditional_create().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let local = Store::open(dir.path().to_str().unwrap()).unwrap();
        local.ensure_conditional_create().await.unwrap();
        // The self-test cleans up after itself.
        assert!(
            local
                .list_names(&Path::from("_selftest"))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn create_reads_back_the_existing_object() {
        let s = Store::open("memory://store-create").unwrap();
        let k = Path::from("a/b");
        assert_eq!(
            s.create(&k, Bytes::from_static(b"x")).await.unwrap(),
            Created::New
        );
        assert_eq!(
            s.create(&k, Bytes::from_static(b"y")).await.unwrap(),
            Created::Existing(Bytes::from_static(b"x"))
        );
    }

    #[test]
    fn bad_urls_name_the_problem() {
        let e = Store::open("ftp://x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme"), "{e}");
        let e = Store::open("s3:///prefix").unwrap_err().to_string();
        assert!(e.contains("missing bucket"), "{e}");
        let e = Store::open("s3://b/p?nonsense=1").unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
        let e = Store::open("file://relative").unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn s3_labels_drop_credentials() {
        let s = Store::open(
            "s3://bkt/pre?endpoint=http://127.0.0.1:1&access_key_id=AK&secret_access_key=SK",
        )
        .unwrap();
        assert_eq!(s.label(), "s3://bkt/pre?endpoint=http://127.0.0.1:1");
    }
}
