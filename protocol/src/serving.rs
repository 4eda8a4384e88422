//! Inference over QUIC: a worker serves its engine ([`InferenceService`]) to gateways, one
//! call per bidirectional stream. The gateway writes one [`ServeCall`] frame and finishes
//! its side.
//!
//! - [`ServeCall::Infer`]: the worker answers [`InferReply::Admitted`] then one
//!   [`InferReply::Event`] per engine event and a closing [`InferReply::End`], or a single
//!   [`InferReply::Refused`] (overload is `Refused(Overloaded { retry_after_ms })`, which the
//!   gateway maps to 429 with `Retry-After`). A gateway that stops reading (its client went
//!   away) stops the stream; the worker notices at once and drops the request, which frees
//!   its engine slot at the next token boundary.
//! - [`ServeCall::Unload`] (an adapter was deleted): the worker asks its engine to drop the
//!   adapter once the requests using it have drained, and answers [`InferReply::End`] (or
//!   `Refused` with why not).
//!
//! The connection's handshake is the cluster's [`crate::messages::Hello`], with
//! [`SERVING_PROTOCOL_VERSION`]: a peer speaking another serving version (or the training
//! protocol) is refused before any request.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use tracing::{Instrument, debug, info, info_span};

use crate::endpoint::{Limits, QuicClient, StreamHandler};
use crate::error::{ProtocolError, Result};
use crate::frame::{read_msg, write_msg};
use crate::ids::{Digest, NodeId};
use crate::inference::{InferenceError, InferenceEvent, InferenceRequest, Prompt, SharedInference};
use crate::messages::{WireMessage, wire};
use crate::tls::NodeTls;

/// The serving protocol's version, sent in the handshake. Its numbers are disjoint from
/// [`crate::PROTOCOL_VERSION`]'s (the training protocol) so that neither side can mistake
/// one service for the other.
/// 1002: the first frame is a [`ServeCall`] (1001 sent a bare [`InferenceRequest`]).
pub const SERVING_PROTOCOL_VERSION: u32 = 1002;
/// The oldest serving version still spoken: on a 1001 connection requests go as bare
/// [`InferenceRequest`]s and there is no [`ServeCall::Unload`] (a deleted adapter stays on
/// such a worker until it is evicted or the worker is upgraded).
pub const MIN_SERVING_PROTOCOL_VERSION: u32 = 1001;

/// Most chat messages, stop strings or choices a request may carry on the wire (the
/// gateway's own limits are far lower; these only bound what a receiver allocates).
pub const MAX_WIRE_ITEMS: usize = 1 << 16;

/// What a gateway asks of a worker on one stream.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum ServeCall {
    /// Run one request and stream its answer back.
    Infer(InferenceRequest),
    /// Drop this adapter from memory once its running requests have finished (it was
    /// deleted).
    Unload(Digest),
}

/// One frame of a worker's answer.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum InferReply {
    /// The engine admitted the request; events follow.
    Admitted,
    /// The engine refused it at once (the stream ends here).
    Refused(InferenceError),
    /// One engine event.
    Event(InferenceEvent),
    /// The engine's event stream ended (the last frame of an admitted request).
    End,
}

fn too_many(what: &str, n: usize) -> ProtocolError {
    ProtocolError::InvalidMessage(format!(
        "{n} {what} exceeds the maximum of {MAX_WIRE_ITEMS}"
    ))
}

wire!(InferenceRequest, |s| {
    if s.request_id.is_empty() || s.request_id.len() > 256 {
        return Err(ProtocolError::InvalidMessage(format!(
            "request id of {} bytes: must be 1..=256",
            s.request_id.len()
        )));
    }
    if let Prompt::Chat(m) = &s.prompt
        && m.len() > MAX_WIRE_ITEMS
    {
        return Err(too_many("chat messages", m.len()));
    }
    if s.params.stop.len() > MAX_WIRE_ITEMS {
        return Err(too_many("stop strings", s.params.stop.len()));
    }
    if s.params.n as usize > MAX_WIRE_ITEMS {
        return Err(too_many("choices", s.params.n as usize));
    }
    Ok(())
});
wire!(InferReply, |_s| { Ok(()) });
wire!(ServeCall, |s| {
    match s {
        ServeCall::Infer(r) => r.validate(),
        ServeCall::Unload(_) => Ok(()),
    }
});

