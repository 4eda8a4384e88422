//! The model crate's LoRA [`Trainer`] as a [`ShardExecutor`]: each worker loads the base
//! model, tokenizer and JSONL data named by the spec, computes gradients of the summed token
//! loss for its micro-batches, and applies the fixed-order sum exactly as
//! [`Trainer::train_step`] would (divide by the step's tokens, clip, AdamW).
//!
//! The run's state is a [`Session`] of the model crate's training driver, the same one
//! `tributary model finetune` drives in one process: the example order, the micro-batch
//! gradient and the update are its, so a job trains the same adapter on any number of
//! workers and in the CLI.

use std::io::Read as _;
use std::path::Path;

use tributary_model::data::{DataOptions, load_jsonl};
use tributary_model::decoder::CausalLm;
use tributary_model::device::Selected;
use tributary_model::lora::{LoraConfig, TargetModule};
use tributary_model::precision::Precision;
use tributary_model::tokenizer::Tokenizer;
use tributary_model::train::driver::{MicroRange, Session};
use tributary_model::train::{TrainConfig, TrainExample, Trainer};
use tributary_protocol::{Digest, JobSpec, MicroBatch, NamedFile};

use crate::executor::{ExecError, ExecutorFactory, MicroGrad, ShardExecutor, Sources};
use crate::sources::SourceConfig;

/// Longest sequence kept when the model allows more.
pub const MAX_SEQ_LEN: usize = 512;

fn setup(e: impl std::fmt::Display) -> ExecError {
    ExecError::Setup(e.to_string())
}

/// LoRA fine-tuning of a Hugging Face checkpoint directory.
pub struct TrainerExecutor {
    model: CausalLm,
    /// The run's state: the same [`Session`] `model finetune` drives in one process.
    session: Session,
    /// Examples per optimizer step (the global batch).
    batch_size: u64,
    sources: Sources,
    /// Adapter snapshots for the attribution index (see [`crate::attribution_index`]).
    index: crate::attribution_index::Recording,
}

/// BLAKE3 over a directory's plain files (sorted names; each name, size and contents), so
/// the digest names the base model whatever the path it was loaded from.
/// Each file is streamed through the hasher, never held in memory whole (a base model's
/// weights can be gigabytes).
pub fn digest_dir(dir: &Path) -> std::io::Result<Digest> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut h = blake3::Hasher::new();
    for name in names {
        let mut file = std::fs::File::open(dir.join(&name))?;
        let size = file.metadata()?.len();
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&size.to_le_bytes());
        let copied = std::io::copy(&mut (&mut file).take(size), &mut h)?;
        if copied != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{name} changed while it was being digested"),
            ));
        }
    }
    Ok(h.finalize().into())
}

impl TrainerExecutor {
    /// Loads everything the spec names onto the CPU; URLs and datanets resolve with the
    /// default [`SourceConfig`] (no datanet store, cache under the temp directory).
    pub fn new(spec: &JobSpec) -> Result<Self, ExecError> {
        Self::with_sources(spec, &SourceConfig::default(), &Selected::cpu())
    }

