//! safetensors IO: single-file and sharded checkpoints, f32/f16/bf16, clear errors naming the tensor.
//!
//! [`TensorStore`] reads every file of a checkpoint once and hands out tensors by name,
//! upcast to f32 and checked against the shape the model expects. [`save_f32`] writes
//! f32 tensors in the same format (used for adapters, optimizer state and merged exports).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorInfo, View};

use crate::error::ModelError;

/// One tensor's place in the store.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    info: TensorInfo,
}

/// The tensors of one or more safetensors files, addressable by name.
#[derive(Debug)]
pub struct TensorStore {
    /// (path, whole file bytes, offset of the data section).
    files: Vec<(PathBuf, Vec<u8>, usize)>,
    entries: HashMap<String, Entry>,
    /// Tensors decoded on demand (a GGUF file dequantized tensor by tensor).
    host: HashMap<String, LazyTensor>,
    location: String,
}

/// Decodes one tensor's f32 values when called.
pub type TensorLoader = Box<dyn Fn() -> Result<Vec<f32>, ModelError> + Send + Sync>;

/// A tensor decoded to f32 only when asked for, so a quantized checkpoint (GGUF) is never
/// held in f32 all at once while a model is built from it.
pub struct LazyTensor {
    /// Its row-major shape.
    pub shape: Vec<usize>,
    /// Produces its values.
    pub load: TensorLoader,
}

impl std::fmt::Debug for LazyTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTensor")
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl TensorStore {
    /// Opens a checkpoint directory: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn open_checkpoint(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            return Self::open_files(&[single], &dir.display().to_string());
        }
        if !index.exists() {
            return Err(ModelError::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither model.safetensors nor model.safetensors.index.json exists",
                ),
            ));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::json(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                ModelError::config(
                    index.display().to_string(),
                    "weight_map",
                    "missing or not an object",
                )
            })?;
        let mut shards: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                ModelError::config(
                    index.display().to_string(),
                    format!("weight_map.{name}"),
                    "not a file name",
                )
            })?;
            if !shards.iter().any(|s| s == file) {
                shards.push(file.to_string());
            }
        }
        shards.sort();
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        Self::open_files(&paths, &dir.display().to_string())
    }

    /// Opens one safetensors file.
    pub fn open_file(path: &Path) -> Result<Self, ModelError> {
        Self::open_files(&[path.to_path_buf()], &path.display().to_string())
    }

    fn open_files(paths: &[PathBuf], location: &str) -> Result<Self, ModelError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (idx, path) in paths.iter().enumerate() {
            let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
                    ModelError::Safetensors {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
            for (name, info) in meta.tensors() {
                entries.insert(
                    name,
                    Entry {
                        file: idx,
                        info: info.clone(),
                    },
                );
            }
            files.push((path.clone(), bytes, 8 + header_len));
        }
        Ok(Self {
            files,
            entries,
            host: HashMap::new(),
            location: location.to_string(),
        })
    }

    /// A store over tensors already in memory as f32; `location` names where they came
    /// from in errors.
    pub fn from_host(tensors: HashMap<String, HostTensor>, location: &str) -> Self {
        let lazy = tensors
            .into_iter()
            .map(|(name, t)| {
                let shape = t.shape.clone();
                let load: TensorLoader = Box::new(move || Ok(t.values.clone()));
                (name, LazyTensor { shape, load })
            })
            .collect();
        Self::from_lazy(lazy, location)
    }

    /// A store over tensors decoded on demand (for example a GGUF file's, dequantized
    /// under Hugging Face names); `location` names where they came from in errors.
    pub fn from_lazy(tensors: HashMap<String, LazyTensor>, location: &str) -> Self {
        Self {
            files: Vec::new(),
            entries: HashMap::new(),
            host: tensors,
            location: location.to_string(),
        }
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .entries
            .keys()
            .chain(self.host.keys())
            .cloned()
            .collect();
        n.sort();
        n
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name) || self.host.contains_key(name)
    }

    /// A tensor's shape, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(t) = self.host.get(name) {
            return Some(t.shape.clone());
        }
        self.entries.get(name).map(|e| e.info.shape.clone())
    }

    /// The index entry for `name`, or an error naming the tensor and where it was looked for.
    fn entry(&self, name: &str) -> Result<&Entry, ModelError> {
        self.entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                location: self.location.clone(),
            })
    }

    /// A tensor's values as f32 (f16, bf16 and f64 are converted), with its shape.
    pub fn get_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        if let Some(t) = self.host.get(name) {
            return Ok((t.shape.clone(), (t.load)()?));
        }
        let entry = self.entry(name)?;
        let (path, bytes, base) = &self.files[entry.file];
        let (start, end) = entry.info.data_offsets;
        let raw = bytes
            .get(base + start..base + end)
            .ok_or_else(|| ModelError::Safetensors {
                path: path.clone(),
                reason: format!("tensor `{name}` lies outside the file"),
            })?;
        let values = decode_f32(raw, entry.info.dtype, name)?;
        let numel: usize = entry.info.shape.iter().product();
        if values.len() != numel {
            return Err(ModelError::Safetensors {
                path: path.clone(),
                reason: format!(
                    "tensor `{name}` has {} values for shape {:?}",
                    values.len(),
                    entry.info.shape
                ),
            });
        }
        Ok((entry.info.shape.clone(), values))
    }

    /// A tensor as an f32 burn tensor on `device`, checked against `expected` shape.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, ModelError> {
        let (shape, values) = self.get_f32(name)?;
        if shape.as_slice() != expected.as_slice() {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(Tensor::from_data(TensorData::new(values, expected), device))
    }

    /// A matrix stored as `[rows, cols]` in the file, returned transposed (`[cols, rows]`,
    /// contiguous) on `device`: the layout `x·W` wants, which burn multiplies much faster
    /// than a transposed view when `x` has few rows (decoding).
    pub fn tensor_transposed(
        &self,
        name: &str,
        expected: [usize; 2],
        device: &Device,
    ) -> Result<Tensor<2>, ModelError> {
        let (shape, values) = self.get_f32(name)?;
        if shape.as_slice() != expected.as_slice() {
            return Err(ModelError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        let [rows, cols] = expected;
        Ok(Tensor::from_data(
            TensorData::new(transpose(&values, rows, cols), [cols, rows]),
            device,
        ))
    }

    /// An integer tensor's values as i64 (I64, I32, U32, U8 are accepted), with its shape.
    pub fn get_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>), ModelError> {
        let entry = self.entry(name)?;
        let (_, bytes, base) = &self.files[entry.file];
        let (start, end) = entry.info.data_offsets;
        let raw = bytes.get(base + start..base + end).unwrap_or(&[]);
        let values: Vec<i64> = match entry.info.dtype {
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::U32 => raw
                .chunks_exact(4)
                .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::U8 => raw.iter().map(|&b| i64::from(b)).collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok((entry.info.shape.clone(), values))
    }

    /// Where the tensors came from (for messages).
    pub fn location(&self) -> &str {
        &self.location
    }
}

/// Row-major `[rows, cols]` → row-major `[cols, rows]`, in cache-friendly blocks.
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 32;
    let mut out = vec![0.0f32; v.len()];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = v[r * cols + c];
                }
            }
        }
    }
    out
}

