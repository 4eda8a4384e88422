//! `--allow-path` for `dev` and `worker`: the directories a worker may read base models and
//! data from, resolved once at start-up.

use std::path::PathBuf;

use anyhow::Context as _;
use tributary_worker::AllowPaths;

/// The resolved allow-list over `roots` (each created if missing, then resolved).
pub fn allow_paths(roots: impl IntoIterator<Item = PathBuf>) -> anyhow::Result<AllowPaths> {
    let roots: Vec<PathBuf> = roots.into_iter().collect();
    AllowPaths::only(roots.iter().cloned()).with_context(|| {
        format!(
            "--allow-path: resolving {}",
            roots
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The local directory of a `file://` or plain-path store URL (None for remote stores).
pub fn local_store_dir(store: &str) -> Option<PathBuf> {
    if let Some(p) = store.strip_prefix("file://") {
        return Some(PathBuf::from(p.split('?').next().unwrap_or(p)));
    }
    (!store.contains("://")).then(|| PathBuf::from(store))
}
