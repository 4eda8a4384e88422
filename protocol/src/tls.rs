//! Mutual TLS for QUIC with rustls (ring provider, TLS 1.3 only): servers require a client
//! certificate signed by the cluster CA; clients verify the server against the same CA.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::certs::{CA_CERT, node_paths};
use crate::error::{ProtocolError, Result};
use crate::ids::NodeId;

/// ALPN protocol id; carries the major protocol version.
pub const ALPN: &[u8] = b"tributary/1";

/// How often an idle connection sends a keep-alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection with no traffic for this long is dead (a peer killed with -9).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn tls_err(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Tls(e.to_string())
}

/// A node's identity: the cluster CA, its certificate chain and its private key.
#[derive(Debug)]
pub struct NodeTls {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for NodeTls {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ProtocolError::Tls(format!("{}: {e}", path.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ProtocolError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ProtocolError::Tls(format!(
            "{}: no certificates found",
            path.display()
        )));
    }
    Ok(certs)
}

impl NodeTls {
    /// Loads `ca.pem`, `NODE.pem` and `NODE.key` from a certs directory.
    pub fn load(dir: &Path, node: &NodeId) -> Result<Self> {
        let (cert, key) = node_paths(dir, node);
        Self::from_files(&dir.join(CA_CERT), &cert, &key)
    }

    /// Loads the three PEM files from explicit paths.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        for c in load_certs(ca)? {
            roots.add(c).map_err(tls_err)?;
        }
        let chain = load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| ProtocolError::Tls(format!("{}: {e}", key.display())))?;
        Ok(Self {
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(KEEP_ALIVE));
        t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
        Arc::new(t)
    }

    /// QUIC server config that requires and verifies client certificates.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(tls_err)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(tls_err)?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(Self::transport());
        Ok(cfg)
    }

    /// QUIC client config that presents our certificate and verifies the server's.
    pub fn client_config(&self) -> Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(Self::transport());
        Ok(cfg)
    }

    /// A client config that presents no certificate at all (for tests of refusal).
    pub fn anonymous_client_config(&self) -> Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(tls_err)?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}
