//! Where a job's base model and training data come from, made local before training.
//!
//! - `base_model`: a checkpoint directory path, or an object-store URL of one
//!   (`s3://bucket/prefix?endpoint=…`, `file:///dir`). The directory's top-level objects
//!   (config.json, safetensors, index, tokenizer files, chat template) are downloaded into
//!   `<cache>/models/<key>/`, where the key hashes the URL and each object's name, size and
//!   e-tag, so a second job reuses the copy and a changed model gets a new one. Downloads go
//!   to a temp directory renamed into place only when complete: a half-written model is
//!   never loaded.
//! - `data`: a JSONL path, an object-store URL of a JSONL file (`s3://bucket/dir/x.jsonl?…`,
//!   `file:///dir/x.jsonl`), or a datanet version `datanet://NAME@VERSION` (VERSION is a
//!   version number, a digest or digest prefix, or `latest`) resolved against the store the
//!   worker was given. Datanet versions are exported (credited examples, manifest order, so
//!   every worker sees the same examples in the same order) to `<cache>/data/<digest>.jsonl`.
//!
//! The data digest is the datanet version's manifest digest for datanets and the file's
//! BLAKE3 otherwise; the base-model digest is computed from the local files, so it is the
//! same whether the model came from a path or a URL with the same files.

use std::future::Future;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use object_store::ObjectStore;
use tributary_ledger::Store;
use tributary_ledger::datanet::{DatanetError, Datanets};
use tributary_protocol::Digest;

use crate::executor::ExecError;

/// URL schemes read through the object store.
const STORE_SCHEMES: [&str; 3] = ["s3://", "file://", "memory://"];
/// Scheme of datanet versions in `data`.
pub const DATANET_SCHEME: &str = "datanet://";

/// Where sources are resolved and cached.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Store URL that `datanet://` names are resolved against (`--store`).
    pub store: Option<String>,
    /// Local cache for downloaded models and materialised data (`--cache-dir`).
    pub cache_dir: PathBuf,
    /// Which local paths a job may read (`--allow-path`).
    pub allow: AllowPaths,
}

impl Default for SourceConfig {
    /// No datanet store; the cache under the system temp directory; any local path (the
    /// binary's `dev` and `worker` always set an [`AllowPaths::Only`] list).
    fn default() -> Self {
        Self {
            store: None,
            cache_dir: std::env::temp_dir().join("tributary-cache"),
            allow: AllowPaths::Any,
        }
    }
}

/// Which local paths (base models, data files, `file://` URLs) a worker reads for a job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowPaths {
    /// Any path (library default, for tests and embedding).
    #[default]
    Any,
    /// Only paths under these directories (after resolving `..` and symbolic links).
    Only(Vec<PathBuf>),
}

impl AllowPaths {
    /// Only under `roots`; each is resolved now (a root that does not exist yet is created,
    /// so a data directory named before its first use still counts).
    pub fn only(roots: impl IntoIterator<Item = PathBuf>) -> std::io::Result<Self> {
        let mut out = Vec::new();
        for r in roots {
            std::fs::create_dir_all(&r)?;
            out.push(std::fs::canonicalize(&r)?);
        }
        Ok(Self::Only(out))
    }

    /// `path` resolved, if it may be read; otherwise an error naming `field` and the path.
    pub fn check(&self, field: &str, path: &Path) -> Result<PathBuf, ExecError> {
        let Self::Only(roots) = self else {
            return Ok(path.to_path_buf());
        };
        let shown = path.display().to_string();
        let real = std::fs::canonicalize(path).map_err(|e| err(field, &shown, e))?;
        match self {
            Self::Any => Ok(real),
            Self::Only(_) if roots.iter().any(|r| real.starts_with(r)) => Ok(real),
            Self::Only(_) => Err(err(
                field,
                &shown,
                "is outside the directories this worker may read (its --allow-path list)",
            )),
        }
    }

