//! Contributor identity. A contributor is an ed25519 key pair; a signed upload carries the
//! public key and a signature over the BLAKE3 digest of the upload's bytes, and its
//! contributor id is `ed25519:<hex public key>`. An unsigned upload needs an API key that a
//! keys file maps to a contributor. The local operator (direct access to the store) may
//! name contributors directly.
//!
//! When a datanet has terms, a signed upload's signature covers the upload digest and the
//! terms digest together ([`super::license::consent_message`]), so the signature is also
//! the contributor's consent to those terms.
//!
//! [`Actor`] is who performs a governance action (takedown, review, terms change): the
//! caller (CLI or HTTP layer) authenticates it and passes it in.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::DatanetError;
use super::record::valid_contributor;
use crate::keys::{KeySet, Scope};

/// Who is uploading, and how they prove it.
#[derive(Debug, Clone)]
pub enum Uploader {
    /// Signed upload: ed25519 public key and signature over the upload's BLAKE3 digest.
    Signed {
        public_key: [u8; 32],
        signature: [u8; 64],
    },
    /// An API key, resolved through a [`KeyRing`].
    ApiKey(String),
    /// Already authenticated by the caller (the HTTP layer's API keys): the contributor and
    /// the key's identity (never the key itself), recorded as consent.
    Authenticated { contributor: String, key_id: String },
    /// The local operator, trusted to name the contributor (rows may name others).
    Operator(Option<String>),
}

/// The contributor id of an ed25519 public key.
pub fn contributor_id(public_key: &[u8; 32]) -> String {
    format!("ed25519:{}", hex(public_key))
}

/// BLAKE3 digest of everything `reader` yields (what an upload signature covers).
pub fn digest_reader(reader: impl std::io::Read) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(reader)?;
    Ok(*h.finalize().as_bytes())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex into exactly `N` bytes.
pub fn parse_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], DatanetError> {
    let s = s.trim();
    let bad = || DatanetError::Auth(format!("{what}: expected {} hex characters", N * 2));
    if s.len() != N * 2 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A new random signing key (32-byte seed), with its hex encodings.
pub struct KeyPair {
    pub secret_hex: String,
    pub public_hex: String,
    pub contributor: String,
}

/// Generates a key pair from 32 random bytes.
#[allow(clippy::disallowed_methods)] // secrets need fresh, OS-seeded entropy
pub fn generate() -> KeyPair {
    let seed: [u8; 32] = rand::random();
    let sk = SigningKey::from_bytes(&seed);
    let pk = sk.verifying_key().to_bytes();
    KeyPair {
        secret_hex: hex(&seed),
        public_hex: hex(&pk),
        contributor: contributor_id(&pk),
    }
}

/// Signs an upload digest with a hex secret key; returns (public key, signature).
pub fn sign_digest(
    secret_hex: &str,
    digest: &[u8; 32],
) -> Result<([u8; 32], [u8; 64]), DatanetError> {
    let seed: [u8; 32] = parse_hex(secret_hex, "secret key")?;
    let sk = SigningKey::from_bytes(&seed);
    Ok((sk.verifying_key().to_bytes(), sk.sign(digest).to_bytes()))
}

/// Signs arbitrary bytes (e.g. [`super::license::consent_message`]) with a hex secret key;
/// returns (public key, signature).
pub fn sign_bytes(secret_hex: &str, message: &[u8]) -> Result<([u8; 32], [u8; 64]), DatanetError> {
    let seed: [u8; 32] = parse_hex(secret_hex, "secret key")?;
    let sk = SigningKey::from_bytes(&seed);
    Ok((sk.verifying_key().to_bytes(), sk.sign(message).to_bytes()))
}

/// API key → contributor, loaded from a keys file: one `API_KEY CONTRIBUTOR` pair a line,
/// `#` comments and blank lines ignored. Keys are held hashed in a [`KeySet`], the product's
/// one key scheme ([`crate::keys`]): a keys file's keys carry the `contribute` scope, and
/// [`KeyRing::from_keys`] accepts keys from the gateway's key store as well.
#[derive(Debug, Clone, Default)]
pub struct KeyRing(KeySet);

impl KeyRing {
    pub fn parse(text: &str) -> Result<Self, DatanetError> {
        let mut ring = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(key), Some(who), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(DatanetError::Auth(format!(
                    "keys file line {}: expected `API_KEY CONTRIBUTOR`",
                    i + 1
                )));
            };
            if !valid_contributor(who) {
                return Err(DatanetError::Auth(format!(
                    "keys file line {}: contributor `{who}` must be 1-128 characters of A-Z a-z 0-9 . _ : @ -",
                    i + 1
                )));
            }
            ring.0
                .insert_secret(key, who, &[Scope::Contribute])
                .map_err(|e| DatanetError::Auth(format!("keys file line {}: {e}", i + 1)))?;
        }
        Ok(ring)
    }

    /// A ring over keys from the key store (those with the `contribute` scope count).
    pub fn from_keys(keys: KeySet) -> Self {
        Self(keys)
    }

    pub fn insert(&mut self, key: impl Into<String>, contributor: impl Into<String>) {
        // Keys too short for the key scheme are not added (`parse` reports them).
        let _ = self
            .0
            .insert_secret(&key.into(), &contributor.into(), &[Scope::Contribute]);
    }

    /// The contributor a key speaks for, if it may upload.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        self.0
            .resolve(key)
            .filter(|r| r.allows(Scope::Contribute))
            .map(|r| r.owner.as_str())
    }
}

