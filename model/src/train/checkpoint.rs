//! Saving and resuming a training run exactly: the adapter (PEFT files), AdamW moments,
//! the step counter and the training config. Dropout masks derive from (seed, step,
//! micro-batch), so no generator state needs saving: a resumed run continues bit-identically.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TrainConfig;
use super::optim::AdamW;
use super::trainer::Trainer;
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::lora::LoraAdapter;
use crate::weights::{TensorStore, save_f32};

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";
/// File name of the training config written beside an adapter.
pub const TRAIN_CONFIG_FILE: &str = "training_config.json";

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    format: u32,
    /// The base model's config, checked on resume (a run resumes on the base it began on).
    #[serde(default)]
    base_config: Option<crate::config::ModelConfig>,
}

impl Trainer {
    /// Writes a checkpoint into `dir`: the adapter (loadable as a PEFT adapter on its own),
    /// `optimizer.safetensors`, `trainer_state.json` and `training_config.json`. The files
    /// are written into a temporary sibling directory first, then renamed into place.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), ModelError> {
        let _span =
            tracing::info_span!("save_checkpoint", dir = %dir.display(), step = self.optim.step)
                .entered();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into());
        let tmp = dir.with_file_name(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        }
        self.adapter.save(&tmp)?;
        save_f32(
            &tmp.join(OPTIMIZER_FILE),
            &self.optim.to_host(&self.adapter)?,
        )?;
        write_json(
            &tmp.join(STATE_FILE),
            &TrainerState {
                step: self.optim.step,
                format: 1,
                base_config: Some(self.base.config().clone()),
            },
        )?;
        write_json(&tmp.join(TRAIN_CONFIG_FILE), &self.cfg)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))
    }

    /// Resumes the run saved in `dir` on `model` (the same base it was trained on).
    pub fn resume(dir: &Path, model: &CausalLm) -> Result<Self, ModelError> {
        let _span = tracing::info_span!("resume", dir = %dir.display()).entered();
        let adapter = LoraAdapter::load(dir, model.config(), model.device())?;
        let cfg: TrainConfig = read_json(&dir.join(TRAIN_CONFIG_FILE))?;
        let state: TrainerState = read_json(&dir.join(STATE_FILE))?;
        if let Some(base) = &state.base_config
            && base != model.config()
        {
            return Err(ModelError::adapter(
                dir,
                format!(
                    "checkpoint was trained on another base model ({} with {} layers, hidden {}, vocab {}; this one is {} with {} layers, hidden {}, vocab {})",
                    base.architecture.hf_name(),
                    base.num_hidden_layers,
                    base.hidden_size,
                    base.vocab_size,
                    model.config().architecture.hf_name(),
                    model.config().num_hidden_layers,
                    model.config().hidden_size,
                    model.config().vocab_size,
                ),
            ));
        }
        let store = TensorStore::open_file(&dir.join(OPTIMIZER_FILE))?;
        let mut host = std::collections::BTreeMap::new();
        for name in store.names() {
            let (shape, values) = store.get_f32(&name)?;
            host.insert(name, crate::weights::HostTensor { shape, values });
        }
        let mut t = Trainer::from_adapter(model, adapter, cfg)?;
        t.optim = AdamW::from_host(state.step, &host, &t.adapter, model.device())?;
        Ok(t)
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::json(path, e))?;
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::json(path, e))
}