    /// For a store URL that names a local directory (`file:///dir`, or a plain path as
    /// `Store::open` takes it): that directory, checked. Remote URLs (`s3://`) and
    /// `memory://` pass.
    pub fn check_url(&self, field: &str, url: &str) -> Result<(), ExecError> {
        if let Some(p) = url.strip_prefix("file://") {
            let dir = p.split('?').next().unwrap_or_default();
            self.check(field, Path::new(dir))?;
        } else if !url.contains("://") {
            self.check(field, Path::new(url))?;
        }
        Ok(())
    }
}

/// A job's training data, made local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalData {
    /// A JSONL file `tributary_model::data::load_jsonl` reads.
    pub path: PathBuf,
    /// Manifest digest (datanets) or BLAKE3 of the file.
    pub digest: Digest,
}

/// A parsed `data` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    Path(PathBuf),
    /// Store URL of the file's directory and the file's name in it.
    Object {
        store: String,
        key: String,
    },
    /// `None` version: the latest.
    Datanet {
        name: String,
        version: Option<String>,
    },
}

/// Whether `s` is an object-store URL (rather than a local path).
pub fn is_store_url(s: &str) -> bool {
    STORE_SCHEMES.iter().any(|p| s.starts_with(p))
}

fn err(field: &str, value: &str, why: impl std::fmt::Display) -> ExecError {
    ExecError::Setup(format!("{field} {value:?}: {why}"))
}

/// Parses a `data` value.
pub fn parse_data(data: &str) -> Result<DataSource, ExecError> {
    if let Some(rest) = data.strip_prefix(DATANET_SCHEME) {
        let (name, version) = match rest.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        if !tributary_ledger::datanet::valid_name(name) {
            return Err(err(
                "data",
                data,
                format!(
                    "datanet name `{name}` is not valid: 1-64 characters of a-z 0-9 - _ ., \
                     starting with a letter or digit (form: datanet://NAME@VERSION)"
                ),
            ));
        }
        let version = match version {
            None | Some("latest") => None,
            Some("") => {
                return Err(err(
                    "data",
                    data,
                    "empty version after `@` (use a number, a digest or `latest`)",
                ));
            }
            Some(v) => Some(v.to_string()),
        };
        return Ok(DataSource::Datanet {
            name: name.to_string(),
            version,
        });
    }
    if is_store_url(data) {
        let (loc, query) = match data.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (data, None),
        };
        let (dir, key) = match loc.rsplit_once('/') {
            Some((d, k)) if !k.is_empty() && !d.ends_with('/') => (d, k),
            _ => return Err(err("data", data, "the URL names no file (…/name.jsonl)")),
        };
        let store = match query {
            Some(q) => format!("{dir}?{q}"),
            None => dir.to_string(),
        };
        return Ok(DataSource::Object {
            store,
            key: key.to_string(),
        });
    }
    if data.contains("://") {
        return Err(err(
            "data",
            data,
            "unknown scheme: use a path, datanet://NAME@VERSION, s3://bucket/dir/file.jsonl or file:///dir/file.jsonl",
        ));
    }
    Ok(DataSource::Path(PathBuf::from(data)))
}

/// Whether a datanet version is written as a version number (1-10 decimal digits).
fn is_version_number(v: &str) -> bool {
    (1..=10).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
}

/// Runs `fut` to completion on a private runtime in a scoped thread, so callers may be
/// inside a tokio runtime or not.
fn block_on<F: Future + Send>(fut: F) -> Result<F::Output, ExecError>
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ExecError::Setup(format!("starting a download runtime: {e}")))?;
            Ok(rt.block_on(fut))
        })
        .join()
        .map_err(|_| ExecError::Setup("the download thread panicked".into()))?
    })
}

fn open_store(field: &str, url: &str) -> Result<Store, ExecError> {
    Store::open(url).map_err(|e| err(field, url, e))
}