/// Serves an engine to gateways: the worker side of [`InferenceConn`].
pub struct InferenceHandler {
    engine: SharedInference,
}

impl InferenceHandler {
    pub fn new(engine: SharedInference) -> Self {
        Self { engine }
    }
}

async fn send_reply(send: &mut SendStream, reply: &InferReply, limits: Limits) -> Result<()> {
    write_msg(send, reply, limits.max_frame).await
}

impl StreamHandler for InferenceHandler {
    async fn serve(
        &self,
        peer: NodeId,
        version: u32,
        mut send: SendStream,
        mut recv: RecvStream,
        limits: Limits,
    ) {
        let call = if version < SERVING_PROTOCOL_VERSION {
            read_msg::<_, InferenceRequest>(&mut recv, limits.max_frame)
                .await
                .map(ServeCall::Infer)
        } else {
            read_msg::<_, ServeCall>(&mut recv, limits.max_frame).await
        };
        let request = match call {
            Ok(ServeCall::Infer(r)) => r,
            Ok(ServeCall::Unload(adapter)) => {
                let reply = match self.engine.unload(adapter).await {
                    Ok(()) => InferReply::End,
                    Err(e) => InferReply::Refused(e),
                };
                info!(%peer, %adapter, ?reply, "adapter unload asked");
                let _ = send_reply(&mut send, &reply, limits).await;
                let _ = send.finish();
                return;
            }
            Err(e) => {
                debug!(%peer, error = %e, "bad inference request refused");
                let _ = send.reset(2u32.into());
                return;
            }
        };
        let span = info_span!("serve_remote", %peer, request_id = %request.request_id);
        async move {
            let mut events = match self.engine.submit(request).await {
                Ok(ev) => ev,
                Err(e) => {
                    let _ = send_reply(&mut send, &InferReply::Refused(e), limits).await;
                    let _ = send.finish();
                    return;
                }
            };
            if send_reply(&mut send, &InferReply::Admitted, limits)
                .await
                .is_err()
            {
                return;
            }
            // The gateway stopping its side (its client left) ends the request at once:
            // dropping `events` cancels it in the engine.
            let stopped = send.stopped();
            tokio::pin!(stopped);
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = &mut stopped => {
                        debug!("the gateway stopped reading: request cancelled");
                        return;
                    }
                };
                let reply = match ev {
                    Some(ev) => InferReply::Event(ev),
                    None => InferReply::End,
                };
                let end = reply == InferReply::End;
                if let Err(e) = send_reply(&mut send, &reply, limits).await {
                    debug!(error = %e, "the gateway went away");
                    return;
                }
                if end {
                    let _ = send.finish();
                    return;
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// A gateway's connection to one worker's inference endpoint.
#[derive(Debug, Clone)]
pub struct InferenceConn {
    client: QuicClient,
}

/// An admitted request's answer as it arrives.
#[derive(Debug)]
pub struct RemoteEvents {
    recv: RecvStream,
    limits: Limits,
    done: bool,
}

impl RemoteEvents {
    /// The next event; `Ok(None)` after the worker's [`InferReply::End`]. An error means the
    /// stream or the connection broke before the end (the worker died or reset it).
    pub async fn next(&mut self) -> Result<Option<InferenceEvent>> {
        if self.done {
            return Ok(None);
        }
        match read_msg::<_, InferReply>(&mut self.recv, self.limits.max_frame).await? {
            InferReply::Event(ev) => Ok(Some(ev)),
            InferReply::End => {
                self.done = true;
                Ok(None)
            }
            other => Err(ProtocolError::Unexpected(format!(
                "{other:?} in the middle of an answer"
            ))),
        }
    }
}

impl Drop for RemoteEvents {
    fn drop(&mut self) {
        if !self.done {
            // Tell the worker to drop the request now rather than at its next write.
            let _ = self.recv.stop(0u32.into());
        }
    }
}

impl InferenceConn {
    /// Connects to a worker's inference endpoint at `addr`, verifying that its certificate
    /// names `worker`, as `me`.
    pub async fn connect(
        addr: SocketAddr,
        worker: &NodeId,
        me: &NodeId,
        tls: &NodeTls,
    ) -> Result<Self> {
        Self::connect_with_versions(
            addr,
            worker,
            me,
            tls,
            MIN_SERVING_PROTOCOL_VERSION..=SERVING_PROTOCOL_VERSION,
        )
        .await
    }

    /// [`Self::connect`] offering only `versions` (tests of version skew).
    pub async fn connect_with_versions(
        addr: SocketAddr,
        worker: &NodeId,
        me: &NodeId,
        tls: &NodeTls,
        versions: std::ops::RangeInclusive<u32>,
    ) -> Result<Self> {
        let client = QuicClient::connect_with_versions(
            addr,
            worker.as_str(),
            me,
            tls.client_config()?,
            versions,
        )
        .await?;
        Ok(Self { client })
    }

    /// The serving protocol version this connection speaks.
    pub fn version(&self) -> u32 {
        self.client.version()
    }

    /// The worker's node name from the handshake.
    pub fn peer(&self) -> &NodeId {
        self.client.peer()
    }

    /// True once the connection has failed or been closed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Resolves when the connection fails or is closed.
    pub async fn closed(&self) {
        self.client.closed().await;
    }

    /// Closes the connection (every open answer on it fails at once).
    pub fn close(&self) {
        self.client.close();
    }

    /// Sends `request`: `Ok(Ok(events))` once the worker admitted it, `Ok(Err(e))` when the
    /// worker refused it (overload, unknown adapter, …), `Err(_)` when the worker could not
    /// be reached or the connection broke before its answer.
    pub async fn submit(
        &self,
        request: &InferenceRequest,
    ) -> Result<std::result::Result<RemoteEvents, InferenceError>> {
        if self.client.is_closed() {
            return Err(ProtocolError::Connection("connection closed".into()));
        }
        let (mut send, mut recv, limits) = self.client.open_stream().await?;
        if self.version() < SERVING_PROTOCOL_VERSION {
            write_msg(&mut send, request, limits.max_frame).await?;
        } else {
            write_msg(
                &mut send,
                &ServeCall::Infer(request.clone()),
                limits.max_frame,
            )
            .await?;
        }
        send.finish()
            .map_err(|e| ProtocolError::Write(e.to_string()))?;
        match read_msg::<_, InferReply>(&mut recv, limits.max_frame).await? {
            InferReply::Admitted => Ok(Ok(RemoteEvents {
                recv,
                limits,
                done: false,
            })),
            InferReply::Refused(e) => Ok(Err(e)),
            other => Err(ProtocolError::Unexpected(format!(
                "{other:?} before the worker admitted the request"
            ))),
        }
    }
}

impl InferenceConn {
    /// Asks the worker to drop `adapter` once its running requests have finished (after a
    /// delete): `Ok(Ok(()))` once the worker's engine took the order, `Ok(Err(e))` when it
    /// refused (e.g. the adapter is pinned there), `Err(_)` when the worker could not be
    /// reached.
    pub async fn unload(&self, adapter: Digest) -> Result<std::result::Result<(), InferenceError>> {
        if self.client.is_closed() {
            return Err(ProtocolError::Connection("connection closed".into()));
        }
        if self.version() < SERVING_PROTOCOL_VERSION {
            return Err(ProtocolError::Unexpected(format!(
                "worker {} speaks serving protocol {}, which has no unload: the adapter stays \
                 there until it is evicted or the worker is upgraded",
                self.peer(),
                self.version()
            )));
        }
        let (mut send, mut recv, limits) = self.client.open_stream().await?;
        write_msg(&mut send, &ServeCall::Unload(adapter), limits.max_frame).await?;
        send.finish()
            .map_err(|e| ProtocolError::Write(e.to_string()))?;
        match read_msg::<_, InferReply>(&mut recv, limits.max_frame).await? {
            InferReply::End => Ok(Ok(())),
            InferReply::Refused(e) => Ok(Err(e)),
            other => Err(ProtocolError::Unexpected(format!(
                "{other:?} in answer to an unload"
            ))),
        }
    }
}

/// Serves `engine` on an already bound server until shutdown (a worker's inference port).
pub async fn serve_inference(
    server: crate::endpoint::QuicServer,
    engine: SharedInference,
    shutdown: crate::shutdown::Shutdown,
) {
    server
        .run_streams(
            Arc::new(InferenceHandler::new(engine)),
            MIN_SERVING_PROTOCOL_VERSION..=SERVING_PROTOCOL_VERSION,
            shutdown,
        )
        .await;
}

#[cfg(test)]
#[path = "serving_tests.rs"]
mod tests;
