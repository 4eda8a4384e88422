//! GGUF, llama.cpp's model file, as an input: every quantized format Tributary reads sits
//! here, below the kernels (the model is dequantized to f32 as it loads; NF4/bf16 storage
//! is then chosen as for any checkpoint).
//!
//! - [`reader`]: the container (v2/v3): metadata, tensor infos, alignment.
//! - [`dequant`]: ggml's types to f32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K).
//! - [`mapping`]: llama.cpp's metadata and tensor names to [`crate::config::ModelConfig`]
//!   and Hugging Face's names, undoing the converter's Q/K row permutation.
//! - [`tokenizer`]: `tokenizer.ggml.*` as a Hugging Face `tokenizer.json` (for the
//!   `tokenizers` crate) and `tokenizer_config.json` with the chat template.
//! - [`import`]: a GGUF file written out as a Hugging Face checkpoint directory.
//! - [`writer`], [`lora_export`]: LoRA adapters written as GGUF LoRA adapters for llama.cpp.
//!
//! Anywhere a model directory is accepted, a `.gguf` file is too ([`is_gguf`]).

pub mod dequant;
pub mod import;
pub mod lora_export;
pub mod mapping;
pub mod reader;
pub mod tokenizer;
pub mod writer;

use std::path::{Path, PathBuf};

pub use reader::{GgufFile, TensorInfo, Value};

/// Whether `path` names a GGUF file (a file ending in `.gguf`, or any file starting with
/// the GGUF magic) rather than a model directory.
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Everything that can go wrong reading a GGUF file; each names the file and the key or
/// tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a GGUF file this reader understands.
    #[error("{path}: not a readable GGUF file: {reason}")]
    Format { path: PathBuf, reason: String },
    /// A metadata key is missing or has the wrong type or value.
    #[error("{path}: metadata `{key}`: {reason}")]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A tensor's type cannot be dequantized.
    #[error(
        "{path}: tensor `{tensor}` has type {ty}, which Tributary cannot read (supported: {})",
        dequant::SUPPORTED
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: String,
    },
    /// A tensor is malformed, unexpected or missing.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// `general.architecture` names a model family Tributary does not implement.
    #[error("{path}: architecture `{arch}` is not supported (supported: llama, qwen2)")]
    UnsupportedArchitecture { path: PathBuf, arch: String },
}

impl GgufError {
    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn metadata(path: &Path, key: &str, reason: impl Into<String>) -> Self {
        Self::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, reason: impl Into<String>) -> Self {
        Self::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests;
