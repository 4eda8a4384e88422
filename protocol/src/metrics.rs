//! QUIC traffic accounting: the Prometheus counters `tributary_quic_sent_bytes_total` and
//! `tributary_quic_received_bytes_total` (default registry, registered on first use), a
//! per-connection [`ByteCounts`], and [`Counted`], the stream adapter through which the
//! endpoints write and read every frame and tensor chunk, so each byte is counted once.
//!
//! The bytes counted are the application stream bytes (length prefixes, rkyv frames, tensor
//! headers, chunks and checksums), not QUIC/UDP overhead: that is what a caller sizing
//! gradient traffic wants. [`crate::QuicClient::bytes`] still gives the UDP totals.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn counter(name: &str, help: &str) -> IntCounter {
    match IntCounter::new(name, help) {
        Ok(c) => {
            // A second registration (another copy of this crate in one process) is harmless.
            let _ = prometheus::register(Box::new(c.clone()));
            c
        }
        Err(e) => unreachable_metric(&e),
    }
}

#[allow(clippy::panic)]
fn unreachable_metric(e: &prometheus::Error) -> ! {
    // Only reachable with an invalid metric name, and the names are constants below.
    panic!("invalid metric definition: {e}")
}

/// Application bytes written to QUIC streams by this process.
pub static QUIC_SENT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tributary_quic_sent_bytes_total",
        "Bytes written to QUIC streams (frames, tensor chunks and their headers)",
    )
});

/// Application bytes read from QUIC streams by this process.
pub static QUIC_RECEIVED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "tributary_quic_received_bytes_total",
        "Bytes read from QUIC streams (frames, tensor chunks and their headers)",
    )
});

/// Sent and received byte totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BytesTotals {
    pub sent: u64,
    pub received: u64,
}

impl BytesTotals {
    /// What was added since `earlier` (saturating).
    pub fn since(self, earlier: BytesTotals) -> BytesTotals {
        BytesTotals {
            sent: self.sent.saturating_sub(earlier.sent),
            received: self.received.saturating_sub(earlier.received),
        }
    }
}

/// This process's QUIC stream bytes so far (the two Prometheus counters).
pub fn quic_bytes() -> BytesTotals {
    BytesTotals {
        sent: QUIC_SENT_BYTES.get(),
        received: QUIC_RECEIVED_BYTES.get(),
    }
}

/// One connection's stream bytes, shared by the tasks that use it.
#[derive(Debug, Default)]
pub struct ByteCounts {
    sent: AtomicU64,
    received: AtomicU64,
}

impl ByteCounts {
    /// The totals so far.
    pub fn totals(&self) -> BytesTotals {
        BytesTotals {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }

    fn add_sent(&self, n: usize) {
        let n = n as u64;
        self.sent.fetch_add(n, Ordering::Relaxed);
        QUIC_SENT_BYTES.inc_by(n);
    }

    fn add_received(&self, n: usize) {
        let n = n as u64;
        self.received.fetch_add(n, Ordering::Relaxed);
        QUIC_RECEIVED_BYTES.inc_by(n);
    }
}

/// A stream that counts what passes through it into a connection's [`ByteCounts`] and the
/// process-wide counters.
pub struct Counted<'a, S> {
    inner: &'a mut S,
    counts: &'a ByteCounts,
}

impl<'a, S> Counted<'a, S> {
    pub fn new(inner: &'a mut S, counts: &'a ByteCounts) -> Self {
        Self { inner, counts }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.counts.add_sent(n);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.counts
                .add_received(buf.filled().len().saturating_sub(before));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counted_streams_count_each_byte_once() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let receiver = ByteCounts::default();
        let before = quic_bytes();
        let writer = tokio::spawn(async move {
            let counts = ByteCounts::default();
            let mut w = Counted::new(&mut a, &counts);
            w.write_all(&[7u8; 1000]).await.unwrap();
            counts.totals()
        });
        let mut got = vec![0u8; 1000];
        Counted::new(&mut b, &receiver)
            .read_exact(&mut got)
            .await
            .unwrap();
        let written = writer.await.unwrap();
        assert_eq!(written.sent, 1000);
        assert_eq!(written.received, 0);
        assert_eq!(receiver.totals().received, 1000);
        let delta = quic_bytes().since(before);
        assert!(delta.sent >= 1000 && delta.received >= 1000, "{delta:?}");
    }
}
