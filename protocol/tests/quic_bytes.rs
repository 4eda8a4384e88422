//! The QUIC byte counters over real QUIC with mutual TLS on loopback: one request with a
//! multi-chunk tensor each way, then the per-connection counts must equal the wire size of
//! what was sent (each byte counted once) and the process-wide Prometheus counters must rise
//! by at least as much.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::sync::Arc;

use tributary_protocol::certs;
use tributary_protocol::messages::WireMessage;
use tributary_protocol::metrics::quic_bytes;
use tributary_protocol::tensor::CHUNK_ELEMS;
use tributary_protocol::{
    Command, CommandBody, JobId, NodeId, NodeTls, Payload, QuicClient, QuicServer, Reply,
    ShutdownController,
};

/// Answers every command with a tensor of `RESPONSE_ELEMS` elements.
struct Answer;

const REQUEST_ELEMS: usize = CHUNK_ELEMS + 1000;
const RESPONSE_ELEMS: usize = 3 * CHUNK_ELEMS + 5;

impl tributary_protocol::Handler for Answer {
    type Req = Command;
    type Resp = Reply;
    async fn handle(&self, _peer: NodeId, req: Payload<Command>) -> Payload<Reply> {
        Payload {
            msg: Reply::Ok {
                step: req.tensors.len() as u64,
            },
            tensors: vec![vec![0.25; RESPONSE_ELEMS]],
        }
    }
}

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

/// Bytes one payload takes on a stream: the framed message, the tensor count, and per
/// tensor its element count, its chunks (each length-prefixed) and its BLAKE3 checksum.
fn wire_size<M: WireMessage>(p: &Payload<M>) -> u64 {
    let msg = 4 + p.msg.encode().unwrap().len() as u64;
    let tensors: u64 = p
        .tensors
        .iter()
        .map(|t| {
            let chunks = t.len().div_ceil(CHUNK_ELEMS) as u64;
            8 + chunks * 4 + t.len() as u64 * 4 + 32
        })
        .sum();
    msg + 4 + tensors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_count_every_frame_and_chunk_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    certs::init_ca(dir.path()).unwrap();
    certs::issue(dir.path(), &node("worker-1")).unwrap();
    certs::issue(dir.path(), &node("coord")).unwrap();
    let server_tls = NodeTls::load(dir.path(), &node("worker-1")).unwrap();
    let client_tls = NodeTls::load(dir.path(), &node("coord")).unwrap();
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        node("worker-1"),
        &server_tls,
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let ctl = ShutdownController::new();
    tokio::spawn(server.run(Arc::new(Answer), ctl.subscribe()));

    let client = QuicClient::connect_tls(addr, "worker-1", &node("coord"), &client_tls)
        .await
        .unwrap();
    let req = Payload {
        msg: Command {
            fencing: 3,
            job: JobId::new("job-bytes").unwrap(),
            body: CommandBody::Ping,
        },
        tensors: vec![vec![1.0; REQUEST_ELEMS], vec![]],
    };
    let after_handshake = client.stream_bytes();
    assert!(
        after_handshake.sent > 0 && after_handshake.received > 0,
        "the handshake is counted too: {after_handshake:?}"
    );
    let global_before = quic_bytes();
    let resp: Payload<Reply> = client.request(&req).await.unwrap();
    assert_eq!(resp.tensors[0].len(), RESPONSE_ELEMS);

    let conn = client.stream_bytes().since(after_handshake);
    assert_eq!(
        conn.sent,
        wire_size(&req),
        "request bytes on the connection"
    );
    assert_eq!(
        conn.received,
        wire_size(&resp),
        "response bytes on the connection"
    );

    // Both ends live in this process: the server's reads and writes count as well.
    let global = quic_bytes().since(global_before);
    let payload = wire_size(&req) + wire_size(&resp);
    assert!(global.sent >= payload, "sent {} < {payload}", global.sent);
    assert!(
        global.received >= payload,
        "received {} < {payload}",
        global.received
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    assert!(text.contains("tributary_quic_sent_bytes_total"), "{text}");
    assert!(
        text.contains("tributary_quic_received_bytes_total"),
        "{text}"
    );
    client.close();
    ctl.shutdown().await;
}
