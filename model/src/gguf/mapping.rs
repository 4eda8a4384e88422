//! llama.cpp's metadata and tensor names mapped to Tributary's [`ModelConfig`] and Hugging
//! Face's tensor names, as `convert_hf_to_gguf.py` maps them the other way.
//!
//! The converter permutes the rows of `q_proj` and `k_proj` (and their biases) of the
//! `llama` architecture per head, so that llama.cpp's RoPE, which rotates adjacent pairs
//! `(2i, 2i+1)`, computes what Hugging Face's rotate-half RoPE computes on `(i, i + d/2)`:
//! GGUF row `h·d + 2i + j` holds Hugging Face row `h·d + j·d/2 + i`. [`unpermute_rows`]
//! undoes it. `qwen2` files are not permuted (llama.cpp runs them with NEOX RoPE).
//! A file without `output.weight` ties the lm_head to the embedding.
//!
//! The metadata and shapes are untrusted: sizes convert with `try_from` and tensors are
//! indexed with `get`, each error naming the key or tensor (the lint below enforces it).
#![deny(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::reader::{GgufFile, Value};
use super::{GgufError, TensorInfo};
use crate::config::{Architecture, GenerationConfig, ModelConfig, RopeScaling};
use crate::weights::{HostTensor, LazyTensor};

/// A GGUF model read into Tributary's terms: config, decoding defaults, and f32 tensors
/// under Hugging Face names with the Q/K permutation undone.
#[derive(Debug)]
pub struct GgufModel {
    /// The hyper-parameters.
    pub config: ModelConfig,
    /// eos/bos/pad from the tokenizer metadata.
    pub generation: GenerationConfig,
    /// Tensors by Hugging Face name, row-major f32.
    pub tensors: HashMap<String, HostTensor>,
}

/// Reads a GGUF file's model.
pub fn load(path: &Path) -> Result<GgufModel, GgufError> {
    let file = GgufFile::open(path)?;
    from_file(&file)
}

/// The model in a parsed GGUF file.
pub fn from_file(file: &GgufFile) -> Result<GgufModel, GgufError> {
    let config = model_config(file)?;
    let generation = generation_config(file, &config);
    let tensors = hf_tensors(file, &config)?;
    Ok(GgufModel {
        config,
        generation,
        tensors,
    })
}

/// `general.architecture` as a Tributary architecture, with its metadata key prefix.
pub fn architecture(file: &GgufFile) -> Result<(Architecture, String), GgufError> {
    let arch = str_key(file, "general.architecture")?;
    match arch {
        "llama" => Ok((Architecture::Llama, arch.to_string())),
        "qwen2" => Ok((Architecture::Qwen2, arch.to_string())),
        other => Err(GgufError::UnsupportedArchitecture {
            path: file.path().to_path_buf(),
            arch: other.to_string(),
        }),
    }
}

fn str_key<'a>(file: &'a GgufFile, key: &str) -> Result<&'a str, GgufError> {
    match file.get(key) {
        None => Err(GgufError::metadata(file.path(), key, "missing")),
        Some(v) => v.as_str().ok_or_else(|| {
            GgufError::metadata(
                file.path(),
                key,
                format!("expected a string, found {}", v.type_name()),
            )
        }),
    }
}

fn opt_u64(file: &GgufFile, key: &str) -> Result<Option<u64>, GgufError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Array(_)) => Err(GgufError::metadata(
            file.path(),
            key,
            "per-layer values are not supported (one value for all layers is)",
        )),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            GgufError::metadata(
                file.path(),
                key,
                format!("expected a non-negative integer, found {}", v.type_name()),
            )
        }),
    }
}

fn req_usize(file: &GgufFile, key: &str) -> Result<usize, GgufError> {
    opt_usize(file, key)?.ok_or_else(|| GgufError::metadata(file.path(), key, "missing"))
}

fn opt_usize(file: &GgufFile, key: &str) -> Result<Option<usize>, GgufError> {
    opt_u64(file, key)?
        .map(|v| {
            usize::try_from(v).map_err(|_| {
                GgufError::metadata(
                    file.path(),
                    key,
                    format!("{v} is larger than {} (usize)", usize::MAX),
                )
            })
        })
        .transpose()
}

