//! QUIC endpoints over mutual TLS. A connection starts with a protocol-version handshake on
//! its first bidirectional stream; after that every request gets its own bidirectional
//! stream: one framed message plus its tensors each way, then the stream is finished.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tracing::{Instrument, debug, info_span, warn};

use crate::error::{ProtocolError, Result};
use crate::frame::{DEFAULT_MAX_FRAME, read_msg, write_msg};
use crate::ids::NodeId;
use crate::messages::{
    Hello, HelloReply, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Payload, WireMessage,
};
use crate::metrics::{ByteCounts, BytesTotals, Counted};
use crate::shutdown::Shutdown;
use crate::tensor::{DEFAULT_MAX_TENSOR_ELEMS, read_tensors, write_tensors};
use crate::tls::NodeTls;

/// Size limits a receiver enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame: u32,
    pub max_tensor_elems: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_tensor_elems: DEFAULT_MAX_TENSOR_ELEMS,
        }
    }
}

/// Serves requests arriving on a [`QuicServer`].
pub trait Handler: Send + Sync + 'static {
    type Req: WireMessage;
    type Resp: WireMessage;
    /// Answers one request from `peer` (the name it gave in its handshake; its certificate
    /// was verified against the cluster CA before any of this ran).
    fn handle(
        &self,
        peer: NodeId,
        req: Payload<Self::Req>,
    ) -> impl Future<Output = Payload<Self::Resp>> + Send;
}

/// Serves whole streams arriving on a [`QuicServer`] started with
/// [`QuicServer::run_streams`]: the handler reads the request and writes as many frames
/// as it likes (a streamed answer), then finishes the stream.
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one stream of `peer`, whose connection's handshake agreed on `version`.
    fn serve(
        &self,
        peer: NodeId,
        version: u32,
        send: SendStream,
        recv: RecvStream,
        limits: Limits,
    ) -> impl Future<Output = ()> + Send;
}

async fn send_payload<M: WireMessage>(
    send: &mut SendStream,
    p: &Payload<M>,
    limits: Limits,
    counts: &ByteCounts,
) -> Result<()> {
    let mut w = Counted::new(send, counts);
    write_msg(&mut w, &p.msg, limits.max_frame).await?;
    write_tensors(&mut w, &p.tensors).await?;
    send.finish()
        .map_err(|e| ProtocolError::Write(e.to_string()))
}

async fn recv_payload<M: WireMessage>(
    recv: &mut RecvStream,
    limits: Limits,
    counts: &ByteCounts,
) -> Result<Payload<M>> {
    let mut r = Counted::new(recv, counts);
    let msg = read_msg(&mut r, limits.max_frame).await?;
    let tensors = read_tensors(&mut r, limits.max_tensor_elems).await?;
    Ok(Payload { msg, tensors })
}

/// A listening QUIC endpoint that requires client certificates from the cluster CA.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: Endpoint,
    node: NodeId,
    limits: Limits,
}

impl QuicServer {
    /// Binds `addr` with `tls`'s server identity.
    pub fn bind(addr: SocketAddr, node: NodeId, tls: &NodeTls) -> Result<Self> {
        let endpoint =
            Endpoint::server(tls.server_config()?, addr).map_err(|e| ProtocolError::Connect {
                addr: addr.to_string(),
                reason: format!("bind: {e}"),
            })?;
        Ok(Self {
            endpoint,
            node,
            limits: Limits::default(),
        })
    }

