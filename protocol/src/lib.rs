//! Everything that crosses a process boundary: digest and id newtypes, rkyv messages,
//! length-prefixed framing on QUIC streams, chunked tensors, mutual TLS, certificates, the
//! job spec, the inference request/stream contract between gateway and engine, and the
//! protocol version. No business logic lives here.

pub mod certs;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod ids;
pub mod inference;
pub mod link;
pub mod messages;
pub mod metrics;
pub mod serving;
pub mod shutdown;
pub mod spec;
pub mod spec_check;
pub mod spec_resources;
pub mod tensor;
pub mod tls;

pub use endpoint::{Handler, Limits, QuicClient, QuicServer, StreamHandler};
pub use error::{ProtocolError, Result};
pub use ids::{Digest, FencingToken, JobId, NodeId};
pub use inference::{
    AdapterFiles, ChatMessage, EngineInfo, EventStream, InferenceError, InferenceEvent,
    InferenceRequest, InferenceService, ModelChoice, Prompt, ResidentAdapter, SamplingParams,
    SharedInference,
};
pub use link::{
    BoxFuture, LinkFactory, QuicLinkFactory, QuicWorkerLink, ServingInfo, WorkerInfo, WorkerLink,
};
pub use messages::{
    Command, CommandBody, MIN_PROTOCOL_VERSION, MicroBatch, MicroResult, NamedFile,
    PROTOCOL_VERSION, Payload, Reply, WireMessage,
};
pub use shutdown::{Shutdown, ShutdownController};
pub use spec::JobSpec;
pub use tls::NodeTls;