fn opt_f64(file: &GgufFile, key: &str) -> Result<Option<f64>, GgufError> {
    match file.get(key) {
        None => Ok(None),
        // An f32 value becomes the f64 of its shortest decimal form (1e-5, not
        // 9.999999747378752e-6), as the config.json it was converted from held it.
        Some(Value::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(f64::from(*x)))),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            GgufError::metadata(
                file.path(),
                key,
                format!("expected a number, found {}", v.type_name()),
            )
        }),
    }
}

fn token_id(file: &GgufFile, key: &str) -> Option<u32> {
    file.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
}

/// The hyper-parameters from `{arch}.*` metadata and the embedding's shape.
pub fn model_config(file: &GgufFile) -> Result<ModelConfig, GgufError> {
    let (architecture, a) = architecture(file)?;
    let path = file.path();
    let key = |k: &str| format!("{a}.{k}");
    let hidden_size = req_usize(file, &key("embedding_length"))?;
    let heads = req_usize(file, &key("attention.head_count"))?;
    let kv_heads = opt_usize(file, &key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(GgufError::metadata(
            path,
            &key("attention.head_count_kv"),
            format!("{kv_heads} key/value heads do not divide {heads} heads"),
        ));
    }
    let head_dim = match opt_usize(file, &key("attention.key_length"))? {
        Some(d) => d,
        None => hidden_size / heads,
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(GgufError::metadata(
            path,
            &key("attention.key_length"),
            format!("a head width of {head_dim} (must be even and positive)"),
        ));
    }
    if let Some(rot) = opt_usize(file, &key("rope.dimension_count"))?
        && rot != head_dim
    {
        return Err(GgufError::metadata(
            path,
            &key("rope.dimension_count"),
            format!("partial rotary embeddings ({rot} of {head_dim} dimensions) are not supported"),
        ));
    }
    let rope_scaling = rope_scaling(file, &a)?;
    let embd = file.tensor("token_embd.weight").ok_or_else(|| {
        GgufError::tensor(path, "token_embd.weight", "missing (the token embedding)")
    })?;
    let vocab_size = embd.shape().first().copied().ok_or_else(|| {
        GgufError::tensor(
            path,
            "token_embd.weight",
            "has no dimensions (the vocabulary)",
        )
    })?;
    let biased = |n: &str| file.tensor(&format!("blk.0.{n}.bias")).is_some();
    let attention_bias = match architecture {
        Architecture::Llama => biased("attn_q"),
        Architecture::Qwen2 => true,
    };
    let eos = token_id(file, "tokenizer.ggml.eos_token_id");
    let cfg = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: req_usize(file, &key("feed_forward_length"))?,
        num_hidden_layers: req_usize(file, &key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: opt_f64(file, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: opt_f64(file, &key("rope.freq_base"))?.unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: opt_usize(file, &key("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias,
        mlp_bias: false,
        bos_token_id: token_id(file, "tokenizer.ggml.bos_token_id"),
        eos_token_ids: eos.into_iter().collect(),
        pad_token_id: token_id(file, "tokenizer.ggml.padding_token_id"),
    };
    cfg.check_sizes().map_err(|(field, reason)| {
        let gguf_key = match field {
            "vocab_size" => return GgufError::tensor(path, "token_embd.weight", reason),
            "hidden_size" => "embedding_length",
            "intermediate_size" => "feed_forward_length",
            "num_hidden_layers" => "block_count",
            "num_attention_heads" => "attention.head_count",
            "num_key_value_heads" => "attention.head_count_kv",
            "head_dim" => "attention.key_length",
            other => other,
        };
        GgufError::metadata(path, &key(gguf_key), reason)
    })?;
    Ok(cfg)
}

fn rope_scaling(file: &GgufFile, a: &str) -> Result<RopeScaling, GgufError> {
    let ty_key = format!("{a}.rope.scaling.type");
    let factor_key = format!("{a}.rope.scaling.factor");
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(GgufError::tensor(
            file.path(),
            "rope_freqs.weight",
            "per-frequency RoPE factors (llama3 scaling) are not supported",
        ));
    }
    let ty = match file.get(&ty_key) {
        None => None,
        Some(_) => Some(str_key(file, &ty_key)?),
    };
    let legacy = opt_f64(file, &format!("{a}.rope.scale_linear"))?;
    match (ty, legacy) {
        (Some("none"), _) | (None, None) => Ok(RopeScaling::Default),
        (None, Some(factor)) => Ok(RopeScaling::Linear { factor }),
        (Some("linear"), _) => {
            let factor = opt_f64(file, &factor_key)?
                .ok_or_else(|| GgufError::metadata(file.path(), &factor_key, "missing"))?;
            Ok(RopeScaling::Linear { factor })
        }
        (Some(other), _) => Err(GgufError::metadata(
            file.path(),
            &ty_key,
            format!("RoPE scaling `{other}` is not supported (none, linear)"),
        )),
    }
}

/// eos, bos and pad from the tokenizer metadata, as `generation_config.json` would hold them.
pub fn generation_config(file: &GgufFile, cfg: &ModelConfig) -> GenerationConfig {
    let mut eos = cfg.eos_token_ids.clone();
    // llama.cpp also stops at the end-of-turn token when the file names one.
    if let Some(eot) = token_id(file, "tokenizer.ggml.eot_token_id")
        && !eos.contains(&eot)
    {
        eos.push(eot);
    }
    GenerationConfig {
        eos_token_ids: eos,
        pad_token_id: cfg.pad_token_id,
        bos_token_id: cfg.bos_token_id,
        ..GenerationConfig::default()
    }
}

/// Which per-head row permutation a tensor needs undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permute {
    None,
    Heads(usize),
}

/// The Hugging Face name of a llama.cpp tensor name, and the permutation to undo.
pub(crate) fn hf_name(name: &str, cfg: &ModelConfig) -> Option<(String, Permute)> {
    let permuted = cfg.architecture == Architecture::Llama;
    match name {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), Permute::None)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), Permute::None)),
        "output.weight" => return Some(("lm_head.weight".into(), Permute::None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= cfg.num_hidden_layers {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let heads = |n: usize| {
        if permuted {
            Permute::Heads(n)
        } else {
            Permute::None
        }
    };
    let (hf, perm) = match module {
        "attn_norm" => ("input_layernorm", Permute::None),
        "ffn_norm" => ("post_attention_layernorm", Permute::None),
        "attn_q" => ("self_attn.q_proj", heads(cfg.num_attention_heads)),
        "attn_k" => ("self_attn.k_proj", heads(cfg.num_key_value_heads)),
        "attn_v" => ("self_attn.v_proj", Permute::None),
        "attn_output" => ("self_attn.o_proj", Permute::None),
        "ffn_gate" => ("mlp.gate_proj", Permute::None),
        "ffn_up" => ("mlp.up_proj", Permute::None),
        "ffn_down" => ("mlp.down_proj", Permute::None),
        _ => return None,
    };
    if suffix == "bias" && matches!(hf, "input_layernorm" | "post_attention_layernorm") {
        return None;
    }
    Some((format!("model.layers.{layer}.{hf}.{suffix}"), perm))
}

/// Undoes llama.cpp's per-head Q/K row permutation of a `[rows, cols]` tensor (a bias is
/// `cols = 1`): Hugging Face row `h·d + j·d/2 + i` is GGUF row `h·d + 2i + j`.
pub fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(values, rows, cols, heads, gguf_row_in_head)
}

/// Within a head of `2·half` rows: Hugging Face row `k = j·half + i` is GGUF row `2i + j`.
fn gguf_row_in_head(k: usize, half: usize) -> usize {
    2 * (k % half) + k / half
}

/// The GGUF row that holds Hugging Face row `r` of a `rows`-row Q/K tensor of `heads` heads
/// ([`unpermute_rows`] moves whole rows this way; rows past the last full head pair stay).
pub(crate) fn unpermuted_source_row(r: usize, rows: usize, heads: usize) -> usize {
    let d = rows.checked_div(heads).unwrap_or(0);
    let half = d / 2;
    if half == 0 || r >= heads * d || r % d >= 2 * half {
        return r;
    }
    (r / d) * d + gguf_row_in_head(r % d, half)
}

/// llama.cpp's converter permutation (the inverse of [`unpermute_rows`]): GGUF row
/// `h·d + 2i + j` takes Hugging Face row `h·d + j·d/2 + i`.
pub fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    // Within a head: row `2i + j` comes from row `j·d/2 + i`.
    move_rows(values, rows, cols, heads, |k, half| (k % 2) * half + k / 2)
}

