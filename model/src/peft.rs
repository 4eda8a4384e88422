//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names; load, validate, save, merge.
//!
//! Key names are PEFT's: `base_model.model.model.layers.{N}.self_attn.q_proj.lora_A.weight`
//! `[r, in]` and `…lora_B.weight` `[out, r]`. Loading checks every tensor against the base
//! model's shapes and the config's ranks, and refuses tensors it does not understand
//! (DoRA magnitudes, embeddings, biases) rather than ignoring them. What Tributary saves,
//! PEFT, vLLM and LoRAX load.
//!
//! Adapter directories are untrusted: every access is checked, with errors naming the
//! field or tensor (the lint below keeps it so).
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;

use crate::config::ModelConfig;
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::lora::{LoraAdapter, LoraConfig, LoraModule, TargetModule};
use crate::weights::{HostTensor, TensorStore, save_f32};

/// The file holding the adapter's config.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The file holding the adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// PEFT's key for a module's A or B matrix.
pub fn peft_key(layer: usize, target: TargetModule, which: char) -> String {
    format!(
        "base_model.model.{}.lora_{which}.weight",
        target.path(layer)
    )
}

impl LoraConfig {
    /// Reads and validates `dir/adapter_config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let cfg: LoraConfig =
            serde_json::from_str(&text).map_err(|e| ModelError::json(&path, e))?;
        cfg.validate(&path)?;
        Ok(cfg)
    }
}

impl LoraAdapter {
    /// Loads a PEFT LoRA adapter directory for a base model with config `model`.
    ///
    /// Errors name the offending field or tensor: unsupported options (DoRA,
    /// `modules_to_save`, …), unknown target modules, a missing A/B tensor, a tensor of the
    /// wrong shape (e.g. an adapter trained on another base), or a tensor that is not a
    /// LoRA matrix of a supported module.
    pub fn load(dir: &Path, model: &ModelConfig, device: &Device) -> Result<Self, ModelError> {
        let _span = tracing::info_span!("adapter_load", dir = %dir.display()).entered();
        let config = LoraConfig::load(dir)?;
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.exists() {
            return Err(ModelError::adapter(
                &weights_path,
                "missing (only safetensors adapters are supported)",
            ));
        }
        let store = TensorStore::open_file(&weights_path)?;
        let targets = config.resolve_targets(model.num_hidden_layers, &cfg_path)?;

        // Map every file key to (layer, target, A|B); anything else is refused.
        let mut seen: BTreeMap<(usize, TargetModule, char), String> = BTreeMap::new();
        for name in store.names() {
            let parsed = parse_key(&name, model.num_hidden_layers);
            match parsed {
                Some(k) => {
                    seen.insert(k, name);
                }
                None => {
                    return Err(ModelError::adapter(
                        &weights_path,
                        format!("tensor `{name}` is not a LoRA A/B matrix of a supported module"),
                    ));
                }
            }
        }
        let mut modules: Vec<[Option<LoraModule>; 7]> = (0..model.num_hidden_layers)
            .map(|_| Default::default())
            .collect();
        for &(layer, t) in &targets {
            let (r, alpha) = config.rank_alpha(&t.path(layer), &cfg_path)?;
            let (fan_in, fan_out) = t.dims(model);
            let mut get = |which: char, shape: [usize; 2]| -> Result<_, ModelError> {
                let name =
                    seen.remove(&(layer, t, which))
                        .ok_or_else(|| ModelError::MissingTensor {
                            name: peft_key(layer, t, which),
                            location: weights_path.display().to_string(),
                        })?;
                store.tensor(&name, shape, device)
            };
            let a = get('A', [r, fan_in])?;
            let b = get('B', [fan_out, r])?;
            let slot = modules
                .get_mut(layer)
                .and_then(|l| l.get_mut(t.index()))
                .ok_or_else(|| {
                    ModelError::adapter(
                        &cfg_path,
                        format!(
                            "module `{}` is outside the base model's {} layers",
                            t.path(layer),
                            model.num_hidden_layers
                        ),
                    )
                })?;
            *slot = Some(LoraModule {
                a,
                b,
                scale: config.scale_for(r, alpha) as f32,
            });
        }
        if let Some((_, name)) = seen.into_iter().next() {
            return Err(ModelError::adapter(
                &weights_path,
                format!("tensor `{name}` belongs to a module that target_modules does not select"),
            ));
        }
        Ok(LoraAdapter::from_modules(config, modules))
    }

