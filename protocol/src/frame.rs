//! Length-prefixed frames: a 4-byte little-endian length, then that many bytes. The reader
//! refuses a length above its maximum before allocating anything, and reads into an aligned
//! buffer so rkyv can validate the archive in place.

use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{ProtocolError, Result};
use crate::messages::WireMessage;

/// Default largest frame: 64 MiB. Tensors do not count: they are streamed in chunks.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], max: u32) -> Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l <= max)
        .ok_or(ProtocolError::FrameTooLarge {
            len: bytes.len() as u64,
            max: u64::from(max),
        })?;
    w.write_all(&len.to_le_bytes())
        .await
        .map_err(|e| ProtocolError::Write(e.to_string()))?;
    w.write_all(bytes)
        .await
        .map_err(|e| ProtocolError::Write(e.to_string()))
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<AlignedVec> {
    let mut len = [0u8; 4];
    read_exact(r, &mut len).await?;
    let len = u32::from_le_bytes(len);
    if len > max {
        return Err(ProtocolError::FrameTooLarge {
            len: u64::from(len),
            max: u64::from(max),
        });
    }
    let mut buf = AlignedVec::<16>::with_capacity(len as usize);
    buf.resize(len as usize, 0);
    read_exact(r, buf.as_mut_slice()).await?;
    Ok(buf)
}

pub(crate) async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<()> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(ProtocolError::UnexpectedEof)
        }
        Err(e) => Err(ProtocolError::Read(e.to_string())),
    }
}

/// Encodes `msg` and writes it as one frame.
pub async fn write_msg<W: AsyncWrite + Unpin, M: WireMessage>(
    w: &mut W,
    msg: &M,
    max: u32,
) -> Result<()> {
    let bytes = msg.encode()?;
    write_frame(w, &bytes, max).await
}

/// Reads one frame and decodes it with validation.
pub async fn read_msg<R: AsyncRead + Unpin, M: WireMessage>(r: &mut R, max: u32) -> Result<M> {
    let bytes = read_frame(r, max).await?;
    M::decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello", 16).await.unwrap();
        let got = read_frame(&mut b, 16).await.unwrap();
        assert_eq!(got.as_slice(), b"hello");
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_on_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let err = write_frame(&mut a, &[0u8; 17], 16).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("exceeds the maximum frame size of 16"),
            "{err}"
        );
        // A hostile sender that lies about the length is stopped before any allocation.
        a.write_all(&(u32::MAX).to_le_bytes()).await.unwrap();
        let err = read_frame(&mut b, 16).await.unwrap_err();
        assert!(
            matches!(err, ProtocolError::FrameTooLarge { len, max: 16 } if len == u64::from(u32::MAX))
        );
    }

    #[tokio::test]
    async fn truncated_frame_is_eof() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_le_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame(&mut b, 16).await,
            Err(ProtocolError::UnexpectedEof)
        ));
    }
}
