//! Real QUIC with mutual TLS on loopback: certificates from `certs`, a server that requires
//! client certificates, and clients with good, missing and foreign certificates.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tributary_protocol::certs;
use tributary_protocol::{
    Command, CommandBody, JobId, Limits, NodeId, NodeTls, Payload, ProtocolError, QuicClient,
    QuicServer, Reply, ShutdownController,
};

/// Echoes the command's fencing token back and doubles every tensor element.
struct Doubler;

impl tributary_protocol::Handler for Doubler {
    type Req = Command;
    type Resp = Reply;
    async fn handle(&self, _peer: NodeId, req: Payload<Command>) -> Payload<Reply> {
        Payload {
            msg: Reply::Ok {
                step: req.msg.fencing,
            },
            tensors: req
                .tensors
                .into_iter()
                .map(|t| t.into_iter().map(|v| v * 2.0).collect())
                .collect(),
        }
    }
}

fn node(n: &str) -> NodeId {
    NodeId::new(n).unwrap()
}

struct Cluster {
    _dir: tempfile::TempDir,
    server: NodeTls,
    client: NodeTls,
}

fn cluster() -> Cluster {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    certs::init_ca(dir.path()).unwrap();
    certs::issue(dir.path(), &node("worker-1")).unwrap();
    certs::issue(dir.path(), &node("coord")).unwrap();
    Cluster {
        server: NodeTls::load(dir.path(), &node("worker-1")).unwrap(),
        client: NodeTls::load(dir.path(), &node("coord")).unwrap(),
        _dir: dir,
    }
}

fn start(tls: &NodeTls, limits: Limits) -> (SocketAddr, ShutdownController) {
    let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), node("worker-1"), tls)
        .unwrap()
        .with_limits(limits);
    let addr = server.local_addr().unwrap();
    let ctl = ShutdownController::new();
    tokio::spawn(server.run(Arc::new(Doubler), ctl.subscribe()));
    (addr, ctl)
}

fn cmd(fencing: u64) -> Payload<Command> {
    Payload {
        msg: Command {
            fencing,
            job: JobId::new("job-a").unwrap(),
            body: CommandBody::Ping,
        },
        tensors: vec![(0..300_000).map(|i| i as f32).collect(), vec![1.5]],
    }
}

/// A connection attempt plus one request: a refused peer fails at one of the two.
async fn try_request(
    addr: SocketAddr,
    cfg: quinn::ClientConfig,
) -> Result<Payload<Reply>, ProtocolError> {
    let fut = async {
        let client = QuicClient::connect(addr, "worker-1", &node("coord"), cfg).await?;
        client.request::<Command, Reply>(&cmd(1)).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or(Err(ProtocolError::Connection("timed out".into())))
}

#[tokio::test]
async fn mtls_request_streams_tensors_both_ways() {
    let c = cluster();
    let (addr, ctl) = start(&c.server, Limits::default());
    let client = QuicClient::connect_tls(addr, "worker-1", &node("coord"), &c.client)
        .await
        .unwrap();
    assert_eq!(client.peer(), &node("worker-1"));
    // Several requests on one connection, each on its own stream, concurrently.
    let (c5, c6) = (cmd(5), cmd(6));
    let (a, b) = tokio::join!(
        client.request::<Command, Reply>(&c5),
        client.request::<Command, Reply>(&c6)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.msg, Reply::Ok { step: 5 });
    assert_eq!(b.msg, Reply::Ok { step: 6 });
    assert_eq!(a.tensors[0].len(), 300_000);
    assert_eq!(a.tensors[0][123_456], 246_912.0);
    assert_eq!(a.tensors[1], vec![3.0]);
    let (sent, received) = client.bytes();
    assert!(
        sent > 2 * 1_200_000 && received > 2 * 1_200_000,
        "{sent} {received}"
    );
    client.close();
    ctl.shutdown().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let c = cluster();
    let (addr, ctl) = start(&c.server, Limits::default());
    let err = try_request(addr, c.client.anonymous_client_config().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Connect { .. } | ProtocolError::Connection(_) | ProtocolError::Read(_)
        ),
        "{err}"
    );
    ctl.shutdown().await;
}

#[tokio::test]
async fn client_with_certificate_from_another_ca_is_refused() {
    let c = cluster();
    let other = cluster();
    let (addr, ctl) = start(&c.server, Limits::default());
    // `other.client` trusts its own CA only, so build a config that trusts the right server
    // CA but presents a certificate signed by the other CA.
    let foreign = NodeTls::from_files(
        &c._dir.path().join("ca.pem"),
        &other._dir.path().join("coord.pem"),
        &other._dir.path().join("coord.key"),
    )
    .unwrap();
    let err = try_request(addr, foreign.client_config().unwrap())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        !msg.contains("timed out"),
        "refusal should be explicit: {msg}"
    );
    ctl.shutdown().await;
}

#[tokio::test]
async fn server_with_certificate_from_another_ca_is_refused_by_the_client() {
    let c = cluster();
    let other = cluster();
    let (addr, ctl) = start(&other.server, Limits::default());
    let err = try_request(addr, c.client.client_config().unwrap())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ProtocolError::Connect { .. }), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    ctl.shutdown().await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_at_the_handshake() {
    let c = cluster();
    let (addr, ctl) = start(&c.server, Limits::default());
    let err = QuicClient::connect_with_version(
        addr,
        "worker-1",
        &node("coord"),
        c.client.client_config().unwrap(),
        99,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::VersionMismatch {
                ours: 99,
                theirs: 1
            }
        ),
        "{err}"
    );
    ctl.shutdown().await;
}

#[tokio::test]
async fn tensor_over_the_servers_limit_is_refused() {
    let c = cluster();
    let (addr, ctl) = start(
        &c.server,
        Limits {
            max_frame: 1 << 20,
            max_tensor_elems: 1000,
        },
    );
    let client = QuicClient::connect_tls(addr, "worker-1", &node("coord"), &c.client)
        .await
        .unwrap();
    let err = client.request::<Command, Reply>(&cmd(1)).await.unwrap_err();
    assert!(
        matches!(err, ProtocolError::Read(_) | ProtocolError::Write(_)),
        "{err}"
    );
    // The connection survives a refused request.
    let mut small = cmd(2);
    small.tensors = vec![vec![1.0; 10]];
    let ok = client.request::<Command, Reply>(&small).await.unwrap();
    assert_eq!(ok.tensors[0], vec![2.0; 10]);
    ctl.shutdown().await;
}