    /// Loads everything the spec names onto `device` (the worker's `--device`: the base,
    /// the adapter, the optimizer state and every step's arithmetic live there), fetching
    /// URLs and datanet versions through `sources`.
    pub fn with_sources(
        spec: &JobSpec,
        sources: &SourceConfig,
        device: &Selected,
    ) -> Result<Self, ExecError> {
        let model_dir = sources.model_dir(&spec.base_model)?;
        let data_file = sources.data_file(&spec.data)?;
        let dir = model_dir.as_path();
        let _span = tracing::info_span!("trainer_setup", device = %device.choice).entered();
        let model = CausalLm::load(dir, &device.device).map_err(setup)?;
        let tokenizer = Tokenizer::from_dir(dir).map_err(setup)?;
        let eos = tokenizer
            .eos_token_id()
            .or_else(|| model.generation_config().eos_token_ids.first().copied());
        let options = DataOptions {
            max_seq_len: model.config().max_position_embeddings.min(MAX_SEQ_LEN),
            eos_token_id: eos,
        };
        let data = load_jsonl(&data_file.path, &tokenizer, &options)
            .map_err(|e| setup(format!("data {:?}: {e}", spec.data)))?;
        let rows = crate::attribution_index::row_ids(&data_file.path, &data.examples)
            .map_err(|e| setup(format!("data {:?}: {e}", spec.data)))?;
        let data_digest = data_file.digest;
        // The canonical digest of the loaded base (tensors and config, not file bytes): a
        // GGUF file and the directory imported from it name the same base.
        let base_digest = tributary_model::source::base_model_digest(dir)
            .map(Digest)
            .map_err(|e| setup(format!("base_model {}: {e}", spec.base_model)))?;
        let examples: Vec<TrainExample> = data.examples.into_iter().map(|e| e.example).collect();
        if examples.is_empty() {
            return Err(ExecError::Setup(format!("{}: no examples", spec.data)));
        }
        let examples_len = examples.len() as u64;
        let targets = spec
            .lora
            .target_modules
            .iter()
            .map(|n| {
                TargetModule::from_name(n).ok_or_else(|| {
                    ExecError::Setup(format!("lora.target_modules: unknown module {n:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut lora = LoraConfig::new(
            spec.lora.rank as usize,
            f64::from(spec.lora.alpha),
            &targets,
        );
        lora.lora_dropout = f64::from(spec.lora.dropout);
        // A URL's query may hold credentials: keep it out of the adapter's config.
        let base_name = spec.base_model.split('?').next().unwrap_or_default();
        lora.base_model_name_or_path = Some(base_name.to_string());
        let cfg = TrainConfig {
            lr: spec.train.lr,
            warmup_steps: spec.train.warmup,
            // The schedule spans the steps over the train split (the eval tail is held out).
            total_steps: spec.total_steps(spec.eval_split(examples.len() as u64).0),
            grad_accum_steps: spec.micro_batches() as usize,
            max_grad_norm: spec.train.max_grad_norm.map(f64::from),
            batch_size: spec.micro_batch_size() as usize,
            seed: spec.train.seed,
            precision: match spec.train.precision.as_deref() {
                None => Precision::fastest(),
                Some(name) => Precision::parse(name).ok_or_else(|| {
                    ExecError::Setup(format!(
                        "train.precision: unknown precision {name:?} (f32 or bf16)"
                    ))
                })?,
            },
            recompute: spec.train.recompute.unwrap_or(false),
            ..TrainConfig::default()
        };
        // The last `train.eval_fraction` of the examples are held out for the eval loss;
        // the attribution index covers the training part only.
        let train_len = spec.eval_split(examples_len).0 as usize;
        let mut rows = rows;
        rows.truncate(train_len);
        let index = crate::attribution_index::Recording::new(
            spec,
            rows,
            cfg.total_steps,
            train_len as u64,
            base_digest,
            data_digest,
        );
        let trainer = Trainer::new(&model, lora, cfg).map_err(setup)?;
        let mut examples = examples;
        let held_out = examples.split_off(train_len);
        let session = Session::new(trainer, examples, held_out).map_err(setup)?;
        Ok(Self {
            model,
            session,
            batch_size: u64::from(spec.train.batch_size),
            sources: Sources {
                examples: examples_len,
                base_model: base_digest,
                data: data_digest,
            },
            index,
        })
    }

    /// The example at position `pos` of the job's global example order.
    pub fn example_at(&mut self, pos: u64) -> TrainExample {
        let r = MicroRange {
            index: 0,
            start: pos,
            len: 1,
        };
        self.session
            .micro_examples(&r)
            .pop()
            .unwrap_or_else(|| TrainExample::causal(Vec::new()))
    }

    /// The trained adapter so far.
    pub fn trainer(&self) -> &Trainer {
        self.session.trainer()
    }
}

impl ShardExecutor for TrainerExecutor {
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    fn gradients(&mut self, step: u64, mb: &MicroBatch) -> Result<MicroGrad, ExecError> {
        let t0 = std::time::Instant::now();
        let r = MicroRange {
            index: mb.index,
            start: mb.start,
            len: mb.len,
        };
        let c = self
            .session
            .micro_gradients(step, self.batch_size, &r)
            .map_err(|e| ExecError::Compute(e.to_string()))?;
        self.index.add_training_time(t0.elapsed());
        Ok(MicroGrad {
            loss_sum: c.loss_sum,
            tokens: c.tokens,
            grads: c.grads,
        })
    }

    #[allow(clippy::disallowed_methods)] // measures elapsed time
    fn apply(&mut self, step: u64, summed: &[f32], tokens: u64) -> Result<(), ExecError> {
        let t0 = std::time::Instant::now();
        let stats = self
            .session
            .apply_summed(summed, 0.0, tokens)
            .map_err(|e| ExecError::Update(e.to_string()))?;
        self.index
            .after_update(step, stats.lr, self.session.trainer(), t0.elapsed());
        Ok(())
    }

    fn checkpoint(&self) -> Result<Vec<u8>, ExecError> {
        let cp = |e: &dyn std::fmt::Display| ExecError::Checkpoint(e.to_string());
        let tmp = tempfile::tempdir().map_err(|e| cp(&e))?;
        let dir = tmp.path().join("cp");
        self.session
            .trainer()
            .save_checkpoint(&dir)
            .map_err(|e| cp(&e))?;
        pack_dir(&dir).map_err(|e| cp(&e))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), ExecError> {
        let cp = |e: &dyn std::fmt::Display| ExecError::Checkpoint(e.to_string());
        let tmp = tempfile::tempdir().map_err(|e| cp(&e))?;
        let dir = tmp.path().join("cp");
        unpack_dir(state, &dir)?;
        self.session
            .set_trainer(Trainer::resume(&dir, &self.model).map_err(|e| cp(&e))?);
        Ok(())
    }

    fn num_params(&self) -> usize {
        self.session.num_params()
    }

    fn sources(&self) -> Sources {
        self.sources
    }

    fn export(&self) -> Result<Vec<NamedFile>, ExecError> {
        let err = |e: &dyn std::fmt::Display| ExecError::Checkpoint(e.to_string());
        let tmp = tempfile::tempdir().map_err(|e| err(&e))?;
        self.session
            .trainer()
            .adapter()
            .save(tmp.path())
            .map_err(|e| err(&e))?;
        let mut files = crate::executor::read_dir_files(tmp.path()).map_err(|e| err(&e))?;
        // The attribution index, built once here where training happened; the coordinator
        // stores it beside the adapter (it is not one of the adapter's files).
        files.extend(
            self.index
                .build(&self.model, self.session.trainer(), self.session.examples())
                .map_err(|e| err(&e))?,
        );
        Ok(files)
    }

    fn eval_loss(&mut self) -> Result<Option<(f32, u64)>, ExecError> {
        let eval = self.session.eval_examples();
        if eval.is_empty() {
            return Ok(None);
        }
        let loss = self
            .session
            .trainer()
            .eval_loss(eval)
            .map_err(|e| ExecError::Compute(e.to_string()))?;
        Ok(Some((loss, eval.len() as u64)))
    }
}

/// A flat directory as bytes: per file, u32 name length, name, u64 size, contents.
fn pack_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let data = std::fs::read(dir.join(&name))?;
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(&data);
    }
    Ok(out)
}

fn unpack_dir(mut bytes: &[u8], dir: &Path) -> Result<(), ExecError> {
    let bad = |why: &str| ExecError::Checkpoint(format!("malformed checkpoint: {why}"));
    std::fs::create_dir_all(dir).map_err(|e| ExecError::Checkpoint(e.to_string()))?;
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("name length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (name, rest) = rest.split_at_checked(len).ok_or_else(|| bad("name"))?;
        let name = std::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') || name.is_empty() {
            return Err(bad("file name"));
        }
        let (size, rest) = rest.split_at_checked(8).ok_or_else(|| bad("size"))?;
        let mut s = [0u8; 8];
        s.copy_from_slice(size);
        let size = usize::try_from(u64::from_le_bytes(s)).map_err(|_| bad("size"))?;
        let (data, rest) = rest.split_at_checked(size).ok_or_else(|| bad("contents"))?;
        std::fs::write(dir.join(name), data).map_err(|e| ExecError::Checkpoint(e.to_string()))?;
        bytes = rest;
    }
    Ok(())
}

/// Chooses the executor by `base_model`: `builtin:linear` is the reference model in
/// [`crate::toy`]; anything else is a checkpoint directory (path or URL) trained with
/// [`TrainerExecutor`], with the default [`SourceConfig`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultFactory;

impl ExecutorFactory for DefaultFactory {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
        SourcedFactory::default().create(spec)
    }
}

/// [`DefaultFactory`] with a given [`SourceConfig`] (the datanet store and the cache
/// directory from `--store` and `--cache-dir`) and the device `--device` chose (default:
/// the CPU).
#[derive(Debug, Clone, Default)]
pub struct SourcedFactory {
    pub sources: SourceConfig,
    pub device: Selected,
}

impl ExecutorFactory for SourcedFactory {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
        if spec.base_model.starts_with("builtin:") {
            return crate::toy::LinearFactory.create(spec);
        }
        Ok(Box::new(TrainerExecutor::with_sources(
            spec,
            &self.sources,
            &self.device,
        )?))
    }
}

#[cfg(test)]
mod tests {
    /// The streamed digest is the one over the files read whole (names, sizes, contents).
    #[test]
    fn digest_dir_streams_the_same_digest_as_the_files_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.bin"), vec![7u8; 300_000]).unwrap();
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut h = blake3::Hasher::new();
        for f in crate::executor::read_dir_files(dir.path()).unwrap() {
            h.update(&(f.name.len() as u64).to_le_bytes());
            h.update(f.name.as_bytes());
            h.update(&(f.bytes.len() as u64).to_le_bytes());
            h.update(&f.bytes);
        }
        let whole: tributary_protocol::ids::Digest = h.finalize().into();
        assert_eq!(super::digest_dir(dir.path()).unwrap(), whole);
    }
}
