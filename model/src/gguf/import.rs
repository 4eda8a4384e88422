//! A GGUF file written out as a Hugging Face checkpoint directory: `config.json`,
//! `generation_config.json`, `model.safetensors` (f32 or bf16), `tokenizer.json` and
//! `tokenizer_config.json` (with the chat template), which transformers loads and which
//! every Tributary command takes as `--model DIR`.
//!
//! The directory is written under a temporary name beside `out` and renamed into place
//! when complete, so a failed import leaves nothing half-written behind.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};

use super::mapping;
use super::reader::GgufFile;
use super::tokenizer::tokenizer_files;
use crate::error::ModelError;
use crate::source::model_tensor_names;
use crate::weights::HostTensor;

/// The dtype of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportDtype {
    /// The dequantized values exactly (same canonical digest as the GGUF file).
    F32,
    /// Rounded to bfloat16 (half the bytes; a different base digest).
    Bf16,
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The directory written.
    pub out: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Values written.
    pub parameters: usize,
    /// Bytes of `model.safetensors`.
    pub weight_bytes: u64,
    /// The architecture transformers will load.
    pub architecture: String,
}

struct Raw<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl View for &Raw<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(t: &HostTensor, dtype: ImportDtype) -> Raw<'_> {
    let (dtype, bytes) = match dtype {
        ImportDtype::F32 => (
            Dtype::F32,
            t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        ImportDtype::Bf16 => (
            Dtype::BF16,
            t.values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    };
    Raw {
        dtype,
        shape: &t.shape,
        bytes,
    }
}

fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<(), ModelError> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::json(&path, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))
}

/// Writes the tokenizer files of a GGUF file (`tokenizer.json`, `tokenizer_config.json`
/// with the chat template) into the existing directory `dir`; returns their names.
pub fn write_tokenizer_files(
    gguf_path: &Path,
    dir: &Path,
) -> Result<Vec<&'static str>, ModelError> {
    let file = GgufFile::open(gguf_path)?;
    let tok = tokenizer_files(&file)?;
    write_json(dir, "tokenizer.json", &tok.tokenizer_json)?;
    write_json(dir, "tokenizer_config.json", &tok.tokenizer_config)?;
    Ok(vec!["tokenizer.json", "tokenizer_config.json"])
}

/// Imports `gguf_path` into the directory `out` (which must not exist yet).
pub fn import(
    gguf_path: &Path,
    out: &Path,
    dtype: ImportDtype,
) -> Result<ImportReport, ModelError> {
    if out.exists() {
        return Err(ModelError::io(
            out,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the output directory already exists; choose a new --out",
            ),
        ));
    }
    let file = GgufFile::open(gguf_path)?;
    let tok = tokenizer_files(&file)?;
    let model = mapping::from_file(&file)?;
    drop(file);
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{file_name}.importing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let result = write_dir(&tmp, &model, &tok, dtype);
    match result {
        Ok(mut report) => {
            std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))?;
            report.out = out.to_path_buf();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_dir(
    dir: &Path,
    model: &mapping::GgufModel,
    tok: &super::tokenizer::TokenizerFiles,
    dtype: ImportDtype,
) -> Result<ImportReport, ModelError> {
    let mut config = model.config.to_json_value();
    if let Some(obj) = config.as_object_mut() {
        let name = match dtype {
            ImportDtype::F32 => "float32",
            ImportDtype::Bf16 => "bfloat16",
        };
        obj.insert("dtype".into(), serde_json::Value::from(name));
        obj.insert("torch_dtype".into(), serde_json::Value::from(name));
    }
    write_json(dir, "config.json", &config)?;
    write_json(
        dir,
        "generation_config.json",
        &model.generation.to_json_value(),
    )?;
    write_json(dir, "tokenizer.json", &tok.tokenizer_json)?;
    write_json(dir, "tokenizer_config.json", &tok.tokenizer_config)?;
    // Only what the decoder reads, so a tied lm_head is not written twice.
    let wanted = model_tensor_names(&model.config);
    let mut encoded: BTreeMap<String, Raw<'_>> = BTreeMap::new();
    let mut parameters = 0;
    for name in &wanted {
        let t = model
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.clone(),
                location: "the GGUF file".into(),
            })?;
        parameters += t.values.len();
        encoded.insert(name.clone(), encode(t, dtype));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let path = dir.join("model.safetensors");
    let views: Vec<(String, &Raw<'_>)> = encoded.iter().map(|(k, v)| (k.clone(), v)).collect();
    safetensors::serialize_to_file(views, Some(meta), &path).map_err(|e| {
        ModelError::Safetensors {
            path: path.clone(),
            reason: e.to_string(),
        }
    })?;
    let weight_bytes = std::fs::metadata(&path)
        .map_err(|e| ModelError::io(&path, e))?
        .len();
    Ok(ImportReport {
        out: dir.to_path_buf(),
        tensors: encoded.len(),
        parameters,
        weight_bytes,
        architecture: model.config.architecture.hf_name().to_string(),
    })
}