/// Row `h·d + k` of the result is row `h·d + src(k, d/2)` of `values`, for the first
/// `2·(d/2)` rows of each of the `heads` heads of `d = rows / heads` rows; any other row
/// (and a row `values` does not have) stays zero.
fn move_rows(
    values: &[f32],
    rows: usize,
    cols: usize,
    heads: usize,
    src: impl Fn(usize, usize) -> usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; values.len()];
    let d = rows.checked_div(heads).unwrap_or(0);
    let half = d / 2;
    if half == 0 || cols == 0 {
        return out;
    }
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        let (h, k) = (r / d, r % d);
        if h >= heads || k >= 2 * half {
            continue;
        }
        let s = h * d + src(k, half);
        let from = s
            .checked_mul(cols)
            .and_then(|a| values.get(a..a.checked_add(cols)?));
        if let Some(from) = from {
            row.copy_from_slice(from);
        }
    }
    out
}

fn hf_tensor(file: &GgufFile, info: &TensorInfo, perm: Permute) -> Result<HostTensor, GgufError> {
    let (shape, values) = file.tensor_f32(info)?;
    let values = match perm {
        Permute::None => values,
        Permute::Heads(heads) => {
            let (rows, cols) = match shape.split_first() {
                Some((&rows, rest)) => (rows, rest.iter().product::<usize>()),
                None => (0, 0),
            };
            if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
                return Err(GgufError::tensor(
                    file.path(),
                    &info.name,
                    format!("{rows} rows do not split into {heads} heads of even width"),
                ));
            }
            unpermute_rows(&values, rows, cols, heads)
        }
    };
    Ok(HostTensor { shape, values })
}

