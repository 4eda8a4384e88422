//! safetensors IO: single-file and sharded checkpoints, f32/f16/bf16, clear errors naming the tensor.
//!
//! [`TensorStore`] reads every file of a checkpoint once and hands out tensors by name,
//! upcast to f32 and checked against the shape the model expects. [`save_f32`] writes
//! f32 tensors in the same format (used for adapters, optimizer state and merged exports).
//!
//! Checkpoint and adapter files are untrusted: the `safetensors` crate validates the
//! header (offsets contiguous, shape × dtype = bytes, with checked arithmetic); every
//! access here is checked again (`get`, `checked_add`, `as_chunks`), with errors naming
//! the file and tensor. The lint below keeps it so.
#![deny(clippy::indexing_slicing)]

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

    /// A tensor's bytes, checked to lie inside its file, with the file's path.
    fn raw(&self, name: &str) -> Result<(&Entry, &Path, &[u8]), ModelError> {
        let entry = self.entry(name)?;
        let Some((path, bytes, base)) = self.files.get(entry.file) else {
            return Err(ModelError::MissingTensor {
                name: name.to_string(),
                location: format!(
                    "{} (file #{} of {})",
                    self.location,
                    entry.file,
                    self.files.len()
                ),
            });
        };
        let (start, end) = entry.info.data_offsets;
        let raw = base
            .checked_add(start)
            .zip(base.checked_add(end))
            .and_then(|(a, b)| bytes.get(a..b))
            .ok_or_else(|| ModelError::Safetensors {
                path: path.clone(),
                reason: format!(
                    "tensor `{name}`: data offsets {start}..{end} (after a {base}-byte header) \
                     lie outside the file of {} bytes",
                    bytes.len()
                ),
            })?;
        Ok((entry, path, raw))
    }

    /// A tensor's values as f32 (f16, bf16 and f64 are converted), with its shape.
    pub fn get_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        if let Some(t) = self.host.get(name) {
            return Ok((t.shape.clone(), (t.load)()?));
        }
        let (entry, path, raw) = self.raw(name)?;
        let values = decode_f32(raw, entry.info.dtype, name)?;
        check_numel(path, name, &entry.info.shape, values.len())?;
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
        let (entry, path, raw) = self.raw(name)?;
        let values: Vec<i64> = match entry.info.dtype {
            Dtype::I64 => le::<8>(raw).map(i64::from_le_bytes).collect(),
            Dtype::I32 => le::<4>(raw)
                .map(|c| i64::from(i32::from_le_bytes(c)))
                .collect(),
            Dtype::U32 => le::<4>(raw)
                .map(|c| i64::from(u32::from_le_bytes(c)))
                .collect(),
            Dtype::U8 => raw.iter().map(|&b| i64::from(b)).collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        check_numel(path, name, &entry.info.shape, values.len())?;
        Ok((entry.info.shape.clone(), values))
    }

    /// Where the tensors came from (for messages).
    pub fn location(&self) -> &str {
        &self.location
    }
}

/// Row-major `[rows, cols]` → row-major `[cols, rows]`, in cache-friendly blocks
/// (`v` holds `rows × cols` values; positions outside a shorter `v` stay zero).
pub fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 32;
    let mut out = vec![0.0f32; v.len()];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    if let (Some(o), Some(&x)) = (out.get_mut(c * rows + r), v.get(r * cols + c)) {
                        *o = x;
                    }
                }
            }
        }
    }
    out
}

/// The little-endian `N`-byte words of `raw` (a trailing partial word is left out; the
/// element count is checked against the shape afterwards).
fn le<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.as_chunks::<N>().0.iter().copied()
}

/// The element count of `shape` (overflow checked) must be the number of values decoded.
fn check_numel(path: &Path, name: &str, shape: &[usize], values: usize) -> Result<(), ModelError> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if numel == Some(values) {
        return Ok(());
    }
    Err(ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: match numel {
            Some(n) => format!("tensor `{name}` has {values} values for shape {shape:?} ({n})"),
            None => format!("tensor `{name}`: shape {shape:?} overflows an element count"),
        },
    })
}

fn decode_f32(raw: &[u8], dtype: Dtype, name: &str) -> Result<Vec<f32>, ModelError> {
    Ok(match dtype {
        Dtype::F32 => le::<4>(raw).map(f32::from_le_bytes).collect(),
        Dtype::F16 => le::<2>(raw)
            .map(|c| half::f16::from_le_bytes(c).to_f32())
            .collect(),
        Dtype::BF16 => le::<2>(raw)
            .map(|c| half::bf16::from_le_bytes(c).to_f32())
            .collect(),
        Dtype::F64 => le::<8>(raw).map(|c| f64::from_le_bytes(c) as f32).collect(),
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
