//! API keys on the command line: `tributary dev` makes (or reuses) an admin key, prints it
//! and writes it to `<data-dir>/admin.key` and to a per-address file in the user's cache
//! (`~/.cache/tributary/dev-keys/<host>_<port>.key`), both readable by the user only. The
//! client commands (`job`, `adapter`) take `--api-key` / `TRIBUTARY_API_KEY`, and otherwise
//! find a local dev's key by themselves: the per-address file for a loopback endpoint, then
//! `admin.key` in `TRIBUTARY_DATA_DIR` or `./tributary-data`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tributary_ledger::keys::{KeyStore, Scope, new_secret};

/// The file in the data directory that holds a dev process's admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("tributary"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("tributary"))
}

/// `host_port` of an `http://host:port/…` URL.
fn endpoint_slug(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some(format!("{}_{port}", host.trim_matches(['[', ']'])))
}

fn dev_key_path(url: &str) -> Option<PathBuf> {
    Some(
        cache_dir()?
            .join("dev-keys")
            .join(format!("{}.key", endpoint_slug(url)?)),
    )
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, format!("{text}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

fn read_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let key = text.trim();
    (!key.is_empty()).then(|| key.to_string())
}

/// The admin key of a dev process with data directory `data_dir`, serving at `url`: the
/// one in `admin.key` if there is one, else a new one; stored (hashed) in `keys`, and
/// written for the CLI to find.
pub async fn dev_admin_key(keys: &KeyStore, data_dir: &Path, url: &str) -> anyhow::Result<String> {
    let file = data_dir.join(ADMIN_KEY_FILE);
    let secret = match read_key(&file) {
        Some(k) => k,
        None => {
            let k = new_secret();
            write_private(&file, &k)?;
            k
        }
    };
    keys.add(&secret, "admin", &[Scope::Admin], now_ms())
        .await
        .context("storing the admin key")?;
    if let Some(p) = dev_key_path(url)
        && let Err(e) = write_private(&p, &secret)
    {
        tracing::warn!(error = %e, "could not write the key where the CLI looks for it");
    }
    Ok(secret)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The key a client command uses for `url`: the flag or environment variable, else a
/// local dev's key found on disk.
pub fn client_key(flag: Option<&str>, url: &str) -> Option<String> {
    if let Some(k) = flag.map(str::trim).filter(|k| !k.is_empty()) {
        return Some(k.to_string());
    }
    let loopback = endpoint_slug(url).is_some_and(|s| {
        s.starts_with("127.") || s.starts_with("localhost_") || s.starts_with("::1_")
    });
    if loopback && let Some(k) = dev_key_path(url).and_then(|p| read_key(&p)) {
        return Some(k);
    }
    let data = std::env::var_os("TRIBUTARY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tributary-data"));
    read_key(&data.join(ADMIN_KEY_FILE))
}

/// A datanet key ring holding `key`'s record from the key store in `store`, if it is a live
/// key (the ring then maps it to its owner when it has the `contribute` scope).
pub async fn store_ring(
    store: &str,
    key: &str,
) -> anyhow::Result<tributary_ledger::datanet::KeyRing> {
    let keys = KeyStore::new(tributary_ledger::store::Store::open(store).context("--store")?);
    let mut set = tributary_ledger::keys::KeySet::default();
    if let Some(rec) = keys.resolve(key).await.context("reading the key store")? {
        set.insert(rec);
    }
    Ok(tributary_ledger::datanet::KeyRing::from_keys(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_map_to_file_names() {
        assert_eq!(
            endpoint_slug("http://127.0.0.1:7400").as_deref(),
            Some("127.0.0.1_7400")
        );
        assert_eq!(
            endpoint_slug("http://[::1]:80/v1").as_deref(),
            Some("::1_80")
        );
        assert_eq!(endpoint_slug("nope"), None);
        assert_eq!(client_key(Some(" k "), "http://x:1").as_deref(), Some("k"));
    }
}
