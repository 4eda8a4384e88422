//! The adapter loader threads: on a cache miss one fetches an adapter's files from the
//! [`AdapterSource`] (possibly a store download), parses them for the base model, checks the
//! rank, packs the host kernels' factors, and hands the adapter to the engine loop, which
//! meanwhile keeps stepping the requests whose adapters are resident.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tributary_model::config::ModelConfig;
use tributary_model::device::Device;
use tributary_model::lora::LoraAdapter;
use tributary_protocol::ids::Digest;
use tributary_protocol::inference::InferenceError;

use super::adapters::{AdapterFiles, AdapterSource};
use super::runner::Command;

/// A loaded adapter and what it costs.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub adapter: Arc<LoraAdapter>,
    /// Bytes it holds (its tensors and packed factors).
    pub bytes: u64,
    pub seconds: f64,
}

pub(crate) struct Loader {
    pub source: Arc<dyn AdapterSource>,
    pub model_config: ModelConfig,
    pub device: Device,
    pub bf16: bool,
    pub max_rank: usize,
    pub replies: SyncSender<Command>,
}

impl Loader {
    /// Loads each digest asked for until the engine goes away (several loaders share
    /// one queue).
    #[allow(clippy::disallowed_methods)] // measures adapter load seconds
    pub fn run(self, jobs: &Mutex<Receiver<Digest>>) {
        loop {
            let next = match jobs.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(digest) = next else { return };
            let started = Instant::now();
            let result = self.load(&digest).map(|(adapter, bytes)| Loaded {
                adapter: Arc::new(adapter),
                bytes,
                seconds: started.elapsed().as_secs_f64(),
            });
            if self.replies.send(Command::Loaded(digest, result)).is_err() {
                return;
            }
        }
    }

    fn load(&self, digest: &Digest) -> Result<(LoraAdapter, u64), InferenceError> {
        let internal = |e: String| InferenceError::Internal(format!("adapter {digest}: {e}"));
        let files = self
            .source
            .fetch(digest)
            .map_err(|e| InferenceError::Unavailable(e.to_string()))?
            .ok_or_else(|| InferenceError::UnknownAdapter(digest.to_hex()))?;
        let invalid = |e: tributary_model::error::ModelError| InferenceError::Invalid {
            field: "model".into(),
            message: format!("adapter {digest} does not fit the base model: {e}"),
        };
        let adapter = match files {
            AdapterFiles::Dir(dir) => {
                LoraAdapter::load(&dir, &self.model_config, &self.device).map_err(invalid)?
            }
            AdapterFiles::Files(files) => {
                let tmp = tempfile::tempdir().map_err(|e| internal(e.to_string()))?;
                for f in &files {
                    std::fs::write(tmp.path().join(&f.name), &f.bytes)
                        .map_err(|e| internal(e.to_string()))?;
                }
                LoraAdapter::load(tmp.path(), &self.model_config, &self.device).map_err(invalid)?
            }
        };
        let rank = adapter
            .iter()
            .map(|(_, _, m)| m.a.dims()[0])
            .max()
            .unwrap_or(0);
        if rank > self.max_rank {
            return Err(InferenceError::Invalid {
                field: "model".into(),
                message: format!(
                    "adapter {digest} has rank {rank}, above this engine's max LoRA rank {}",
                    self.max_rank
                ),
            });
        }
        // Packed here, so the engine loop's first step with it does not pay for it.
        adapter
            .host_factors(self.bf16)
            .map_err(|e| internal(e.to_string()))?;
        let params = adapter.num_parameters() as u64;
        let bytes = params * 4 + params * if self.bf16 { 2 } else { 4 };
        Ok((adapter, bytes))
    }
}