/// What an upload's authentication establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The uploader's contributor id, if any (operator uploads may have none).
    pub contributor: Option<String>,
    /// Whether rows may name other contributors (operator only).
    pub may_name_others: bool,
    pub signed: bool,
    /// The public key (hex) of a signed upload, or the API key's identity.
    pub key: Option<String>,
    /// The signature (hex) of a signed upload.
    pub signature: Option<String>,
}

/// Checks the uploader's proof against the upload digest; when the datanet has terms, a
/// signature must cover `upload digest ‖ terms digest`.
pub fn authenticate(
    uploader: &Uploader,
    keys: Option<&KeyRing>,
    digest: &[u8; 32],
    terms_digest: Option<&[u8; 32]>,
) -> Result<Identity, DatanetError> {
    match uploader {
        Uploader::Signed {
            public_key,
            signature,
        } => {
            let vk = VerifyingKey::from_bytes(public_key)
                .map_err(|e| DatanetError::Auth(format!("public key: {e}")))?;
            let sig = Signature::from_bytes(signature);
            match terms_digest {
                Some(t) => vk
                    .verify(&super::license::consent_message(digest, t), &sig)
                    .map_err(|_| {
                        DatanetError::Auth(
                            "signature does not verify over the upload's BLAKE3 digest followed by                              the terms digest in force (`tributary datanet terms NAME`; sign with                              `tributary datanet sign FILE --key K --datanet NAME`)"
                                .into(),
                        )
                    })?,
                None => vk.verify(digest, &sig).map_err(|_| {
                    DatanetError::Auth(
                        "signature does not verify over the BLAKE3 digest of the uploaded bytes"
                            .into(),
                    )
                })?,
            }
            Ok(Identity {
                contributor: Some(contributor_id(public_key)),
                may_name_others: false,
                signed: true,
                key: Some(hex(public_key)),
                signature: Some(hex(signature)),
            })
        }
        Uploader::ApiKey(key) => {
            let who = keys.and_then(|k| k.lookup(key)).ok_or_else(|| {
                DatanetError::Auth("unsigned upload with an unknown API key".into())
            })?;
            Ok(Identity {
                contributor: Some(who.to_string()),
                may_name_others: false,
                signed: false,
                key: Some(super::license::api_key_identity(key)),
                signature: None,
            })
        }
        Uploader::Authenticated {
            contributor,
            key_id,
        } => {
            if !valid_contributor(contributor) {
                return Err(DatanetError::Auth(format!(
                    "contributor `{contributor}` must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"
                )));
            }
            Ok(Identity {
                contributor: Some(contributor.clone()),
                may_name_others: false,
                signed: false,
                key: Some(key_id.clone()),
                signature: None,
            })
        }
        Uploader::Operator(who) => {
            if let Some(w) = who
                && !valid_contributor(w)
            {
                return Err(DatanetError::Auth(format!(
                    "--contributor `{w}` must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"
                )));
            }
            Ok(Identity {
                contributor: who.clone(),
                may_name_others: true,
                signed: false,
                key: None,
                signature: None,
            })
        }
    }
}

/// Who performs a governance action, as authenticated by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The local operator, or an API key with the `admin` scope: may act on anything.
    Admin,
    /// A contributor (an API key with the `contribute` scope, or an ed25519 key holder):
    /// may act on their own examples, and as owner on datanets they own.
    Contributor(String),
}

impl Actor {
    /// `admin` or the contributor id (recorded in logs and decisions).
    pub fn label(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::Contributor(c) => c.clone(),
        }
    }

    /// Allows the admin and the datanet's owner.
    pub fn require_owner(&self, datanet: &str, owner: Option<&str>) -> Result<(), DatanetError> {
        match self {
            Actor::Admin => Ok(()),
            Actor::Contributor(c) if owner == Some(c.as_str()) => Ok(()),
            Actor::Contributor(c) => Err(DatanetError::Forbidden(format!(
                "`{c}` is not the owner of datanet `{datanet}` (owner: {})",
                owner.unwrap_or("none; only an admin may")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_digest_and_name_the_contributor() {
        let kp = generate();
        let digest = *blake3::hash(b"rows").as_bytes();
        let (pk, sig) = sign_digest(&kp.secret_hex, &digest).unwrap();
        let up = Uploader::Signed {
            public_key: pk,
            signature: sig,
        };
        let id = authenticate(&up, None, &digest, None).unwrap();
        assert_eq!(id.contributor.as_deref(), Some(kp.contributor.as_str()));
        assert!(id.signed && !id.may_name_others);
        let other = *blake3::hash(b"rows!").as_bytes();
        let e = authenticate(&up, None, &other, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify"), "{e}");
    }

    #[test]
    fn api_keys_map_to_contributors_and_unknown_keys_are_refused() {
        let ring = KeyRing::parse("# team\nkey-0123456789abcdef alice\n\n").unwrap();
        let d = [0u8; 32];
        let id = authenticate(
            &Uploader::ApiKey("key-0123456789abcdef".into()),
            Some(&ring),
            &d,
            None,
        )
        .unwrap();
        assert_eq!(id.contributor.as_deref(), Some("alice"));
        assert!(authenticate(&Uploader::ApiKey("nope".into()), Some(&ring), &d, None).is_err());
        let e = KeyRing::parse("short alice").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("minimum 16"), "{e}");
    }
}