fn decode_f32(raw: &[u8], dtype: Dtype, name: &str) -> Result<Vec<f32>, ModelError> {
    Ok(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(ModelError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

/// An f32 tensor held on the host, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

impl HostTensor {
    /// Reads a burn tensor back to the host; `name` is used in errors.
    pub fn from_tensor<const D: usize>(t: &Tensor<D>, name: &str) -> Result<Self, ModelError> {
        let shape = t.dims().to_vec();
        let values = read_f32(t, name)?;
        Ok(Self { shape, values })
    }

    /// The tensor on `device`.
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Result<Tensor<D>, ModelError> {
        let shape: [usize; D] = self.shape.as_slice().try_into().map_err(|_| {
            ModelError::Input(format!(
                "host tensor of rank {} used as rank {D}",
                self.shape.len()
            ))
        })?;
        Ok(Tensor::from_data(
            TensorData::new(self.values.clone(), shape),
            device,
        ))
    }
}

/// Reads an f32 tensor's values back from its device; `name` is used in errors.
pub fn read_f32<const D: usize>(t: &Tensor<D>, name: &str) -> Result<Vec<f32>, ModelError> {
    t.try_to_vec_as::<f32>().map_err(|e| ModelError::Readback {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

struct F32View<'a> {
    shape: &'a [usize],
    values: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut out = Vec::with_capacity(self.values.len() * 4);
        for v in self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

/// Writes f32 tensors to a safetensors file (atomically: a temporary file then a rename),
/// with `{"format": "pt"}` metadata as PyTorch writers do.
pub fn save_f32(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<(), ModelError> {
    let views: Vec<(String, F32View<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                F32View {
                    shape: &t.shape,
                    values: &t.values,
                },
            )
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
