//! How a coordinator reaches a worker: the [`WorkerLink`] trait, with the same
//! [`Command`]/[`Reply`] payloads whether the worker is an actor in this process (embedded
//! mode, implemented in the worker crate) or another process over QUIC ([`QuicWorkerLink`]).
//! Also the worker's membership record, [`WorkerInfo`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::endpoint::QuicClient;
use crate::error::{ProtocolError, Result};
use crate::ids::NodeId;
use crate::messages::{Command, Payload, Reply};
use crate::tls::NodeTls;

/// A boxed, sendable future (object-safe async).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends one command to one worker and returns its reply.
pub trait WorkerLink: Send + Sync + 'static {
    fn call(&self, cmd: Payload<Command>) -> BoxFuture<'_, Result<Payload<Reply>>>;
}

/// Opens links to workers found through membership.
pub trait LinkFactory: Send + Sync + 'static {
    fn connect<'a>(&'a self, info: &'a WorkerInfo) -> BoxFuture<'a, Result<Arc<dyn WorkerLink>>>;
}

/// A worker's membership record: where it listens and what it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub node: NodeId,
    /// QUIC address (`host:port`); empty in embedded mode.
    pub addr: String,
    /// The device it computes on, as `--device` chose it: `cpu (burn-flex)`,
    /// `wgpu: NVIDIA H100 80GB HBM3 [Vulkan, DiscreteGpu]`, …
    pub device: String,
    /// Whether that device is a hardware GPU (a software adapter such as lavapipe is not);
    /// jobs with `resources.gpu` are placed only on workers that say so. Absent in records
    /// of older workers: `false`.
    #[serde(default)]
    pub gpu: bool,
    pub cores: u32,
    pub memory_bytes: u64,
    /// Job slots in total and free now.
    pub slots: u32,
    pub free_slots: u32,
    /// What it serves for inference, when it does (`tributary worker --base-model`):
    /// refreshed while it runs, so gateways route by residency and load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<ServingInfo>,
}

/// A serving worker's inference endpoint, base model, resident adapters and load, as it
/// publishes them in its membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingInfo {
    /// QUIC address of the inference endpoint (`host:port`).
    pub addr: String,
    /// The base model's name in `model`.
    pub base_name: String,
    /// The base model's canonical digest.
    pub base_digest: crate::ids::Digest,
    /// Context window in tokens.
    pub context_window: u32,
    /// Largest LoRA rank it loads.
    pub max_lora_rank: u32,
    /// Digests of the adapters resident now.
    pub resident: Vec<crate::ids::Digest>,
    /// Requests admitted and not finished (queued or running).
    pub in_flight: u32,
    /// Requests waiting for a batch slot.
    pub queue_depth: u32,
    /// Most requests it admits at once (beyond: an overload refusal).
    pub max_in_flight: u32,
    /// KV-cache blocks in use and in total.
    pub kv_blocks_used: u64,
    pub kv_blocks: u64,
}

impl WorkerInfo {
    /// A worker in this process (embedded mode): no address, a CPU, one free slot.
    pub fn in_process(node: NodeId) -> Self {
        Self {
            node,
            addr: String::new(),
            device: "cpu".into(),
            gpu: false,
            cores: 1,
            memory_bytes: 0,
            slots: 1,
            free_slots: 1,
            serving: None,
        }
    }
}

/// A link over a QUIC connection with mutual TLS.
#[derive(Debug, Clone)]
pub struct QuicWorkerLink {
    client: QuicClient,
}

impl QuicWorkerLink {
    /// Wraps a connected client.
    pub fn new(client: QuicClient) -> Self {
        Self { client }
    }

    /// Bytes sent and received on the connection.
    pub fn bytes(&self) -> (u64, u64) {
        self.client.bytes()
    }

    /// Stream bytes sent and received on the connection (see [`QuicClient::stream_bytes`]).
    pub fn stream_bytes(&self) -> crate::metrics::BytesTotals {
        self.client.stream_bytes()
    }
}

impl WorkerLink for QuicWorkerLink {
    fn call(&self, cmd: Payload<Command>) -> BoxFuture<'_, Result<Payload<Reply>>> {
        Box::pin(async move {
            if self.client.is_closed() {
                return Err(ProtocolError::Connection("connection closed".into()));
            }
            self.client.request::<Command, Reply>(&cmd).await
        })
    }
}

/// Connects to workers over QUIC as `me`, verifying each worker's certificate names its node.
#[derive(Debug, Clone)]
pub struct QuicLinkFactory {
    me: NodeId,
    tls: NodeTls,
}

impl QuicLinkFactory {
    pub fn new(me: NodeId, tls: NodeTls) -> Self {
        Self { me, tls }
    }
}

impl LinkFactory for QuicLinkFactory {
    fn connect<'a>(&'a self, info: &'a WorkerInfo) -> BoxFuture<'a, Result<Arc<dyn WorkerLink>>> {
        Box::pin(async move {
            let addr = tokio::net::lookup_host(&info.addr)
                .await
                .map_err(|e| ProtocolError::Connect {
                    addr: info.addr.clone(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| ProtocolError::Connect {
                    addr: info.addr.clone(),
                    reason: "address did not resolve".into(),
                })?;
            let client =
                QuicClient::connect_tls(addr, info.node.as_str(), &self.me, &self.tls).await?;
            Ok(Arc::new(QuicWorkerLink::new(client)) as Arc<dyn WorkerLink>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A membership record written by a worker from before `gpu` existed still reads (as no
    /// GPU), and a GPU worker's record says so.
    #[test]
    fn worker_records_without_gpu_read_as_no_gpu_and_gpu_round_trips() {
        let old = r#"{"node":"w1","addr":"127.0.0.1:7401","device":"cpu","cores":2,
                      "memory_bytes":0,"slots":1,"free_slots":1}"#;
        let info: WorkerInfo = serde_json::from_str(old).unwrap();
        assert!(!info.gpu);
        assert_eq!(info.device, "cpu");
        let gpu = WorkerInfo {
            device: "wgpu: NVIDIA H100 80GB HBM3 [Vulkan, DiscreteGpu]".into(),
            gpu: true,
            ..info
        };
        let back: WorkerInfo = serde_json::from_str(&serde_json::to_string(&gpu).unwrap()).unwrap();
        assert_eq!(back, gpu);
    }
}
