//! Where a base model comes from: a Hugging Face checkpoint directory or a GGUF file, opened
//! the same way, and the one canonical digest that names the base whichever form it has.
//!
//! The digest covers what the model computes, not how its files are laid out: the
//! hyper-parameters that change the function (architecture, sizes, heads, RoPE, norm
//! epsilon, tied embeddings, biases) and every tensor the decoder reads, in name order,
//! as f32 values after loading (dequantized, upcast, Q/K permutation undone). So a `.gguf`
//! file and the f32 directory `tributary model import` writes from it name the same base,
//! and adapters, jobs and attribution records agree whichever was used. (A bf16 import
//! rounds the values: a different base, with its own digest.)

use std::path::Path;

use crate::config::{GenerationConfig, ModelConfig};
use crate::error::ModelError;
use crate::gguf;
use crate::weights::TensorStore;

/// A base model's config, decoding defaults and tensors, from a directory or a GGUF file.
#[derive(Debug)]
pub struct Checkpoint {
    /// Hyper-parameters.
    pub config: ModelConfig,
    /// Decoding defaults.
    pub generation: GenerationConfig,
    /// The tensors under Hugging Face names.
    pub store: TensorStore,
}

/// Opens `path`: a `.gguf` file (dequantized as it is read) or a Hugging Face directory.
pub fn open_checkpoint(path: &Path) -> Result<Checkpoint, ModelError> {
    if gguf::is_gguf(path) {
        let file = std::sync::Arc::new(gguf::GgufFile::open(path)?);
        let config = gguf::mapping::model_config(&file)?;
        let generation = gguf::mapping::generation_config(&file, &config);
        let tensors = gguf::mapping::lazy_tensors(file, &config)?;
        let store = TensorStore::from_lazy(tensors, &path.display().to_string());
        return Ok(Checkpoint {
            config,
            generation,
            store,
        });
    }
    let config = ModelConfig::load(path)?;
    let generation = GenerationConfig::load_or_default(path, &config)?;
    let store = TensorStore::open_checkpoint(path)?;
    Ok(Checkpoint {
        config,
        generation,
        store,
    })
}

/// The canonical digest of the base model at `path` (directory or GGUF file).
pub fn base_model_digest(path: &Path) -> Result<[u8; 32], ModelError> {
    let ckpt = open_checkpoint(path)?;
    digest_checkpoint(&ckpt.config, &ckpt.store)
}

/// The names of the tensors the decoder reads for `cfg`, sorted.
pub fn model_tensor_names(cfg: &ModelConfig) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    let llama = cfg.architecture == crate::config::Architecture::Llama;
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        names.push(format!("{p}.input_layernorm.weight"));
        names.push(format!("{p}.post_attention_layernorm.weight"));
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            names.push(format!("{p}.self_attn.{m}.weight"));
            let biased = cfg.attention_bias && (m != "o_proj" || llama);
            if biased {
                names.push(format!("{p}.self_attn.{m}.bias"));
            }
        }
        for m in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{m}.weight"));
            if cfg.mlp_bias {
                names.push(format!("{p}.mlp.{m}.bias"));
            }
        }
    }
    names.sort();
    names
}

/// The canonical digest of a config and its tensors (see the module docs).
pub fn digest_checkpoint(cfg: &ModelConfig, store: &TensorStore) -> Result<[u8; 32], ModelError> {
    let mut h = blake3::Hasher::new();
    h.update(b"tributary base model v1\n");
    let function = serde_json::json!({
        "architecture": cfg.architecture.model_type(),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        // At f32 precision: GGUF stores these as f32.
        "rms_norm_eps": cfg.rms_norm_eps as f32,
        "rope_theta": cfg.rope_theta as f32,
        "rope_scaling": cfg.rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
    });
    let text = function.to_string();
    h.update(&(text.len() as u64).to_le_bytes());
    h.update(text.as_bytes());
    for name in model_tensor_names(cfg) {
        let (shape, values) = store.get_f32(&name)?;
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(&(shape.len() as u64).to_le_bytes());
        for d in &shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in &values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        h.update(&bytes);
    }
    Ok(h.finalize().into())
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
