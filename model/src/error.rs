//! The crate's error type: every failure names the file, field or tensor that is wrong.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or training a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a field.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is missing, out of range or unsupported.
    #[error("{file}: field `{field}`: {reason}")]
    Config {
        /// The file (or "config" when built in code).
        file: String,
        /// The field that is wrong.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The checkpoint's architecture is not one Tributary implements.
    #[error("unsupported architecture `{0}` (supported: LlamaForCausalLM, Qwen2ForCausalLM)")]
    UnsupportedArchitecture(String),
    /// A safetensors file is malformed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that the model needs is not in the checkpoint.
    #[error("missing tensor `{name}` in {location}")]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// Where it was looked for.
        location: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has a dtype that cannot be loaded.
    #[error("tensor `{name}`: unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The tensor's name.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// A PEFT adapter uses something Tributary does not support, or does not fit the base.
    #[error("adapter {path}: {reason}")]
    Adapter {
        /// The adapter directory (or file).
        path: PathBuf,
        /// What is unsupported or mismatched.
        reason: String,
    },
    /// Bad input to a forward pass, a training step or another call.
    #[error("invalid input: {0}")]
    Input(String),
    /// A GGUF file could not be read or mapped.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// A tensor could not be read back from the device.
    #[error("reading tensor `{name}` from the device: {reason}")]
    Readback {
        /// Which tensor.
        name: String,
        /// The backend's message.
        reason: String,
    },
}

impl ModelError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A JSON error in `path`.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Self::Json {
            path: path.into(),
            source,
        }
    }

    /// A configuration error in `file` at `field`.
    pub fn config(
        file: impl Into<String>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::Config {
            file: file.into(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An adapter error.
    pub fn adapter(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Adapter {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
