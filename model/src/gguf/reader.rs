//! The GGUF container (versions 2 and 3, little-endian): header, metadata key/values,
//! tensor infos and the aligned data section.
//!
//! Layout (ggml's `gguf.c`): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! key/value count; each key/value is a string key, a `u32` value type and the value; each
//! tensor info is a string name, a `u32` dimension count, that many `u64` dimensions
//! (fastest first), a `u32` ggml type and a `u64` offset into the data section. The data
//! section starts at the first multiple of `general.alignment` (default 32) after the
//! infos, and every tensor's offset is a multiple of it. Version 1 (32-bit counts) is refused.
//!
//! The bytes are untrusted: every read is checked (`get`, `checked_add`/`checked_mul`),
//! every count is bounded by the bytes left and by [`MAX_COUNT`] before anything is
//! allocated for it, and every error names the field, the byte offset and the limit.
//! The lint below keeps it that way.
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::GgufError;
use super::dequant::{GgmlType, dequantize};

/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The most items one count (tensors, key/values, one array) may announce: a corrupt
/// header cannot ask for more, whatever the file's size (real files have a few hundred
/// tensors and vocabularies of a few hundred thousand tokens).
pub const MAX_COUNT: u64 = 1 << 24;
/// The most dimensions a tensor may have.
pub const MAX_DIMS: u32 = 4;
/// Items reserved up front for a count; beyond it vectors grow as items actually parse,
/// so a count never turns into an allocation the bytes do not back.
const PREALLOC: u64 = 4096;

