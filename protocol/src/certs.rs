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

/// A node certificate's parameters: `dns_names`, `localhost` and 127.0.0.1 as subject
/// alternative names, valid for TLS server and client authentication.
fn node_params(common_name: &str, mut dns_names: Vec<String>) -> Result<CertificateParams> {
    dns_names.push("localhost".to_string());
    let mut params = CertificateParams::new(dns_names).map_err(gen_err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A fresh cluster CA and one certificate signed by it that names every node, in PEM, in
/// the shape cert-manager gives a Secret (`ca.crt`, `tls.crt`, `tls.key`). The CA's key is
/// not kept: nothing more can be signed with it.
#[derive(Debug, Clone)]
pub struct SharedCertificate {
    /// The CA certificate (`ca.crt`).
    pub ca_pem: String,
    /// The certificate naming every node (`tls.crt`).
    pub cert_pem: String,
    /// Its private key, PKCS#8 (`tls.key`).
    pub key_pem: String,
}

/// Makes a [`SharedCertificate`] for `dns_names` (each a DNS name: lowercase letters,
/// digits, '-' and '.'); `localhost` and 127.0.0.1 are added, as on every node certificate.
pub fn shared_certificate(dns_names: &[String]) -> Result<SharedCertificate> {
    let Some(first) = dns_names.first() else {
        return Err(ProtocolError::CertGen(
            "a shared certificate needs at least one DNS name".into(),
        ));
    };
    for n in dns_names {
        check_dns_name(n)?;
    }
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca = ca_params().self_signed(&ca_key).map_err(gen_err)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = node_params(first, dns_names.to_vec())?
        .signed_by(&key, &issuer)
        .map_err(gen_err)?;
    Ok(SharedCertificate {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A DNS name as Kubernetes names pods and Services: labels of 1 to 63 lowercase letters,
/// digits and '-' (not at either end), joined by '.', at most 253 characters.
fn check_dns_name(name: &str) -> Result<()> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(ProtocolError::CertGen(format!(
            "{name:?} is not a DNS name (labels of 1 to 63 lowercase letters, digits and '-', \
             not starting or ending with '-', joined by '.'; at most 253 characters)"
        )));
    }
    Ok(())
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
    let params = node_params(node.as_str(), vec![node.to_string()])?;
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
    fn a_shared_certificate_names_every_node_and_chains_to_its_ca() {
        let names = vec!["coord-0".to_string(), "etcd-0.etcd".to_string()];
        let shared = shared_certificate(&names).unwrap();
        assert!(shared.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(shared.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        // The files load as a node identity, as the init container lays them out.
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("n.pem"),
            dir.path().join("n.key"),
        );
        fs::write(&ca, &shared.ca_pem).unwrap();
        fs::write(&cert, &shared.cert_pem).unwrap();
        fs::write(&key, &shared.key_pem).unwrap();
        crate::NodeTls::from_files(&ca, &cert, &key).unwrap();
        let other = shared_certificate(&names).unwrap();
        assert_ne!(other.ca_pem, shared.ca_pem, "a fresh CA each time");
    }

    #[test]
    fn a_shared_certificate_refuses_what_is_not_a_dns_name() {
        for bad in ["", "Coord-0", "a_b", "-a", "a..b", &"x".repeat(64)] {
            let err = shared_certificate(&[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a DNS name"), "{bad}: {err}");
        }
        let err = shared_certificate(&[]).unwrap_err().to_string();
        assert!(err.contains("at least one"), "{err}");
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
