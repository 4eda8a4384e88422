//! Random weights in the Hugging Face layout (`tributary model init`), and writing any
//! [`CausalLm`] back out as a Hugging Face checkpoint (used by `tributary model merge`).
//!
//! A written directory holds `config.json`, `generation_config.json` and
//! `model.safetensors` (f32), which transformers and Tributary load alike. Random weights
//! follow transformers' `_init_weights`: normal(0, 0.02) matrices and embeddings, unit
//! norms, zero biases, drawn from a seeded ChaCha generator (same seed, same bytes).

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{Architecture, GenerationConfig, ModelConfig};
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::lora::TargetModule;
use crate::weights::{HostTensor, save_f32};

/// Standard deviation of the random matrices (transformers' `initializer_range`).
pub const INIT_STD: f64 = 0.02;

/// Names and shapes of every tensor a checkpoint of `cfg` holds, in a fixed order.
pub fn checkpoint_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, h],
    )];
    let qkv_bias = cfg.attention_bias;
    let o_bias = cfg.attention_bias && cfg.architecture == Architecture::Llama;
    for l in 0..cfg.num_hidden_layers {
        out.push((format!("model.layers.{l}.input_layernorm.weight"), vec![h]));
        out.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![h],
        ));
        for t in TargetModule::ALL {
            let (fan_in, fan_out) = t.dims(cfg);
            out.push((format!("{}.weight", t.path(l)), vec![fan_out, fan_in]));
            let bias = match t {
                TargetModule::Q | TargetModule::K | TargetModule::V => qkv_bias,
                TargetModule::O => o_bias,
                _ => cfg.mlp_bias,
            };
            if bias {
                out.push((format!("{}.bias", t.path(l)), vec![fan_out]));
            }
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

/// Random tensors for `cfg`, seeded.
pub fn random_tensors(cfg: &ModelConfig, seed: u64) -> BTreeMap<String, HostTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (name, shape) in checkpoint_shapes(cfg) {
        let n: usize = shape.iter().product();
        let values = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            normal(&mut rng, n, INIT_STD)
        };
        out.insert(name, HostTensor { shape, values });
    }
    out
}

/// `n` draws from N(0, std²) by the Box–Muller transform.
fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = std::f64::consts::TAU * u2;
        v.push((r * th.cos()) as f32);
        v.push((r * th.sin()) as f32);
    }
    v.truncate(n);
    v
}

/// Writes config.json, generation_config.json and model.safetensors into `dir`.
pub fn write_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    gen_cfg: &GenerationConfig,
    tensors: &BTreeMap<String, HostTensor>,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_f32(&dir.join("model.safetensors"), tensors)?;
    write_json(&dir.join("config.json"), &cfg.to_json_value())?;
    write_json(
        &dir.join("generation_config.json"),
        &gen_cfg.to_json_value(),
    )
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::json(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// `tributary model init`: reads a config.json-style file, writes a random checkpoint.
/// Returns the parsed config.
pub fn init_random_checkpoint(
    config_file: &Path,
    seed: u64,
    out: &Path,
) -> Result<ModelConfig, ModelError> {
    let _span = tracing::info_span!("model_init", config = %config_file.display(), seed).entered();
    let cfg = ModelConfig::load_file(config_file)?;
    let gen_cfg = GenerationConfig {
        eos_token_ids: cfg.eos_token_ids.clone(),
        pad_token_id: cfg.pad_token_id,
        bos_token_id: cfg.bos_token_id,
        ..GenerationConfig::default()
    };
    let tensors = random_tensors(&cfg, seed);
    write_checkpoint(out, &cfg, &gen_cfg, &tensors)?;
    Ok(cfg)
}

impl CausalLm {
    /// Every weight under its Hugging Face name, read back to the host.
    pub fn to_host(&self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = BTreeMap::new();
        let mut put2 = |name: String, t: &burn::tensor::Tensor<2>| -> Result<(), ModelError> {
            let h = HostTensor::from_tensor(t, &name)?;
            out.insert(name, h);
            Ok(())
        };
        put2(
            "model.embed_tokens.weight".into(),
            &self.embed.dense(self.device()),
        )?;
        if let Some(head_t) = &self.head_t {
            put2("lm_head.weight".into(), &head_t.clone().transpose())?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for t in TargetModule::ALL {
                put2(
                    format!("{}.weight", t.path(l)),
                    &layer.linear(t).weight(self.device()),
                )?;
            }
        }
        let mut put1 = |name: String, t: &burn::tensor::Tensor<1>| -> Result<(), ModelError> {
            let h = HostTensor::from_tensor(t, &name)?;
            out.insert(name, h);
            Ok(())
        };
        put1("model.norm.weight".into(), &self.norm)?;
        for (l, layer) in self.layers.iter().enumerate() {
            put1(
                format!("model.layers.{l}.input_layernorm.weight"),
                &layer.input_norm,
            )?;
            put1(
                format!("model.layers.{l}.post_attention_layernorm.weight"),
                &layer.post_norm,
            )?;
            for t in TargetModule::ALL {
                if let Some(b) = &layer.linear(t).bias {
                    put1(format!("{}.bias", t.path(l)), b)?;
                }
            }
        }
        Ok(out)
    }

    /// Writes the model as a Hugging Face checkpoint directory (f32 safetensors).
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), ModelError> {
        let _span = tracing::info_span!("model_save", dir = %dir.display()).entered();
        write_checkpoint(
            dir,
            self.config(),
            self.generation_config(),
            &self.to_host()?,
        )
    }
}
