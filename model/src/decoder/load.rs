//! Building a [`CausalLm`] from a checkpoint's tensors (dense f32, or NF4 as they are read).

use std::sync::{Arc, OnceLock};

use burn::tensor::Device;

use super::host_step::HostStep;
use super::{CausalLm, DecoderLayer, Linear, TokenEmbedding};
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::ModelError;
use crate::quant::Nf4Matrix;
use crate::weights::TensorStore;

impl CausalLm {
    pub(super) fn from_store_with(
        cfg: ModelConfig,
        gen_cfg: GenerationConfig,
        store: &TensorStore,
        nf4: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let h = cfg.hidden_size;
        let qd = cfg.num_attention_heads * cfg.head_dim;
        let kvd = cfg.num_key_value_heads * cfg.head_dim;
        let im = cfg.intermediate_size;
        let embed_name = "model.embed_tokens.weight";
        let embed = if nf4 {
            let (shape, values) = store.get_f32(embed_name)?;
            if shape != [cfg.vocab_size, h] {
                return Err(ModelError::ShapeMismatch {
                    name: embed_name.to_string(),
                    expected: vec![cfg.vocab_size, h],
                    found: shape,
                });
            }
            let q = Nf4Matrix::quantize(&values, [cfg.vocab_size, h])?;
            TokenEmbedding::Nf4(Arc::new(q))
        } else {
            TokenEmbedding::Dense(store.tensor(embed_name, [cfg.vocab_size, h], device)?)
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let ab = cfg.attention_bias;
            let qkv_bias = ab;
            // Llama's attention_bias also covers o_proj; Qwen2 has biases on q/k/v only.
            let o_bias = ab && cfg.architecture == crate::config::Architecture::Llama;
            layers.push(DecoderLayer {
                input_norm: store.tensor(&format!("{p}.input_layernorm.weight"), [h], device)?,
                q: Linear::load(
                    store,
                    &format!("{p}.self_attn.q_proj"),
                    [qd, h],
                    qkv_bias,
                    nf4,
                    device,
                )?,
                k: Linear::load(
                    store,
                    &format!("{p}.self_attn.k_proj"),
                    [kvd, h],
                    qkv_bias,
                    nf4,
                    device,
                )?,
                v: Linear::load(
                    store,
                    &format!("{p}.self_attn.v_proj"),
                    [kvd, h],
                    qkv_bias,
                    nf4,
                    device,
                )?,
                o: Linear::load(
                    store,
                    &format!("{p}.self_attn.o_proj"),
                    [h, qd],
                    o_bias,
                    nf4,
                    device,
                )?,
                post_norm: store.tensor(
                    &format!("{p}.post_attention_layernorm.weight"),
                    [h],
                    device,
                )?,
                gate: Linear::load(
                    store,
                    &format!("{p}.mlp.gate_proj"),
                    [im, h],
                    cfg.mlp_bias,
                    nf4,
                    device,
                )?,
                up: Linear::load(
                    store,
                    &format!("{p}.mlp.up_proj"),
                    [im, h],
                    cfg.mlp_bias,
                    nf4,
                    device,
                )?,
                down: Linear::load(
                    store,
                    &format!("{p}.mlp.down_proj"),
                    [h, im],
                    cfg.mlp_bias,
                    nf4,
                    device,
                )?,
            });
        }
        let norm = store.tensor("model.norm.weight", [h], device)?;
        // A tied head is the embedding itself (no transposed copy).
        let head_t = if cfg.tie_word_embeddings {
            None
        } else {
            Some(store.tensor_transposed("lm_head.weight", [cfg.vocab_size, h], device)?)
        };
        Ok(Self {
            cfg,
            gen_cfg,
            device: device.clone(),
            embed,
            layers,
            norm,
            head_t,
            head_host: None,
            head_bf16: None,
            host_step: HostStep::default(),
            host_weights: OnceLock::new(),
        })
    }
}