/// Every tensor under its Hugging Face name, dequantized only when read (names, types and
/// bounds are checked now), so building a model never holds the whole file in f32.
pub fn lazy_tensors(
    file: Arc<GgufFile>,
    cfg: &ModelConfig,
) -> Result<HashMap<String, LazyTensor>, GgufError> {
    let mut out = HashMap::with_capacity(file.tensors.len());
    for (index, info) in file.tensors.iter().enumerate() {
        file.ggml_type(info)?;
        let Some((hf, perm)) = hf_name(&info.name, cfg) else {
            return Err(unknown_tensor(&file, info, cfg));
        };
        let f = Arc::clone(&file);
        let load = move || -> Result<Vec<f32>, crate::error::ModelError> {
            let info = f.tensors.get(index).ok_or_else(|| {
                GgufError::tensor(f.path(), &format!("#{index}"), "no such tensor")
            })?;
            Ok(hf_tensor(&f, info, perm)?.values)
        };
        out.insert(
            hf,
            LazyTensor {
                shape: info.shape(),
                load: Box::new(load),
            },
        );
    }
    Ok(out)
}

fn unknown_tensor(file: &GgufFile, info: &TensorInfo, cfg: &ModelConfig) -> GgufError {
    GgufError::tensor(
        file.path(),
        &info.name,
        format!(
            "not a tensor of the {} architecture Tributary implements",
            cfg.architecture.model_type()
        ),
    )
}

/// Every tensor, dequantized, under its Hugging Face name. A tensor this mapping does not
/// know is an error naming it (nothing is silently dropped).
pub fn hf_tensors(
    file: &GgufFile,
    cfg: &ModelConfig,
) -> Result<HashMap<String, HostTensor>, GgufError> {
    let mut out = HashMap::with_capacity(file.tensors.len());
    for info in &file.tensors {
        // Check every type before the expensive work, so the error names the first bad one.
        file.ggml_type(info)?;
    }
    for info in &file.tensors {
        let Some((hf, perm)) = hf_name(&info.name, cfg) else {
            return Err(unknown_tensor(file, info, cfg));
        };
        out.insert(hf, hf_tensor(file, info, perm)?);
    }
    Ok(out)
}
