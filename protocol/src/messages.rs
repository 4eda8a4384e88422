//! The wire messages: rkyv archives, validated with bytecheck on receipt and then checked
//! again by [`WireMessage::validate`] (ids re-parsed, counts bounded), because bytes off the
//! wire are never trusted. Large tensors do not live in these messages: they travel after
//! the message frame as chunked, checksummed streams (see [`crate::tensor`]).

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::error::{ProtocolError, Result};
use crate::ids::{Digest, JobId, NodeId};

/// The protocol version this build speaks. Peers with another version are refused at the
/// handshake.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest training-protocol version this build still speaks (a rolling upgrade runs
/// roles one version apart: each accepts the previous version; see docs/operations.md).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// At most this many micro-batches in one gradients command.
pub const MAX_MICRO_BATCHES: usize = 1 << 16;

/// First message on a connection: who we are and which protocol we speak.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Hello {
    pub version: u32,
    pub node: NodeId,
}

/// The answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum HelloReply {
    Accepted { version: u32, node: NodeId },
    Rejected { version: u32, reason: String },
}

/// A contiguous run of examples in the global example order: one unit of data-parallel work.
/// Its gradient is computed whole by one worker, so the reduction over micro-batches in
/// index order does not depend on how many workers there are.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct MicroBatch {
    /// Index of this micro-batch within its global batch.
    pub index: u32,
    /// Position of its first example in the job's global example order.
    pub start: u64,
    /// Number of examples.
    pub len: u32,
}

/// A command from the coordinator leader to a worker. Every command carries the leader's
/// fencing token.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Command {
    pub fencing: u64,
    pub job: JobId,
    pub body: CommandBody,
}

/// What the coordinator asks of a worker.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum CommandBody {
    /// Load the job: build the executor from the spec (JSON) at the given step.
    Start { spec_json: String },
    /// Compute one gradient per micro-batch at `step`. The reply carries one tensor per
    /// micro-batch, in the order given.
    Gradients {
        step: u64,
        micro_batches: Vec<MicroBatch>,
    },
    /// Apply the reduced gradient (the command's single tensor: the fixed-order sum of the
    /// micro-batch gradients of the summed loss) as the update for `step`; `tokens` is the
    /// step's total token count, by which the executor normalizes.
    Apply { step: u64, tokens: u64 },
    /// Return the executor's state (parameters, optimizer, step) as opaque bytes.
    Checkpoint,
    /// Replace the executor's state with a checkpoint taken at `step`.
    Restore { step: u64, state: Vec<u8> },
    /// Drop the job's executor.
    Stop,
    /// Liveness probe; the reply reports the highest fencing token seen.
    Ping,
    /// Return the trained adapter as files (PEFT layout for LoRA jobs).
    Export,
    /// The mean loss on the job's held-out examples (`train.eval_fraction`) with the
    /// current state: no gradients, no dropout, nothing applied.
    EvalLoss,
}

impl CommandBody {
    /// How long a worker may take to answer this command before its link reports it gone.
    /// Commands whose work grows with the whole model or data set get an hour: `Start`
    /// loads the base model and materializes the data, `Export` builds the attribution
    /// index (one backward pass per training example per checkpoint; minutes for a
    /// 135M-parameter model on two cores). A step's gradients, the eval loss and state
    /// transfers get ten minutes; the rest a minute.
    pub fn time_limit(&self) -> std::time::Duration {
        let secs = match self {
            Self::Start { .. } | Self::Export => 3600,
            Self::Gradients { .. } | Self::EvalLoss | Self::Checkpoint | Self::Restore { .. } => {
                600
            }
            Self::Apply { .. } | Self::Stop | Self::Ping => 60,
        };
        std::time::Duration::from_secs(secs)
    }
}

/// One file of an exported adapter.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NamedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Summed loss and token count of one micro-batch; its gradient is the matching reply tensor.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct MicroResult {
    pub index: u32,
    /// Sum of the micro-batch's token losses.
    pub loss_sum: f64,
    pub tokens: u64,
}

/// A worker's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Reply {
    /// Done; `step` is the executor's step after the command.
    Ok { step: u64 },
    /// Per-micro-batch results; tensors follow in the same order.
    Gradients { results: Vec<MicroResult> },
    /// The executor's state.
    Checkpoint { step: u64, state: Vec<u8> },
    /// The command's fencing token is lower than one already seen.
    Refused { token: u64, highest: u64 },
    /// The command failed on the worker.
    Failed { reason: String },
    /// Answer to [`CommandBody::Ping`].
    Pong { highest: u64, node: NodeId },
    /// Answer to [`CommandBody::Start`]: the job is loaded; what it was loaded from. The
    /// coordinator needs `examples` to count the steps of an epoch-based spec.
    Loaded {
        /// Examples in the job's dataset.
        examples: u64,
        /// BLAKE3 of the base model's files.
        base_model: Digest,
        /// BLAKE3 of the training data.
        data: Digest,
    },
    /// Answer to [`CommandBody::Export`].
    Files { files: Vec<NamedFile> },
    /// Answer to [`CommandBody::EvalLoss`]: the mean loss per token over `examples`
    /// held-out examples (`None`: the job has no eval split).
    EvalLoss { loss: Option<f32>, examples: u64 },
}

