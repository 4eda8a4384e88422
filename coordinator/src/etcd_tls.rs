//! Connecting to etcd over TLS: etcd started with `--cert-file`/`--key-file` (and, for
//! mutual TLS, `--client-cert-auth --trusted-ca-file`) is reached at `https://` endpoints
//! with the CA that signed its certificate and, where it asks for one, this process's client
//! certificate. The same PEM files `tributary certs` writes serve for both (a node
//! certificate is valid for server and client authentication).
//!
//! The checks here are what an operator gets wrong: a mix of `http://` and `https://`
//! endpoints, a CA given for plain-text endpoints, an `https://` endpoint without a CA, a
//! certificate without its key, an unreadable or non-PEM file. Each is an error that names
//! the flag and the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error::CoordError;

/// The files of a TLS connection to etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file of the CA that signed etcd's server certificate (`--etcd-ca`).
    pub ca: PathBuf,
    /// This process's client certificate and key (`--etcd-cert`, `--etcd-key`), for an etcd
    /// started with `--client-cert-auth`; `None` for server-only TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn config(msg: impl Into<String>) -> CoordError {
    CoordError::EtcdConfig(msg.into())
}

/// Splits `url` into its endpoints and checks that their scheme agrees with `tls`: all
/// `http://` without TLS, all `https://` with it.
pub fn endpoints(url: &str, tls: bool) -> Result<Vec<&str>, CoordError> {
    let eps: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if eps.is_empty() {
        return Err(config("--etcd names no endpoint"));
    }
    for ep in &eps {
        let secure = if ep.starts_with("https://") {
            true
        } else if ep.starts_with("http://") {
            false
        } else {
            return Err(config(format!(
                "--etcd endpoint {ep:?} must start with http:// or https://"
            )));
        };
        match (secure, tls) {
            (true, false) => {
                return Err(config(format!(
                    "--etcd endpoint {ep} is https:// but no CA was given (--etcd-ca)"
                )));
            }
            (false, true) => {
                return Err(config(format!(
                    "--etcd endpoint {ep} is http:// but TLS files were given (--etcd-ca); \
                     use https:// endpoints"
                )));
            }
            _ => {}
        }
    }
    Ok(eps)
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, CoordError> {
    let bytes =
        std::fs::read(path).map_err(|e| config(format!("{flag} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(config(format!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl EtcdTls {
    /// The TLS files from the CLI's flags: `ca` is required when either is given, and the
    /// certificate and key come together.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<Self>, CoordError> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(config("--etcd-cert was given without --etcd-key")),
            (None, Some(_)) => return Err(config("--etcd-key was given without --etcd-cert")),
        };
        match (ca, identity) {
            (Some(ca), identity) => Ok(Some(Self { ca, identity })),
            (None, Some(_)) => Err(config(
                "--etcd-cert/--etcd-key need --etcd-ca (the CA that signed etcd's certificate)",
            )),
            (None, None) => Ok(None),
        }
    }

    /// The client TLS options, the PEM files read and checked.
    pub fn options(&self) -> Result<TlsOptions, CoordError> {
        let ca = read_pem("--etcd-ca", &self.ca)?;
        let mut opts = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            let cert = read_pem("--etcd-cert", cert)?;
            let key = read_pem("--etcd-key", key)?;
            opts = opts.identity(Identity::from_pem(cert, key));
        }
        Ok(opts)
    }
}

/// Connects to etcd at `url` (comma-separated endpoints), over TLS when `tls` is given.
pub async fn connect_with(url: &str, tls: Option<&EtcdTls>) -> Result<Client, CoordError> {
    let eps = endpoints(url, tls.is_some())?;
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        // No per-request timeout: campaigns and watches block for as long as they need.
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some(tls) = tls {
        opts = opts.with_tls(tls.options()?);
    }
    Ok(Client::connect(eps, Some(opts)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_agree_with_tls() {
        assert_eq!(
            endpoints("http://a:2379, http://b:2379", false).unwrap(),
            vec!["http://a:2379", "http://b:2379"]
        );
        assert_eq!(
            endpoints("https://a:2379", true).unwrap(),
            vec!["https://a:2379"]
        );
        let e = endpoints("https://a:2379", false).unwrap_err().to_string();
        assert!(e.contains("--etcd-ca"), "{e}");
        let e = endpoints("http://a:2379,https://b:2379", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://a:2379") && e.contains("https://"), "{e}");
        let e = endpoints("a:2379", false).unwrap_err().to_string();
        assert!(e.contains("must start with http:// or https://"), "{e}");
        assert!(endpoints(" , ", false).is_err());
    }

    #[test]
    fn flags_come_in_the_right_sets() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(EtcdTls::from_flags(None, None, None).unwrap(), None);
        assert_eq!(
            EtcdTls::from_flags(p("ca"), None, None).unwrap(),
            Some(EtcdTls {
                ca: "ca".into(),
                identity: None
            })
        );
        let e = EtcdTls::from_flags(p("ca"), p("c"), None).unwrap_err();
        assert!(e.to_string().contains("--etcd-key"), "{e}");
        let e = EtcdTls::from_flags(None, p("c"), p("k")).unwrap_err();
        assert!(e.to_string().contains("--etcd-ca"), "{e}");
    }

    #[test]
    fn unreadable_and_non_pem_files_name_the_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not a certificate").unwrap();
        let tls = EtcdTls {
            ca: junk.clone(),
            identity: None,
        };
        let e = tls.options().unwrap_err().to_string();
        assert!(
            e.contains("--etcd-ca") && e.contains("junk.pem") && e.contains("PEM"),
            "{e}"
        );
        let tls = EtcdTls {
            ca: dir.path().join("missing.pem"),
            identity: None,
        };
        let e = tls.options().unwrap_err().to_string();
        assert!(e.contains("--etcd-ca") && e.contains("missing.pem"), "{e}");
    }
}