    /// The adapter's tensors under PEFT's key names, read back to the host.
    pub fn to_host(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = BTreeMap::new();
        for (layer, t, m) in self.iter() {
            let ka = peft_key(layer, t, 'A');
            let kb = peft_key(layer, t, 'B');
            out.insert(ka.clone(), HostTensor::from_tensor(&m.a, &ka)?);
            out.insert(kb.clone(), HostTensor::from_tensor(&m.b, &kb)?);
        }
        Ok(out)
    }

    /// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` in PEFT's format
    /// (creating `dir`). The config records the real rank of every module: modules whose
    /// rank or alpha differ from `r`/`lora_alpha` appear in `rank_pattern`/`alpha_pattern`.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let _span = tracing::info_span!("adapter_save", dir = %dir.display()).entered();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let tensors = self.to_host()?;
        save_f32(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
        let mut value = serde_json::to_value(&self.config)
            .map_err(|e| ModelError::json(dir.join(ADAPTER_CONFIG), e))?;
        if let Some(obj) = value.as_object_mut() {
            // PEFT declares lora_alpha as an int: write integral alphas as integers.
            if let Some(a) = obj.get_mut("lora_alpha") {
                integral_to_int(a);
            }
            if let Some(serde_json::Value::Object(pat)) = obj.get_mut("alpha_pattern") {
                pat.values_mut().for_each(integral_to_int);
            }
            obj.entry("inference_mode")
                .or_insert(serde_json::Value::Bool(true));
            obj.entry("init_lora_weights")
                .or_insert(serde_json::Value::Bool(true));
            obj.entry("peft_version")
                .or_insert(serde_json::Value::String("0.21.2".into()));
        }
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| ModelError::json(dir.join(ADAPTER_CONFIG), e))?;
        let tmp = dir.join(format!("{ADAPTER_CONFIG}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(ADAPTER_CONFIG))
            .map_err(|e| ModelError::io(dir.join(ADAPTER_CONFIG), e))
    }
}

fn integral_to_int(v: &mut serde_json::Value) {
    if let Some(f) = v.as_f64()
        && f.fract() == 0.0
        && f.abs() < 1e15
    {
        *v = serde_json::Value::from(f as i64);
    }
}

/// Parses `base_model.model.model.layers.N.{self_attn|mlp}.X_proj.lora_{A|B}[.default].weight`.
fn parse_key(name: &str, num_layers: usize) -> Option<(usize, TargetModule, char)> {
    let rest = name.strip_prefix("base_model.model.model.layers.")?;
    let rest = rest.strip_suffix(".weight")?.trim_end_matches(".default");
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= num_layers {
        return None;
    }
    let (block, rest) = rest.split_once('.')?;
    let (module, which) = rest.split_once('.')?;
    let which = match which {
        "lora_A" => 'A',
        "lora_B" => 'B',
        _ => return None,
    };
    let t = TargetModule::from_name(module)?;
    let expected_block = if t.index() < 4 { "self_attn" } else { "mlp" };
    (block == expected_block).then_some((layer, t, which))
}

/// Folds `adapter` into `model`'s weights (`W += scale·B·A`), giving a plain checkpoint
/// that computes what base+adapter computed.
pub fn merge_into(model: &mut CausalLm, adapter: &LoraAdapter) -> Result<(), ModelError> {
    if adapter.num_layers() != model.layers.len() {
        return Err(ModelError::Input(format!(
            "adapter has {} layers, the model {}",
            adapter.num_layers(),
            model.layers.len()
        )));
    }
    let device = model.device().clone();
    for (layer, t, m) in adapter.iter() {
        let Some(block) = model.layers.get_mut(layer) else {
            return Err(ModelError::Input(format!(
                "adapter layer {layer} is outside the model's {} layers",
                model.layers.len()
            )));
        };
        let lin = block.linear_mut(t);
        // Wᵀ += (scale·B·A)ᵀ = scale·Aᵀ·Bᵀ, computed directly in the stored layout.
        let delta_t =
            m.a.clone()
                .transpose()
                .matmul(m.b.clone().transpose())
                .mul_scalar(m.scale)
                .to_device(&device);
        if delta_t.dims() != lin.weight_t.dims() {
            let [i, o] = lin.weight_t.dims();
            let [di, dout] = delta_t.dims();
            return Err(ModelError::ShapeMismatch {
                name: format!("{}.weight", t.path(layer)),
                expected: vec![o, i],
                found: vec![dout, di],
            });
        }
        // Merging into an NF4 base gives a dense f32 weight (base dequantized, plus delta).
        let dense = lin.weight_t.dense(&device);
        lin.weight_t = crate::decoder::LinearWeight::Dense(dense.add(delta_t));
    }
    Ok(())
}