/// The fewest bytes one item of a metadata value type takes (a string or array is at
/// least its length prefix), for bounding counts by the bytes left.
fn min_bytes(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// The fewest bytes one key/value takes: a key's length, a type, and a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// The fewest bytes one tensor info takes: a name's length, one dimension, type and offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// An array (all items of one type; arrays of arrays are allowed by the format).
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(u64::from(v)),
            Value::U16(v) => Some(u64::from(v)),
            Value::U32(v) => Some(u64::from(v)),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float (floats, and integers converted).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(f64::from(v)),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(f64::from(v)),
            Value::I16(v) => Some(f64::from(v)),
            Value::I32(v) => Some(f64::from(v)),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as ggml lists them: fastest-varying first (`[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// The ggml type id (see [`GgmlType`]).
    pub type_id: u32,
    /// Byte offset inside the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements, or `None` when the dimensions' product overflows `u64`.
    pub fn numel(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// The shape in row-major order (slowest first), as PyTorch and safetensors list it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file, its bytes held in memory.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// The data section's alignment.
    pub alignment: u64,
    data_offset: usize,
    bytes: Vec<u8>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    /// Bytes not yet read.
    fn left(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end));
        let Some(s) = s else {
            return Err(GgufError::format(
                self.path,
                format!(
                    "truncated while reading {what} at byte {}: {n} bytes needed, {} left",
                    self.pos,
                    self.left()
                ),
            ));
        };
        self.pos = self.pos.saturating_add(n);
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let at = self.pos;
        <[u8; N]>::try_from(self.take(N, what)?).map_err(|_| {
            GgufError::format(self.path, format!("{what} at byte {at}: not {N} bytes"))
        })
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u64` count of items of at least `item_bytes` bytes each: more than
    /// [`MAX_COUNT`], or more than the bytes left can hold, is an error naming both.
    fn count(&mut self, what: &str, item_bytes: u64) -> Result<u64, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let left = self.left();
        let fits = n.checked_mul(item_bytes).is_some_and(|need| need <= left);
        if n > MAX_COUNT || !fits {
            return Err(GgufError::format(
                self.path,
                format!(
                    "truncated or corrupt: {what} at byte {at} is {n}: the limit is {MAX_COUNT}, \
                     and the {left} bytes left hold at most {} items of {item_bytes} bytes",
                    left / item_bytes.max(1)
                ),
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(what)?;
        let left = self.left();
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l as u64 <= left)
            .ok_or_else(|| {
                GgufError::format(
                    self.path,
                    format!(
                        "truncated: {what} at byte {at} is a string of {len} bytes, {left} left"
                    ),
                )
            })?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|e| {
            GgufError::format(
                self.path,
                format!(
                    "{what} at byte {at}: string is not UTF-8 (invalid byte {} of {len})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        let what = &format!("the value of `{key}`");
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.u8(what)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::metadata(
                        self.path,
                        key,
                        format!("bool byte {b} is neither 0 nor 1"),
                    ));
                }
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::metadata(
                        self.path,
                        key,
                        "arrays nested too deep",
                    ));
                }
                let item_ty = self.u32(what)?;
                let n = self.count(&format!("the length of array `{key}`"), min_bytes(item_ty))?;
                let mut items = Vec::with_capacity(n.min(PREALLOC) as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(GgufError::metadata(
                    self.path,
                    key,
                    format!("unknown value type {other}"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Reads and parses a GGUF file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(bytes, path)
    }

    /// Parses GGUF bytes; `path` names them in errors.
    pub fn parse(bytes: Vec<u8>, path: &Path) -> Result<Self, GgufError> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        let magic = c.array::<4>("the magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::format(
                path,
                format!("magic is {magic:?}, expected \"GGUF\""),
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::format(
                path,
                format!("version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = c.count("the tensor count", MIN_TENSOR_INFO_BYTES)?;
        let n_kv = c.count("the metadata count", MIN_KV_BYTES)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("the type of `{key}`"))?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::metadata(path, &key, "key appears twice"));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                GgufError::metadata(path, "general.alignment", "must be a power of two")
            })?,
        };
        let mut tensors = Vec::with_capacity(n_tensors.min(PREALLOC) as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{i}"))?;
            let what = format!("tensor `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::tensor(
                    path,
                    &name,
                    format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let type_id = c.u32(&what)?;
            let offset = c.u64(&what)?;
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::tensor(
                    path,
                    &name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                type_id,
                offset,
            });
        }
        let data_offset = (c.pos as u64)
            .div_ceil(alignment)
            .checked_mul(alignment)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| {
                GgufError::metadata(
                    path,
                    "general.alignment",
                    format!(
                        "aligning the data section (after byte {}) to {alignment} overflows",
                        c.pos
                    ),
                )
            })?;
        let file = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            bytes,
        };
        // Bounds of every tensor Tributary can read; an unsupported type is reported when
        // (and only if) that tensor is asked for, naming it.
        for t in &file.tensors {
            if GgmlType::from_id(t.type_id).is_some() {
                file.raw(t)?;
            }
        }
        Ok(file)
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor's info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's ggml type, or an error naming the tensor and the type id.
    pub fn ggml_type(&self, info: &TensorInfo) -> Result<GgmlType, GgufError> {
        GgmlType::from_id(info.type_id).ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            ty: super::dequant::type_name(info.type_id),
        })
    }

    /// A tensor's raw bytes (checked to lie inside the file and to have the size its type
    /// and shape need).
    pub fn raw(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let ty = self.ggml_type(info)?;
        let bad = |reason: String| GgufError::tensor(&self.path, &info.name, reason);
        let numel = info.numel().ok_or_else(|| {
            bad(format!(
                "dimensions {:?} overflow a 64-bit element count",
                info.dims
            ))
        })?;
        let block = ty.block_size() as u64;
        let row = info.dims.first().copied().unwrap_or(1);
        if !numel.is_multiple_of(block) || !row.is_multiple_of(block) {
            return Err(bad(format!(
                "its rows of {row} values are not whole {} blocks of {block}",
                ty.name()
            )));
        }
        let size = (numel / block)
            .checked_mul(ty.block_bytes() as u64)
            .ok_or_else(|| bad(format!("{numel} {} values overflow a byte size", ty.name())))?;
        let file_len = self.bytes.len() as u64;
        let range = (self.data_offset as u64)
            .checked_add(info.offset)
            .and_then(|start| Some((start, start.checked_add(size)?)))
            .filter(|&(_, end)| end <= file_len)
            .and_then(|(start, end)| {
                let (start, end) = (usize::try_from(start).ok()?, usize::try_from(end).ok()?);
                self.bytes.get(start..end)
            });
        range.ok_or_else(|| {
            bad(format!(
                "its {size} bytes at data offset {} run past the end of the file ({file_len} \
                 bytes, data section from byte {})",
                info.offset, self.data_offset
            ))
        })
    }

    /// A tensor's values as f32 (dequantized), with its row-major shape.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let ty = self.ggml_type(info)?;
        let raw = self.raw(info)?;
        Ok((info.shape(), dequantize(ty, raw)))
    }
}

#[cfg(test)]
mod tests;
