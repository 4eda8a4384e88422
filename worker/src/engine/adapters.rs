//! Where the engine finds adapters by digest: PEFT directories registered on this machine
//! (tests, `tributary dev`'s uploads) and the ledger's [`AdapterRegistry`], which stores
//! every trained adapter's files under their digest.
//!
//! A local directory's digest is computed exactly as the registry computes it over the same
//! files ([`adapter_digest`]: every plain file of the directory), so the same adapter has
//! the same digest whichever way it arrived.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tributary_ledger::adapters::{AdapterFile, AdapterRegistry, adapter_digest};
use tributary_protocol::ids::Digest;

use super::EngineError;

/// An adapter's PEFT files, wherever they came from.
#[derive(Debug)]
pub enum AdapterFiles {
    /// A directory on this machine holding `adapter_config.json` and the safetensors.
    Dir(PathBuf),
    /// The files themselves (written to a temporary directory to be loaded).
    Files(Vec<AdapterFile>),
}

/// Finds an adapter's files by digest. Called on the engine's loader thread, never on the
/// thread that runs the model: it may block (a store download).
pub trait AdapterSource: Send + Sync + 'static {
    /// The files of the adapter with this digest; `Ok(None)` when it is not known.
    fn fetch(&self, digest: &Digest) -> Result<Option<AdapterFiles>, EngineError>;
}

/// The engine's adapter source: local PEFT directories registered by digest, then the
/// ledger's registry (when one is attached).
#[derive(Default)]
pub struct AdapterStore {
    local: RwLock<HashMap<Digest, PathBuf>>,
    registry: Option<(AdapterRegistry, tokio::runtime::Handle)>,
}

impl std::fmt::Debug for AdapterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterStore")
            .field("registry", &self.registry.is_some())
            .finish_non_exhaustive()
    }
}

impl AdapterStore {
    /// Local directories only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also looks adapters up in `registry`, whose async calls run on `runtime`.
    pub fn with_registry(registry: AdapterRegistry, runtime: tokio::runtime::Handle) -> Self {
        Self {
            local: RwLock::new(HashMap::new()),
            registry: Some((registry, runtime)),
        }
    }

    /// Registers a PEFT directory; returns its digest (the registry's digest of the same
    /// files). Its files are read now to digest them; they are loaded on first use.
    pub fn register_dir(&self, dir: &Path) -> Result<Digest, EngineError> {
        let digest = digest_peft_dir(dir)?;
        if let Ok(mut local) = self.local.write() {
            local.insert(digest, dir.to_path_buf());
        }
        Ok(digest)
    }

    /// Whether an adapter is registered locally.
    pub fn is_local(&self, digest: &Digest) -> bool {
        self.local.read().is_ok_and(|l| l.contains_key(digest))
    }
}

/// The registry's digest of a PEFT directory: [`adapter_digest`] over its plain files.
pub fn digest_peft_dir(dir: &Path) -> Result<Digest, EngineError> {
    let io = |e: std::io::Error| EngineError::Adapter(format!("reading {}: {e}", dir.display()));
    let files: Vec<AdapterFile> = crate::executor::read_dir_files(dir)
        .map_err(io)?
        .into_iter()
        .map(|f| AdapterFile {
            name: f.name,
            bytes: f.bytes.into(),
        })
        .collect();
    if files.is_empty() {
        return Err(EngineError::Adapter(format!(
            "{} holds no files (expected adapter_config.json and adapter_model.safetensors)",
            dir.display()
        )));
    }
    adapter_digest(&files)
        .parse()
        .map_err(|e| EngineError::Adapter(format!("digest of {}: {e}", dir.display())))
}

impl AdapterSource for AdapterStore {
    fn fetch(&self, digest: &Digest) -> Result<Option<AdapterFiles>, EngineError> {
        if let Some(dir) = self.local.read().ok().and_then(|l| l.get(digest).cloned()) {
            return Ok(Some(AdapterFiles::Dir(dir)));
        }
        let Some((registry, runtime)) = &self.registry else {
            return Ok(None);
        };
        let hex = digest.to_hex();
        let err = |e: tributary_ledger::adapters::AdapterError| {
            EngineError::Adapter(format!("adapter {hex} from the registry: {e}"))
        };
        runtime.block_on(async {
            match registry.get(&hex).await.map_err(err)? {
                None => Ok(None),
                Some(entry) => Ok(Some(AdapterFiles::Files(
                    registry.files(&entry).await.map_err(err)?,
                ))),
            }
        })
    }
}

impl<T: AdapterSource> AdapterSource for Arc<T> {
    fn fetch(&self, digest: &Digest) -> Result<Option<AdapterFiles>, EngineError> {
        (**self).fetch(digest)
    }
}
