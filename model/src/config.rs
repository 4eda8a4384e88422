//! Hugging Face `config.json` and `generation_config.json`: both transformers 4.x and 5.x layouts.
//!
//! `rope_theta` sits at the top level in configs written by transformers 4.x and inside
//! `rope_parameters` in 5.x; both are read, as is RoPE scaling of type `linear` and `llama3`
//! (from `rope_scaling` or `rope_parameters`); other scaling types (yarn, dynamic, …) are
//! refused rather than silently computed wrong.
//!
//! Sizes are bounded ([`MAX_DIM`], [`MAX_LAYERS`]) so that no product the model forms
//! from them can overflow, whoever wrote the file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ModelError;

/// The decoder families Tributary implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM`: GQA, optional biases, tied or untied lm_head.
    Llama,
    /// `Qwen2ForCausalLM`: like Llama with q/k/v biases.
    Qwen2,
}

impl Architecture {
    /// The name transformers writes in `architectures`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// The `model_type` transformers writes.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// The model hyper-parameters, read from `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Llama or Qwen2.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Per-head width (`hidden_size / num_attention_heads` unless the config says otherwise).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE frequency scaling (`default` means none).
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    /// Longest context the model was configured for (RoPE positions beyond it still work).
    pub max_position_embeddings: usize,
    /// Whether the lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o carry biases (Qwen2: q/k/v always do).
    pub attention_bias: bool,
    /// Whether the MLP projections carry biases (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// `bos_token_id` from config.json, if any.
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` from config.json (an int or a list there).
    pub eos_token_ids: Vec<u32>,
    /// `pad_token_id` from config.json, if any.
    pub pad_token_id: Option<u32>,
}

/// Decoding defaults from `generation_config.json`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Tokens that end generation (`eos_token_id`, int or list); may be empty.
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if any.
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence token, if any.
    pub bos_token_id: Option<u32>,
    /// Default sampling temperature, if the file sets one.
    pub temperature: Option<f32>,
    /// Default top-k, if set.
    pub top_k: Option<usize>,
    /// Default top-p, if set.
    pub top_p: Option<f32>,
    /// Default repetition penalty, if set.
    pub repetition_penalty: Option<f32>,
    /// Whether sampling is the default (`do_sample`).
    pub do_sample: Option<bool>,
    /// Default `max_new_tokens`, if set.
    pub max_new_tokens: Option<usize>,
}

/// The largest size a config may give a dimension (vocabulary, widths, heads): 2^22, ten
/// times the widest real vocabulary, so that products such as `vocab_size × hidden_size`
/// and `num_attention_heads × head_dim` cannot overflow.
pub const MAX_DIM: usize = 1 << 22;
/// The most decoder layers a config may give.
pub const MAX_LAYERS: usize = 1 << 12;

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::json(path, e))
}

/// `eos_token_id` may be null, an int or a list of ints.
fn token_list(v: Option<&Value>, file: &str, field: &str) -> Result<Vec<u32>, ModelError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| token_id(Some(x), file, field)?.ok_or_else(|| bad_token(file, field)))
            .collect(),
        Some(x) => Ok(token_id(Some(x), file, field)?.into_iter().collect()),
    }
}

fn bad_token(file: &str, field: &str) -> ModelError {
    ModelError::config(file, field, "expected a non-negative token id")
}

fn token_id(v: Option<&Value>, file: &str, field: &str) -> Result<Option<u32>, ModelError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad_token(file, field)),
    }
}

fn req_usize(obj: &Value, file: &str, field: &str) -> Result<usize, ModelError> {
    let v = obj
        .get(field)
        .ok_or_else(|| ModelError::config(file, field, "missing"))?;
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            ModelError::config(
                file,
                field,
                format!("expected a non-negative integer, found {v}"),
            )
        })
}

fn opt_usize(obj: &Value, file: &str, field: &str) -> Result<Option<usize>, ModelError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => req_usize(obj, file, field).map(Some),
    }
}

fn opt_f64(obj: &Value, file: &str, field: &str) -> Result<Option<f64>, ModelError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            ModelError::config(file, field, format!("expected a number, found {v}"))
        }),
    }
}

fn opt_bool(obj: &Value, file: &str, field: &str) -> Result<Option<bool>, ModelError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            ModelError::config(file, field, format!("expected true or false, found {v}"))
        }),
    }
}

impl ModelConfig {
    /// Reads `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let value = read_json(&path)?;
        Self::from_json_value(&value, &path.display().to_string())
    }

    /// Reads a config file at an explicit path (for `tributary model init --config FILE`).
    pub fn load_file(path: &Path) -> Result<Self, ModelError> {
        let value = read_json(path)?;
        Self::from_json_value(&value, &path.display().to_string())
    }

    /// Parses a config.json value; `file` names it in errors.
    pub fn from_json_value(v: &Value, file: &str) -> Result<Self, ModelError> {
        let arch_name = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .map(str::to_string);
        let model_type = v.get("model_type").and_then(|m| m.as_str());
        let architecture = match (arch_name.as_deref(), model_type) {
            (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => Architecture::Llama,
            (Some("Qwen2ForCausalLM"), _) | (None, Some("qwen2")) => Architecture::Qwen2,
            (Some(other), _) => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
            (None, Some(other)) => {
                return Err(ModelError::UnsupportedArchitecture(other.to_string()));
            }
            (None, None) => {
                return Err(ModelError::config(
                    file,
                    "architectures",
                    "missing (and no model_type)",
                ));
            }
        };
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str())
            && act != "silu"
        {
            return Err(ModelError::config(
                file,
                "hidden_act",
                format!("`{act}` is not supported (only silu)"),
            ));
        }
        let hidden_size = req_usize(v, file, "hidden_size")?;
        let num_attention_heads = req_usize(v, file, "num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(ModelError::config(
                file,
                "num_attention_heads",
                "must be positive",
            ));
        }
        let num_key_value_heads =
            opt_usize(v, file, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::config(
                file,
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let head_dim = opt_usize(v, file, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::config(
                file,
                "head_dim",
                format!("{head_dim} must be even and positive"),
            ));
        }
        // rope_theta: top level (4.x) or inside rope_parameters (5.x).
        let rope_params = v.get("rope_parameters").filter(|p| !p.is_null());
        let mut rope_theta = opt_f64(v, file, "rope_theta")?;
        let mut rope_scaling = RopeScaling::Default;
        if let Some(p) = rope_params {
            if let Some(t) = p.get("rope_theta").and_then(|x| x.as_f64()) {
                rope_theta = Some(t);
            }
            rope_scaling = parse_rope_scaling(p, file, "rope_parameters")?;
        }
        if let Some(s) = v.get("rope_scaling").filter(|p| !p.is_null()) {
            let parsed = parse_rope_scaling(s, file, "rope_scaling")?;
            if parsed != RopeScaling::Default {
                rope_scaling = parsed;
            }
        }
        let rope_theta = rope_theta.unwrap_or(10000.0);
        let tie_word_embeddings = opt_bool(v, file, "tie_word_embeddings")?.unwrap_or(false);
        let attention_bias = match architecture {
            Architecture::Llama => opt_bool(v, file, "attention_bias")?.unwrap_or(false),
            Architecture::Qwen2 => true,
        };
        let mlp_bias = match architecture {
            Architecture::Llama => opt_bool(v, file, "mlp_bias")?.unwrap_or(false),
            Architecture::Qwen2 => false,
        };
        if architecture == Architecture::Qwen2
            && opt_bool(v, file, "use_sliding_window")?.unwrap_or(false)
        {
            return Err(ModelError::config(
                file,
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let cfg = Self {
            architecture,
            vocab_size: req_usize(v, file, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(v, file, "intermediate_size")?,
            num_hidden_layers: req_usize(v, file, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f64(v, file, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize(v, file, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings,
            attention_bias,
            mlp_bias,
            bos_token_id: token_id(v.get("bos_token_id"), file, "bos_token_id")?,
            eos_token_ids: token_list(v.get("eos_token_id"), file, "eos_token_id")?,
            pad_token_id: token_id(v.get("pad_token_id"), file, "pad_token_id")?,
        };
        cfg.check_sizes()
            .map_err(|(field, reason)| ModelError::config(file, field, reason))?;
        Ok(cfg)
    }

    /// Checks every size against [`MAX_DIM`] and [`MAX_LAYERS`]: the first too large, as
    /// (`config.json` field, reason).
    pub fn check_sizes(&self) -> Result<(), (&'static str, String)> {
        let dims = [
            ("vocab_size", self.vocab_size, MAX_DIM),
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_attention_heads", self.num_attention_heads, MAX_DIM),
            ("num_key_value_heads", self.num_key_value_heads, MAX_DIM),
            ("head_dim", self.head_dim, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
        ];
        match dims.into_iter().find(|&(_, v, max)| v > max) {
            Some((field, v, max)) => Err((field, format!("{v} is larger than the limit {max}"))),
            None => Ok(()),
        }
    }

    fn rope_parameters_json(&self) -> Value {
        let mut p = self.rope_scaling.to_json();
        if let Some(obj) = p.as_object_mut() {
            obj.insert("rope_theta".into(), Value::from(self.rope_theta));
        }
        p
    }

    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// A config.json as transformers 5.x writes it (rope_theta inside `rope_parameters`).
    pub fn to_json_value(&self) -> Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope_theta,
            "rope_parameters": self.rope_parameters_json(),
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
            "use_cache": true,
        });
        if let Some(obj) = v.as_object_mut() {
            let eos = match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => Value::from(*one),
                many => Value::from(many.to_vec()),
            };
            obj.insert("eos_token_id".into(), eos);
            if self.rope_scaling != RopeScaling::Default {
                obj.insert("rope_scaling".into(), self.rope_scaling.to_json());
            }
            match self.architecture {
                Architecture::Llama => {
                    obj.insert("attention_bias".into(), Value::Bool(self.attention_bias));
                    obj.insert("mlp_bias".into(), Value::Bool(self.mlp_bias));
                }
                Architecture::Qwen2 => {
                    obj.insert("use_sliding_window".into(), Value::Bool(false));
                }
            }
        }
        v
    }
}

fn parse_rope_scaling(p: &Value, file: &str, field: &str) -> Result<RopeScaling, ModelError> {
    let ty = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64, ModelError> {
        p.get(k).and_then(|x| x.as_f64()).ok_or_else(|| {
            ModelError::config(file, format!("{field}.{k}"), "missing or not a number")
        })
    };
    match ty {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(ModelError::config(
            file,
            format!("{field}.rope_type"),
            format!("RoPE type `{other}` is not supported (default, linear, llama3)"),
        )),
    }
}

/// RoPE frequency scaling, as transformers' `ROPE_INIT_FUNCTIONS`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    Default,
    /// Positions divided by `factor` (all frequencies scaled).
    Linear {
        /// Scaling factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scaling factor for low frequencies.
        factor: f64,
        /// Wavelength threshold (low).
        low_freq_factor: f64,
        /// Wavelength threshold (high).
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// Applies the scaling to the default inverse frequencies (f32, as transformers).
    pub fn apply(&self, inv_freq: &mut [f32]) {
        match *self {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in inv_freq.iter_mut() {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let freq = f64::from(*f);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let scaled = if wavelen > low_wavelen {
                        freq / factor
                    } else {
                        freq
                    };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    let out = if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                    *f = out as f32;
                }
            }
        }
    }

    fn to_json(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`; when the file is absent, falls back to the eos/pad/bos
    /// ids of `model` (as transformers does).
    pub fn load_or_default(dir: &Path, model: &ModelConfig) -> Result<Self, ModelError> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self {
                eos_token_ids: model.eos_token_ids.clone(),
                pad_token_id: model.pad_token_id,
                bos_token_id: model.bos_token_id,
                ..Self::default()
            });
        }
        let v = read_json(&path)?;
        let file = path.display().to_string();
        let mut cfg = Self::from_json_value(&v, &file)?;
        if v.get("eos_token_id").is_none() {
            cfg.eos_token_ids = model.eos_token_ids.clone();
        }
        if v.get("pad_token_id").is_none() {
            cfg.pad_token_id = model.pad_token_id;
        }
        Ok(cfg)
    }

    /// Parses a generation_config.json value; `file` names it in errors.
    pub fn from_json_value(v: &Value, file: &str) -> Result<Self, ModelError> {
        Ok(Self {
            eos_token_ids: token_list(v.get("eos_token_id"), file, "eos_token_id")?,
            pad_token_id: token_id(v.get("pad_token_id"), file, "pad_token_id")?,
            bos_token_id: token_id(v.get("bos_token_id"), file, "bos_token_id")?,
            temperature: opt_f64(v, file, "temperature")?.map(|t| t as f32),
            top_k: opt_usize(v, file, "top_k")?,
            top_p: opt_f64(v, file, "top_p")?.map(|t| t as f32),
            repetition_penalty: opt_f64(v, file, "repetition_penalty")?.map(|t| t as f32),
            do_sample: opt_bool(v, file, "do_sample")?,
            max_new_tokens: opt_usize(v, file, "max_new_tokens")?,
        })
    }

    /// The JSON transformers would write.
    pub fn to_json_value(&self) -> Value {
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        let mut v = serde_json::json!({
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
        });
        if let Some(obj) = v.as_object_mut() {
            let opt = [
                ("temperature", self.temperature.map(Value::from)),
                ("top_k", self.top_k.map(Value::from)),
                ("top_p", self.top_p.map(Value::from)),
                (
                    "repetition_penalty",
                    self.repetition_penalty.map(Value::from),
                ),
                ("do_sample", self.do_sample.map(Value::from)),
                ("max_new_tokens", self.max_new_tokens.map(Value::from)),
            ];
            for (k, val) in opt {
                if let Some(val) = val {
                    obj.insert(k.into(), val);
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests;