    /// Overrides the receive limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| ProtocolError::Connection(e.to_string()))
    }

    /// Accepts connections until shutdown, serving each on its own task.
    pub async fn run<H: Handler>(self, handler: Arc<H>, mut shutdown: Shutdown) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                _ = shutdown.recv() => break,
            };
            let Some(incoming) = incoming else { break };
            let handler = handler.clone();
            let node = self.node.clone();
            let limits = self.limits;
            let sd = shutdown.resubscribe();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        let span = info_span!("quic_conn", %remote);
                        if let Err(e) = serve_conn(conn, node, handler, limits, sd)
                            .instrument(span)
                            .await
                        {
                            debug!(%remote, error = %e, "connection ended");
                        }
                    }
                    // Refused TLS handshakes (no client cert, wrong CA) end here.
                    Err(e) => warn!(%remote, error = %e, "incoming connection refused"),
                }
            });
        }
        self.endpoint.close(0u32.into(), b"shutdown");
    }

    /// Accepts connections until shutdown like [`Self::run`], but for a streaming service
    /// whose handshake accepts any of `versions`: after it, every bidirectional stream the
    /// peer opens is handed whole to `handler` on its own task, with the agreed version.
    pub async fn run_streams<H: StreamHandler>(
        self,
        handler: Arc<H>,
        versions: RangeInclusive<u32>,
        mut shutdown: Shutdown,
    ) {
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                _ = shutdown.recv() => break,
            };
            let Some(incoming) = incoming else { break };
            let (handler, node, limits) = (handler.clone(), self.node.clone(), self.limits);
            let versions = versions.clone();
            let mut sd = shutdown.resubscribe();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => {
                        warn!(%remote, error = %e, "incoming connection refused");
                        return;
                    }
                };
                let counts = ByteCounts::default();
                let (peer, version) =
                    match accept_hello(&conn, node, limits, &counts, versions).await {
                        Ok(p) => p,
                        Err(e) => {
                            debug!(%remote, error = %e, "handshake failed");
                            return;
                        }
                    };
                loop {
                    let (send, recv) = tokio::select! {
                        s = conn.accept_bi() => match s {
                            Ok(s) => s,
                            Err(e) => {
                                debug!(%remote, error = %e, "connection ended");
                                return;
                            }
                        },
                        _ = sd.recv() => {
                            conn.close(0u32.into(), b"shutdown");
                            return;
                        }
                    };
                    let (handler, peer) = (handler.clone(), peer.clone());
                    tokio::spawn(
                        async move { handler.serve(peer, version, send, recv, limits).await },
                    );
                }
            });
        }
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// Runs the server side of the version handshake on a new connection's first stream:
/// refuses (and closes) a peer whose version is not one of `versions`, else returns its
/// node name and the version both sides now speak (the peer's: a client offers its highest
/// first, and falls back to ours when we refuse it; see [`QuicClient::connect_with_versions`]).
async fn accept_hello(
    conn: &Connection,
    node: NodeId,
    limits: Limits,
    counts: &ByteCounts,
    versions: RangeInclusive<u32>,
) -> Result<(NodeId, u32)> {
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| ProtocolError::Connection(e.to_string()))?;
    let hello: Hello = read_msg(&mut Counted::new(&mut recv, counts), limits.max_frame).await?;
    let ours = *versions.end();
    if !versions.contains(&hello.version) {
        let reply = HelloReply::Rejected {
            version: ours,
            reason: format!(
                "protocol version {} is not supported; this node speaks {} to {ours}",
                hello.version,
                versions.start()
            ),
        };
        write_msg(
            &mut Counted::new(&mut send, counts),
            &reply,
            limits.max_frame,
        )
        .await?;
        let _ = send.finish();
        let _ = send.stopped().await;
        conn.close(1u32.into(), b"protocol version mismatch");
        return Err(ProtocolError::VersionMismatch {
            ours,
            theirs: hello.version,
        });
    }
    let reply = HelloReply::Accepted {
        version: hello.version,
        node,
    };
    write_msg(
        &mut Counted::new(&mut send, counts),
        &reply,
        limits.max_frame,
    )
    .await?;
    send.finish()
        .map_err(|e| ProtocolError::Write(e.to_string()))?;
    Ok((hello.node, hello.version))
}

async fn serve_conn<H: Handler>(
    conn: Connection,
    node: NodeId,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: Shutdown,
) -> Result<()> {
    let counts = Arc::new(ByteCounts::default());
    let (peer, _version) = accept_hello(
        &conn,
        node,
        limits,
        &counts,
        MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
    )
    .await?;
    loop {
        let (mut send, mut recv) = tokio::select! {
            s = conn.accept_bi() => s.map_err(|e| ProtocolError::Connection(e.to_string()))?,
            _ = shutdown.recv() => {
                conn.close(0u32.into(), b"shutdown");
                return Ok(());
            }
        };
        let handler = handler.clone();
        let peer = peer.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let req = match recv_payload::<H::Req>(&mut recv, limits, &counts).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(%peer, error = %e, "bad request refused");
                    let _ = send.reset(2u32.into());
                    return;
                }
            };
            let resp = handler.handle(peer.clone(), req).await;
            if let Err(e) = send_payload(&mut send, &resp, limits, &counts).await {
                warn!(%peer, error = %e, "could not send response");
            }
        });
    }
}

/// A connection to one peer, after a successful handshake.
#[derive(Debug, Clone)]
pub struct QuicClient {
    endpoint: Endpoint,
    conn: Connection,
    peer: NodeId,
    /// The protocol version the handshake agreed on.
    version: u32,
    limits: Limits,
    counts: Arc<ByteCounts>,
}

