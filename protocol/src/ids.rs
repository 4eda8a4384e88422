//! Digest and identifier newtypes shared by every process: BLAKE3 [`Digest`] (hex display
//! and parse), [`JobId`], [`NodeId`] and the leader's [`FencingToken`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;

/// A BLAKE3 digest: the name of every artifact. Displays and parses as 64 lowercase hex digits.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            for nibble in [b >> 4, b & 0xf] {
                s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
        s
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ProtocolError::Parse {
            what: "digest",
            value: s.to_string(),
            reason: reason.to_string(),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(err("expected 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (byte, &[hi, lo]) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
            let hi = hex_val(hi).ok_or_else(|| err("not a hex digit"))?;
            let lo = hex_val(lo).ok_or_else(|| err("not a hex digit"))?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks a name used as an identifier: 1..=63 chars of `[a-z0-9-]`, not starting or ending
/// with `-`. The same rule makes node names valid DNS labels for certificates.
fn check_name(what: &'static str, s: &str) -> Result<(), ProtocolError> {
    let err = |reason: &str| ProtocolError::Parse {
        what,
        value: s.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() || s.len() > 63 {
        return Err(err("must be 1 to 63 characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("only lowercase letters, digits and '-' are allowed"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(err("must not start or end with '-'"));
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, ProtocolError> {
                let s = s.into();
                check_name($what, &s)?;
                Ok(Self(s))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ProtocolError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProtocolError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

name_id!(
    /// A node (worker or coordinator) name; also the DNS name in its certificate.
    NodeId,
    "node id"
);
name_id!(
    /// A training job's id.
    JobId,
    "job id"
);

impl JobId {
    /// A job id derived from the spec's bytes and a submission sequence number, so ids are
    /// reproducible in tests and unique per submission.
    pub fn derive(spec_bytes: &[u8], seq: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(spec_bytes);
        h.update(&seq.to_le_bytes());
        let hex = Digest::from(h.finalize()).to_hex();
        Self(format!("job-{}", &hex[..12]))
    }
}

/// The coordinator leader's fencing token: its election revision in etcd. Workers refuse
/// commands carrying a token lower than the highest they have seen.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trips_and_matches_blake3() {
        let d = Digest::of(b"hello");
        let hex = d.to_string();
        assert_eq!(hex, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(hex.parse::<Digest>().unwrap(), d);
        assert_eq!(hex.to_uppercase().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn digest_parse_rejects_bad_input() {
        assert!("abc".parse::<Digest>().is_err());
        let bad = "g".repeat(64);
        let err = bad.parse::<Digest>().unwrap_err().to_string();
        assert!(err.contains("not a hex digit"), "{err}");
    }

    #[test]
    fn digest_serde_is_hex_string() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn node_ids_are_dns_labels() {
        assert!(NodeId::new("worker-1").is_ok());
        assert!(NodeId::new("Worker").is_err());
        assert!(NodeId::new("-w").is_err());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a".repeat(64)).is_err());
        assert!(serde_json::from_str::<NodeId>("\"bad name\"").is_err());
    }

    #[test]
    fn job_ids_are_reproducible_and_distinct_per_sequence() {
        let a = JobId::derive(b"spec", 1);
        assert_eq!(a, JobId::derive(b"spec", 1));
        assert_ne!(a, JobId::derive(b"spec", 2));
        assert!(a.as_str().starts_with("job-"));
    }
}
