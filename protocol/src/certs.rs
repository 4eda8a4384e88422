//! Development certificates with rcgen: a cluster CA and node certificates signed by it,
//! written as PEM files in one directory (`ca.pem`, `ca.key`, `NODE.pem`, `NODE.key`).
//! Node certificates are valid for both TLS server and client authentication, with the node
//! name, `localhost` and `127.0.0.1` as subject alternative names.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{ProtocolError, Result};
use crate::ids::NodeId;

/// File name of the CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "Tributary cluster CA";

/// Paths of one node's certificate and key inside a certs directory.
pub fn node_paths(dir: &Path, node: &NodeId) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    )
}

fn gen_err(e: rcgen::Error) -> ProtocolError {
    ProtocolError::CertGen(e.to_string())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "Tributary");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes a file that must not exist yet, readable only by its owner when it is a key.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| ProtocolError::io(path, e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| ProtocolError::io(path, e))
}

/// Creates a new CA in `dir` (created if missing). Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| ProtocolError::io(dir, e))?;
    let cert_path = dir.join(CA_CERT);
    if cert_path.exists() || dir.join(CA_KEY).exists() {
        return Err(ProtocolError::CertGen(format!(
            "a CA already exists in {}; refusing to overwrite it",
            dir.display()
        )));
    }
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = ca_params().self_signed(&key).map_err(gen_err)?;
    write_new(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// Issues a certificate for `node`, signed by the CA in `dir`. Refuses to overwrite.
pub fn issue(dir: &Path, node: &NodeId) -> Result<(PathBuf, PathBuf)> {
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem =
        fs::read_to_string(&ca_key_path).map_err(|e| ProtocolError::io(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(gen_err)?;
    // The issuer needs the CA's name, key-id method and key usages, which are fixed; the
    // signature comes from the CA key on disk.
    let issuer = Issuer::new(ca_params(), ca_key);
    let (cert_path, key_path) = node_paths(dir, node);
    if cert_path.exists() || key_path.exists() {
        return Err(ProtocolError::CertGen(format!(
            "a certificate for {node} already exists in {}",
            dir.display()
        )));
    }
    let mut params =
        CertificateParams::new(vec![node.to_string(), "localhost".to_string()]).map_err(gen_err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_writes_pem_files_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca = fs::read_to_string(dir.path().join(CA_CERT)).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let node = NodeId::new("worker-1").unwrap();
        let (cert, key) = issue(dir.path(), &node).unwrap();
        assert!(
            fs::read_to_string(cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert!(fs::read_to_string(key).unwrap().contains("PRIVATE KEY"));
        assert!(
            init_ca(dir.path())
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        assert!(
            issue(dir.path(), &node)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
    }

    #[test]
    fn issue_without_a_ca_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), &NodeId::new("w").unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.key"), "{err}");
    }
}
