//! Large f32 tensors streamed in chunks: an 8-byte element count, then frames of at most
//! [`CHUNK_ELEMS`] little-endian f32s, then the 32-byte BLAKE3 of all the tensor's bytes.
//! The receiver hashes as it reads and refuses a mismatch, a chunk that overruns the count,
//! or a count above its limit.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::{ProtocolError, Result};
use crate::frame::{read_exact, read_frame, write_frame};
use crate::ids::Digest;

/// Elements per chunk (1 MiB of f32s).
pub const CHUNK_ELEMS: usize = 256 * 1024;
/// Default largest tensor a receiver accepts: 1 Gi elements (4 GiB).
pub const DEFAULT_MAX_TENSOR_ELEMS: u64 = 1 << 30;
/// Most tensors after one message.
pub const MAX_TENSORS: u32 = 1 << 16;

const CHUNK_BYTES: u32 = (CHUNK_ELEMS * 4) as u32;

async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> Result<()> {
    w.write_all(b)
        .await
        .map_err(|e| ProtocolError::Write(e.to_string()))
}

/// Streams one tensor.
pub async fn write_tensor<W: AsyncWrite + Unpin>(w: &mut W, data: &[f32]) -> Result<()> {
    write_all(w, &(data.len() as u64).to_le_bytes()).await?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(CHUNK_ELEMS.min(data.len()) * 4);
    for chunk in data.chunks(CHUNK_ELEMS) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        hasher.update(&buf);
        write_frame(w, &buf, CHUNK_BYTES).await?;
    }
    write_all(w, hasher.finalize().as_bytes()).await
}

/// Reads one tensor of at most `max_elems` elements, verifying its checksum.
pub async fn read_tensor<R: AsyncRead + Unpin>(r: &mut R, max_elems: u64) -> Result<Vec<f32>> {
    let mut len = [0u8; 8];
    read_exact(r, &mut len).await?;
    let len = u64::from_le_bytes(len);
    if len > max_elems {
        return Err(ProtocolError::TensorTooLarge {
            len,
            max: max_elems,
        });
    }
    let len = usize::try_from(len).map_err(|_| ProtocolError::TensorTooLarge {
        len,
        max: max_elems,
    })?;
    // Grow as data arrives rather than trusting the announced length up front.
    let mut out = Vec::with_capacity(len.min(CHUNK_ELEMS));
    let mut hasher = blake3::Hasher::new();
    while out.len() < len {
        let chunk = read_frame(r, CHUNK_BYTES).await?;
        if chunk.is_empty() || chunk.len() % 4 != 0 {
            return Err(ProtocolError::BadChunk(format!(
                "chunk of {} bytes is not a positive whole number of f32s",
                chunk.len()
            )));
        }
        if out.len() + chunk.len() / 4 > len {
            return Err(ProtocolError::BadChunk(format!(
                "chunks overrun the announced {len} elements"
            )));
        }
        hasher.update(&chunk);
        out.extend(
            chunk
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b)),
        );
    }
    let mut expected = [0u8; 32];
    read_exact(r, &mut expected).await?;
    let actual = Digest::from(hasher.finalize());
    if actual.0 != expected {
        return Err(ProtocolError::ChecksumMismatch {
            expected: Digest(expected).to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(out)
}

/// Writes a tensor count, then each tensor.
pub async fn write_tensors<W: AsyncWrite + Unpin>(w: &mut W, tensors: &[Vec<f32>]) -> Result<()> {
    let count = u32::try_from(tensors.len())
        .ok()
        .filter(|c| *c <= MAX_TENSORS)
        .ok_or(ProtocolError::TooManyTensors {
            count: u32::MAX,
            max: MAX_TENSORS,
        })?;
    write_all(w, &count.to_le_bytes()).await?;
    for t in tensors {
        write_tensor(w, t).await?;
    }
    Ok(())
}

/// Reads a tensor count, then each tensor.
pub async fn read_tensors<R: AsyncRead + Unpin>(
    r: &mut R,
    max_elems: u64,
) -> Result<Vec<Vec<f32>>> {
    let mut count = [0u8; 4];
    read_exact(r, &mut count).await?;
    let count = u32::from_le_bytes(count);
    if count > MAX_TENSORS {
        return Err(ProtocolError::TooManyTensors {
            count,
            max: MAX_TENSORS,
        });
    }
    let mut out = Vec::with_capacity(count.min(64) as usize);
    for _ in 0..count {
        out.push(read_tensor(r, max_elems).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
    }

    #[tokio::test]
    async fn multi_chunk_tensor_round_trips() {
        let t = data(CHUNK_ELEMS * 2 + 17);
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let send = t.clone();
        let writer = tokio::spawn(async move { write_tensors(&mut a, &[send, vec![]]).await });
        let got = read_tensors(&mut b, DEFAULT_MAX_TENSOR_ELEMS)
            .await
            .unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got, vec![t, vec![]]);
    }

    #[tokio::test]
    async fn corrupted_chunk_fails_the_checksum() {
        let mut wire = Vec::new();
        write_tensor(&mut wire, &data(1000)).await.unwrap();
        // Flip one byte inside the first chunk's payload (after 8-byte count + 4-byte len).
        wire[8 + 4 + 100] ^= 0x01;
        let err = read_tensor(&mut wire.as_slice(), 10_000).await.unwrap_err();
        assert!(
            matches!(err, ProtocolError::ChecksumMismatch { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn announced_length_over_limit_is_refused() {
        let mut wire = Vec::new();
        write_tensor(&mut wire, &data(100)).await.unwrap();
        let err = read_tensor(&mut wire.as_slice(), 99).await.unwrap_err();
        assert!(
            err.to_string().contains("exceeds the maximum of 99"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn chunk_overrunning_the_count_is_refused() {
        let mut wire = Vec::new();
        write_tensor(&mut wire, &data(10)).await.unwrap();
        wire[..8].copy_from_slice(&5u64.to_le_bytes());
        let err = read_tensor(&mut wire.as_slice(), 100).await.unwrap_err();
        assert!(matches!(err, ProtocolError::BadChunk(_)), "{err}");
    }
}