impl SourceConfig {
    /// A local checkpoint directory for `base_model`: the path itself, or the cached copy of
    /// the URL's objects.
    pub fn model_dir(&self, base_model: &str) -> Result<PathBuf, ExecError> {
        if !is_store_url(base_model) {
            if base_model.contains("://") {
                return Err(err(
                    "base_model",
                    base_model,
                    "unknown scheme: use a directory path, s3://bucket/prefix?endpoint=… or file:///dir",
                ));
            }
            return self.allow.check("base_model", Path::new(base_model));
        }
        self.allow.check_url("base_model", base_model)?;
        let store = open_store("base_model", base_model)?;
        block_on(self.fetch_model(base_model, &store))?
    }

    async fn fetch_model(&self, url: &str, store: &Store) -> Result<PathBuf, ExecError> {
        let fail = |why: String| err("base_model", url, why);
        let metas: Vec<object_store::ObjectMeta> = store
            .object_store()
            .list(None)
            .try_collect()
            .await
            .map_err(|e| fail(format!("listing objects: {e}")))?;
        // Top-level plain files only, like `digest_dir` reads a directory.
        let mut files: Vec<(String, u64, Option<String>)> = metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.size, m.e_tag))
            .filter(|(name, _, _)| !name.contains('/') && !name.starts_with('.'))
            .collect();
        files.sort();
        if !files.iter().any(|(n, _, _)| n == "config.json") {
            return Err(fail(format!(
                "no config.json under {} (found {} file(s)); upload the checkpoint directory's files there",
                store.label(),
                files.len()
            )));
        }
        let mut key = blake3::Hasher::new();
        key.update(store.label().as_bytes());
        for (name, size, etag) in &files {
            key.update(&(name.len() as u64).to_le_bytes());
            key.update(name.as_bytes());
            key.update(&size.to_le_bytes());
            key.update(etag.as_deref().unwrap_or("").as_bytes());
            key.update(b"\n");
        }
        let models = self.cache_dir.join("models");
        let target = models.join(key.finalize().to_hex().as_str());
        if target.join("config.json").is_file() {
            tracing::debug!(model = %url, dir = %target.display(), "base model cached");
            return Ok(target);
        }
        let io =
            |what: &str, p: &Path, e: std::io::Error| fail(format!("{what} {}: {e}", p.display()));
        std::fs::create_dir_all(&models).map_err(|e| io("creating cache", &models, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&models)
            .map_err(|e| io("creating temp dir in", &models, e))?;
        for (name, size, _) in &files {
            let loc = object_store::path::Path::from(name.as_str());
            let bytes = store
                .get(&loc)
                .await
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail(format!("object {name} vanished while downloading")))?;
            if bytes.len() as u64 != *size {
                return Err(fail(format!(
                    "object {name} changed while downloading ({} bytes, listed as {size})",
                    bytes.len()
                )));
            }
            let dest = tmp.path().join(name);
            std::fs::write(&dest, &bytes).map_err(|e| io("writing", &dest, e))?;
        }
        match std::fs::rename(tmp.path(), &target) {
            Ok(()) => {}
            // Another job (or worker in this process) finished the same copy first.
            Err(_) if target.join("config.json").is_file() => {}
            Err(e) => return Err(io("moving the download to", &target, e)),
        }
        tracing::info!(model = %url, dir = %target.display(), files = files.len(), "base model downloaded");
        Ok(target)
    }

    /// A local JSONL file and its digest for `data`.
    pub fn data_file(&self, data: &str) -> Result<LocalData, ExecError> {
        match parse_data(data)? {
            DataSource::Path(path) => {
                let path = self.allow.check("data", &path)?;
                let bytes = std::fs::read(&path).map_err(|e| err("data", data, e))?;
                Ok(LocalData {
                    path,
                    digest: Digest::of(&bytes),
                })
            }
            DataSource::Object { store, key } => {
                if store.starts_with("file://") {
                    let file = format!("{store}/{key}");
                    self.allow.check_url("data", &file)?;
                }
                let s = Store::open(&store).map_err(|e| err("data", data, e))?;
                let loc = object_store::path::Path::from(key.as_str());
                let bytes = block_on(async { s.get(&loc).await })?
                    .map_err(|e| err("data", data, e))?
                    .ok_or_else(|| {
                        err("data", data, format!("no object {key} in {}", s.label()))
                    })?;
                let digest = Digest::of(&bytes);
                let path = self.cache_write(data, &digest, |f| {
                    std::io::Write::write_all(f, &bytes).map(|_| ())
                })?;
                Ok(LocalData { path, digest })
            }
            DataSource::Datanet { name, version } => self.datanet_file(data, &name, version),
        }
    }

    fn datanet_file(
        &self,
        data: &str,
        name: &str,
        version: Option<String>,
    ) -> Result<LocalData, ExecError> {
        let Some(url) = &self.store else {
            return Err(err(
                "data",
                data,
                "datanet sources need a store: start the worker with --store URL (TRIBUTARY_STORE)",
            ));
        };
        let store = open_store("data", url)?;
        let nets = Datanets::new(store);
        let described = |e: DatanetError| match e {
            DatanetError::NoVersion { .. } => err(
                "data",
                data,
                format!("{e} in store {url} (see `tributary datanet versions {name}`)"),
            ),
            other => err("data", data, format!("{other} (store {url})")),
        };
        let digest_hex = block_on(async {
            // A short all-digit version is a version number, never a digest prefix: out of
            // range is an error rather than a chance prefix match.
            if let Some(v) = version.as_deref().filter(|v| is_version_number(v)) {
                let versions = nets.versions(name).await.map_err(described)?;
                if !versions.iter().any(|s| s.number.to_string() == v) {
                    return Err(err(
                        "data",
                        data,
                        format!(
                            "version {v} is out of range: datanet `{name}` has versions 1..={} in store {url}",
                            versions.len()
                        ),
                    ));
                }
            }
            nets.resolve_version(name, version.as_deref())
                .await
                .map_err(described)
        })??;
        let digest: Digest = digest_hex
            .parse()
            .map_err(|e| err("data", data, format!("version digest {digest_hex}: {e}")))?;
        let target = self.data_path(&digest);
        // A takedown since the export erased texts the cached file may still hold: the
        // sidecar records the datanet's takedown count at export time.
        let takedowns = block_on(nets.takedown_count(name))?.map_err(described)?;
        let sidecar = target.with_extension("takedowns");
        let cached_at = std::fs::read_to_string(&sidecar)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if target.is_file() && cached_at == takedowns {
            return Ok(LocalData {
                path: target,
                digest,
            });
        }
        let mut buf = Vec::new();
        let n =
            block_on(nets.export(name, Some(&digest_hex), false, &mut buf))?.map_err(described)?;
        if n == 0 {
            return Err(err(
                "data",
                data,
                format!("version {digest_hex} has no credited examples"),
            ));
        }
        let path = self.cache_write(data, &digest, |f| std::io::Write::write_all(f, &buf))?;
        std::fs::write(&sidecar, takedowns.to_string()).map_err(|e| {
            err(
                "data",
                data,
                format!("caching in {}: {e}", sidecar.display()),
            )
        })?;
        Ok(LocalData { path, digest })
    }

    fn data_path(&self, digest: &Digest) -> PathBuf {
        self.cache_dir
            .join("data")
            .join(format!("{}.jsonl", digest.to_hex()))
    }

    /// Writes `<cache>/data/<digest>.jsonl` through a temp file renamed into place.
    fn cache_write(
        &self,
        data: &str,
        digest: &Digest,
        write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<PathBuf, ExecError> {
        let target = self.data_path(digest);
        let dir = self.cache_dir.join("data");
        let io =
            |e: std::io::Error| err("data", data, format!("caching in {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&dir)
            .map_err(io)?;
        write(tmp.as_file_mut()).map_err(io)?;
        tmp.persist(&target).map_err(|e| io(e.error))?;
        Ok(target)
    }
}

#[cfg(test)]
#[path = "sources_tests.rs"]
mod tests;