impl QuicClient {
    /// Connects to `addr`, verifying that its certificate names `server_name` and chains to
    /// the CA in `config`, then runs the version handshake as `me`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        me: &NodeId,
        config: quinn::ClientConfig,
    ) -> Result<Self> {
        Self::connect_with_versions(
            addr,
            server_name,
            me,
            config,
            MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
        )
        .await
    }

    /// Connects speaking the highest of `versions`; a peer that refuses it but speaks an
    /// older one of `versions` (it says its highest in the refusal) is connected to again
    /// in that version. This is the version skew a rolling upgrade needs: a new role and
    /// an old one agree on the old version.
    pub async fn connect_with_versions(
        addr: SocketAddr,
        server_name: &str,
        me: &NodeId,
        config: quinn::ClientConfig,
        versions: RangeInclusive<u32>,
    ) -> Result<Self> {
        let first = *versions.end();
        match Self::connect_with_version(addr, server_name, me, config.clone(), first).await {
            Err(ProtocolError::VersionMismatch { theirs, .. })
                if theirs < first && versions.contains(&theirs) =>
            {
                Self::connect_with_version(addr, server_name, me, config, theirs).await
            }
            other => other,
        }
    }

    /// [`Self::connect`] speaking exactly `version`.
    pub async fn connect_with_version(
        addr: SocketAddr,
        server_name: &str,
        me: &NodeId,
        config: quinn::ClientConfig,
        version: u32,
    ) -> Result<Self> {
        let cerr = |reason: String| ProtocolError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let mut endpoint = Endpoint::client(bind).map_err(|e| cerr(format!("bind: {e}")))?;
        endpoint.set_default_client_config(config);
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| cerr(e.to_string()))?
            .await
            .map_err(|e| cerr(e.to_string()))?;
        let limits = Limits::default();
        let counts = Arc::new(ByteCounts::default());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| cerr(e.to_string()))?;
        let hello = Hello {
            version,
            node: me.clone(),
        };
        write_msg(
            &mut Counted::new(&mut send, &counts),
            &hello,
            limits.max_frame,
        )
        .await
        .map_err(|e| cerr(e.to_string()))?;
        send.finish().map_err(|e| cerr(e.to_string()))?;
        let reply: HelloReply = read_msg(&mut Counted::new(&mut recv, &counts), limits.max_frame)
            .await
            .map_err(|e| cerr(format!("handshake: {e}")))?;
        match reply {
            HelloReply::Accepted { node, .. } => Ok(Self {
                endpoint,
                conn,
                peer: node,
                version,
                limits,
                counts,
            }),
            HelloReply::Rejected {
                version: theirs, ..
            } => Err(ProtocolError::VersionMismatch {
                ours: version,
                theirs,
            }),
        }
    }

    /// Connects with `tls`'s client identity.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        me: &NodeId,
        tls: &NodeTls,
    ) -> Result<Self> {
        Self::connect(addr, server_name, me, tls.client_config()?).await
    }

    /// The peer's node name from its handshake.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    /// The protocol version this connection speaks.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Sends one request on a new stream and reads the response.
    pub async fn request<Req: WireMessage, Resp: WireMessage>(
        &self,
        req: &Payload<Req>,
    ) -> Result<Payload<Resp>> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ProtocolError::Connection(e.to_string()))?;
        send_payload(&mut send, req, self.limits, &self.counts).await?;
        recv_payload(&mut recv, self.limits, &self.counts).await
    }

    /// Opens a new bidirectional stream for a streamed exchange (see
    /// [`QuicServer::run_streams`]), with this connection's receive limits.
    pub async fn open_stream(&self) -> Result<(SendStream, RecvStream, Limits)> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ProtocolError::Connection(e.to_string()))?;
        Ok((send, recv, self.limits))
    }

    /// Resolves when the connection fails or is closed (a peer killed with -9 is noticed
    /// after [`crate::tls::IDLE_TIMEOUT`]).
    pub async fn closed(&self) {
        self.conn.closed().await;
    }

    /// Bytes sent and received on this connection so far (UDP payload).
    pub fn bytes(&self) -> (u64, u64) {
        let s = self.conn.stats();
        (s.udp_tx.bytes, s.udp_rx.bytes)
    }

    /// Stream bytes (frames, tensor chunks and their headers, the handshake included) sent
    /// and received on this connection so far: what the process-wide
    /// `tributary_quic_*_bytes_total` counters count, for this connection alone.
    pub fn stream_bytes(&self) -> BytesTotals {
        self.counts.totals()
    }

    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.close(0u32.into(), b"bye");
    }
}
