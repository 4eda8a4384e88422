//! A LoRA adapter written as a GGUF LoRA adapter, the layout llama.cpp's
//! `convert_lora_to_gguf.py` writes and `llama_adapter_lora_init` (`--lora`) loads:
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for every
//! adapted projection `blk.N.<name>.weight.lora_a` (PEFT's A, `[r, in]`) and `.lora_b`
//! (PEFT's B, `[out, r]`), F32. For the `llama` architecture the rows of q/k's B are
//! permuted per head as the converter permutes the base weights (B's rows are the
//! projection's outputs), so the adapter fits the GGUF base.
//!
//! llama.cpp scales every module by `alpha / r`; a module whose PEFT scale differs
//! (`rank_pattern`, `alpha_pattern`, rsLoRA) has the difference folded into its B.

use std::path::Path;

use super::mapping::permute_rows;
use super::reader::Value;
use super::writer::GgufWriter;
use crate::config::{Architecture, ModelConfig};
use crate::error::ModelError;
use crate::lora::{LoraAdapter, TargetModule};
use crate::weights::read_f32;

/// llama.cpp's name of a projection inside `blk.N`.
pub fn gguf_module_name(t: TargetModule) -> &'static str {
    match t {
        TargetModule::Q => "attn_q",
        TargetModule::K => "attn_k",
        TargetModule::V => "attn_v",
        TargetModule::O => "attn_output",
        TargetModule::Gate => "ffn_gate",
        TargetModule::Up => "ffn_up",
        TargetModule::Down => "ffn_down",
    }
}

/// Writes `adapter` (for a base with config `cfg`) as a GGUF LoRA adapter at `path`;
/// returns the number of tensors written.
pub fn export_lora(
    adapter: &LoraAdapter,
    cfg: &ModelConfig,
    path: &Path,
) -> Result<usize, ModelError> {
    let alpha = adapter.config.lora_alpha;
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(ModelError::adapter(
            path,
            format!("lora_alpha {alpha} must be positive for a GGUF adapter"),
        ));
    }
    let mut w = GgufWriter::new();
    w.set(
        "general.architecture",
        Value::String(cfg.architecture.model_type().into()),
    );
    w.set("general.type", Value::String("adapter".into()));
    w.set("adapter.type", Value::String("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(alpha as f32));
    if let Some(name) = &adapter.config.base_model_name_or_path {
        w.set("general.base_model.0.name", Value::String(name.clone()));
    }
    let mut count = 0;
    for (layer, t, m) in adapter.iter() {
        let name = format!("blk.{layer}.{}.weight", gguf_module_name(t));
        let [r, n_in] = m.a.dims();
        let [n_out, _] = m.b.dims();
        let a = read_f32(&m.a, &format!("{name}.lora_a"))?;
        let mut b = read_f32(&m.b, &format!("{name}.lora_b"))?;
        let fold = f64::from(m.scale) / (alpha / r as f64);
        if fold != 1.0 {
            for v in &mut b {
                *v = (f64::from(*v) * fold) as f32;
            }
        }
        let heads = match t {
            TargetModule::Q => Some(cfg.num_attention_heads),
            TargetModule::K => Some(cfg.num_key_value_heads),
            _ => None,
        };
        if let (Some(h), Architecture::Llama) = (heads, cfg.architecture) {
            b = permute_rows(&b, n_out, r, h);
        }
        w.add_f32(&format!("{name}.lora_a"), &[r, n_in], a);
        w.add_f32(&format!("{name}.lora_b"), &[n_out, r], b);
        count += 2;
    }
    w.write(path)?;
    Ok(count)
}
