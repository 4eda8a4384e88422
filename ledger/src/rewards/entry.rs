//! Reward-log entries and their on-store framing.
//!
//! An entry is rkyv-encoded and framed as `MAGIC ‖ body ‖ BLAKE3(MAGIC ‖ body)`, so a flipped
//! or truncated object is caught at its own sequence number. The chain hash of an entry is the
//! BLAKE3 of its whole frame; the next entry stores it as `prev`.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

/// Frame header: format name and version 1.
pub const MAGIC: &[u8; 5] = b"TRWL\x01";
const TRAILER: usize = 32;

/// The `prev` hash of entry 0.
pub const GENESIS: [u8; 32] = [0; 32];

/// One contributor's share of one answer's fee, in micro-units.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub contributor: String,
    pub amount: u64,
}

/// The rewards for one served answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RewardRecord {
    pub request_id: String,
    /// BLAKE3 digest of the adapter that served the answer.
    pub adapter: [u8; 32],
    /// BLAKE3 digest of the attribution result the shares come from.
    pub attribution: [u8; 32],
    /// Wall-clock time of the answer, ms since the Unix epoch.
    pub time_ms: u64,
    /// The fee distributed; the shares must add up to exactly this.
    pub total: u64,
    /// Contributor → amount, sorted by contributor, no duplicates.
    pub shares: Vec<Share>,
}

/// One log entry: a batch of reward records at a sequence number, written by one epoch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RewardEntry {
    pub seq: u64,
    pub epoch: u64,
    pub prev: [u8; 32],
    /// Empty for the fence entry a new writer appends when it takes over.
    pub batch: Vec<RewardRecord>,
}

/// Why bytes are not a valid entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("object is {len} bytes, shorter than the {min}-byte frame")]
    TooShort { len: usize, min: usize },
    #[error("bad magic (not a reward-log entry or unknown format version)")]
    BadMagic,
    #[error("checksum mismatch: the object was modified or truncated")]
    Checksum,
    #[error("rkyv decode failed: {0}")]
    Decode(String),
    #[error("rkyv encode failed: {0}")]
    Encode(String),
    #[error(
        "record `{request_id}`: shares add up to {sum}, total says {total} (they must be equal)"
    )]
    Arithmetic {
        request_id: String,
        sum: u128,
        total: u64,
    },
    #[error("record `{request_id}`: shares not sorted by contributor or duplicated")]
    UnsortedShares { request_id: String },
}

impl RewardRecord {
    /// Checks that the shares are sorted, unique and add up to `total`.
    pub fn check(&self) -> Result<(), EntryError> {
        let sum: u128 = self.shares.iter().map(|s| s.amount as u128).sum();
        if sum != self.total as u128 {
            return Err(EntryError::Arithmetic {
                request_id: self.request_id.clone(),
                sum,
                total: self.total,
            });
        }
        if self
            .shares
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.contributor >= b.contributor))
        {
            return Err(EntryError::UnsortedShares {
                request_id: self.request_id.clone(),
            });
        }
        Ok(())
    }
}

impl RewardEntry {
    /// Encodes and frames the entry.
    pub fn encode(&self) -> Result<Bytes, EntryError> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map_err(|e| EntryError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + body.len() + TRAILER);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&body);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(Bytes::from(out))
    }

    /// Checks the frame and decodes the entry (rkyv with validation).
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let min = MAGIC.len() + TRAILER;
        if bytes.len() < min {
            return Err(EntryError::TooShort {
                len: bytes.len(),
                min,
            });
        }
        let (framed, trailer) = bytes.split_at(bytes.len() - TRAILER);
        if blake3::hash(framed).as_bytes() != trailer {
            return Err(if !framed.starts_with(MAGIC) {
                EntryError::BadMagic
            } else {
                EntryError::Checksum
            });
        }
        let Some(body) = framed.strip_prefix(MAGIC) else {
            return Err(EntryError::BadMagic);
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(body);
        rkyv::from_bytes::<RewardEntry, rkyv::rancor::Error>(&aligned)
            .map_err(|e| EntryError::Decode(e.to_string()))
    }
}

/// Chain hash of an encoded entry.
pub fn chain_hash(frame: &[u8]) -> [u8; 32] {
    *blake3::hash(frame).as_bytes()
}

/// Object key of sequence number `seq`.
pub fn entry_key(seq: u64) -> object_store::path::Path {
    object_store::path::Path::from(format!("rewards/{seq:020}"))
}

/// Parses a name under `rewards/` back to its sequence number.
pub fn parse_entry_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RewardEntry {
        RewardEntry {
            seq: 7,
            epoch: 3,
            prev: [9; 32],
            batch: vec![RewardRecord {
                request_id: "req-1".into(),
                adapter: [1; 32],
                attribution: [2; 32],
                time_ms: 1_700_000_000_000,
                total: 100,
                shares: vec![
                    Share {
                        contributor: "alice".into(),
                        amount: 60,
                    },
                    Share {
                        contributor: "bob".into(),
                        amount: 40,
                    },
                ],
            }],
        }
    }

    #[test]
    fn round_trips_and_detects_every_single_byte_flip() {
        let e = sample();
        let bytes = e.encode().unwrap();
        assert_eq!(RewardEntry::decode(&bytes).unwrap(), e);
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x01;
            assert!(RewardEntry::decode(&b).is_err(), "flip at {i} undetected");
        }
        let cut = &bytes[..bytes.len() - 1];
        assert!(RewardEntry::decode(cut).is_err());
    }

    #[test]
    fn arithmetic_check_names_the_record() {
        let mut r = sample().batch.remove(0);
        r.check().unwrap();
        r.total = 101;
        let err = r.check().unwrap_err().to_string();
        assert!(err.contains("req-1") && err.contains("100") && err.contains("101"));
    }

    #[test]
    fn keys_parse_back() {
        let k = entry_key(42);
        assert_eq!(k.as_ref(), "rewards/00000000000000000042");
        assert_eq!(parse_entry_name("00000000000000000042"), Some(42));
        assert_eq!(parse_entry_name("42"), None);
    }
}
