//! The protocol crate's error type: one enum, each variant naming what went wrong.

use std::path::PathBuf;

/// Everything that can go wrong at a process boundary.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A frame announced more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    /// A tensor announced more elements than the receiver accepts.
    #[error("tensor of {len} elements exceeds the maximum of {max} elements")]
    TensorTooLarge { len: u64, max: u64 },
    /// A message carried more tensors than allowed.
    #[error("message carries {count} tensors, more than the maximum of {max}")]
    TooManyTensors { count: u32, max: u32 },
    /// The BLAKE3 checksum at the end of a streamed tensor did not match its contents.
    #[error("tensor checksum mismatch: sender said {expected}, received data hashes to {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    /// A chunk of a streamed tensor had a length that is not a whole number of f32s, or
    /// overran the announced length.
    #[error("malformed tensor chunk: {0}")]
    BadChunk(String),
    /// Bytes off the wire failed rkyv/bytecheck validation.
    #[error("invalid message bytes: {0}")]
    InvalidMessage(String),
    /// Serializing a message failed.
    #[error("could not encode message: {0}")]
    Encode(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    /// The peer sent something other than what the protocol expects at this point.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The stream ended before a complete frame arrived.
    #[error("stream closed before a complete frame was read")]
    UnexpectedEof,
    /// A QUIC read failed.
    #[error("QUIC read failed: {0}")]
    Read(String),
    /// A QUIC write failed.
    #[error("QUIC write failed: {0}")]
    Write(String),
    /// Connecting to a peer failed (including a TLS handshake the peer refused).
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// A QUIC connection-level failure after the connection was established.
    #[error("QUIC connection failed: {0}")]
    Connection(String),
    /// Building a TLS or QUIC configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Generating certificates failed.
    #[error("certificate generation: {0}")]
    CertGen(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value failed to parse (digest, id, address).
    #[error("invalid {what} {value:?}: {reason}")]
    Parse {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// A job spec is invalid; the message names the field and the limit.
    #[error("invalid job spec: {0}")]
    Spec(String),
    /// The remote side answered with an error.
    #[error("peer reported an error: {0}")]
    Remote(String),
}

impl ProtocolError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