/// Encoding, validated decoding and semantic validation of one wire type.
pub trait WireMessage: Sized + Send + Sync + 'static {
    /// Serializes into an aligned rkyv archive.
    fn encode(&self) -> Result<AlignedVec>;
    /// Checks the archive with bytecheck, deserializes it, then runs [`Self::validate`].
    fn decode(bytes: &[u8]) -> Result<Self>;
    /// Semantic checks that bytecheck cannot do (id syntax, bounds).
    fn validate(&self) -> Result<()>;
}

macro_rules! wire {
    ($t:ty, |$s:ident| $check:block) => {
        impl WireMessage for $t {
            fn encode(&self) -> Result<AlignedVec> {
                rkyv::to_bytes::<rancor::Error>(self)
                    .map_err(|e| ProtocolError::Encode(e.to_string()))
            }
            fn decode(bytes: &[u8]) -> Result<Self> {
                let msg = rkyv::from_bytes::<$t, rancor::Error>(bytes)
                    .map_err(|e| ProtocolError::InvalidMessage(e.to_string()))?;
                msg.validate()?;
                Ok(msg)
            }
            fn validate(&self) -> Result<()> {
                let $s = self;
                $check
            }
        }
    };
}

pub(crate) use wire;

fn revalidate_node(n: &NodeId) -> Result<()> {
    NodeId::new(n.as_str()).map(|_| ())
}

wire!(Hello, |s| { revalidate_node(&s.node) });
wire!(HelloReply, |s| {
    match s {
        HelloReply::Accepted { node, .. } => revalidate_node(node),
        HelloReply::Rejected { .. } => Ok(()),
    }
});
wire!(Command, |s| {
    JobId::new(s.job.as_str())?;
    if let CommandBody::Gradients { micro_batches, .. } = &s.body
        && micro_batches.len() > MAX_MICRO_BATCHES
    {
        return Err(ProtocolError::InvalidMessage(format!(
            "{} micro-batches exceeds the maximum of {MAX_MICRO_BATCHES}",
            micro_batches.len()
        )));
    }
    Ok(())
});
wire!(Reply, |s| {
    match s {
        Reply::Pong { node, .. } => revalidate_node(node),
        Reply::Gradients { results } if results.len() > MAX_MICRO_BATCHES => Err(
            ProtocolError::InvalidMessage("too many micro-batch results".into()),
        ),
        Reply::Files { files } => files.iter().try_for_each(|f| {
            let ok = !f.name.is_empty()
                && !f.name.starts_with('.')
                && !f.name.contains(['/', '\\'])
                && f.name.len() <= 255;
            if ok {
                Ok(())
            } else {
                Err(ProtocolError::InvalidMessage(format!(
                    "exported file name {:?} is not a plain file name",
                    f.name
                )))
            }
        }),
        _ => Ok(()),
    }
});

/// A message plus the tensors that travel with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload<T> {
    pub msg: T,
    pub tensors: Vec<Vec<f32>>,
}

impl<T> Payload<T> {
    /// A message without tensors.
    pub fn bare(msg: T) -> Self {
        Self {
            msg,
            tensors: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::new("job-1").unwrap()
    }

    #[test]
    fn command_round_trips() {
        let cmd = Command {
            fencing: 7,
            job: job(),
            body: CommandBody::Gradients {
                step: 3,
                micro_batches: vec![MicroBatch {
                    index: 0,
                    start: 12,
                    len: 4,
                }],
            },
        };
        let bytes = cmd.encode().unwrap();
        assert_eq!(Command::decode(&bytes).unwrap(), cmd);
    }

    #[test]
    fn corrupted_bytes_are_rejected_not_trusted() {
        let cmd = Command {
            fencing: 7,
            job: job(),
            body: CommandBody::Start {
                spec_json: "{}".into(),
            },
        };
        let bytes = cmd.encode().unwrap();
        // Truncation and garbage both fail validation instead of being read.
        assert!(Command::decode(&bytes[..bytes.len() / 2]).is_err());
        let mut garbage = AlignedVec::<16>::new();
        garbage.extend_from_slice(&[0xff; 64]);
        let err = Command::decode(&garbage).unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidMessage(_)), "{err}");
    }

    #[test]
    fn ids_are_revalidated_after_decoding() {
        // An archive whose bytes are well-formed but whose job id breaks the id rules.
        #[derive(rkyv::Archive, rkyv::Serialize)]
        struct Sneaky {
            fencing: u64,
            job: String,
            body: CommandBody,
        }
        let sneaky = Sneaky {
            fencing: 1,
            job: "Not A Valid Id".into(),
            body: CommandBody::Stop,
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&sneaky).unwrap();
        let err = Command::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("job id"), "{err}");
    }
}
