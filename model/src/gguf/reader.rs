//! The GGUF container (versions 2 and 3, little-endian): header, metadata key/values,
//! tensor infos and the aligned data section.
//!
//! Layout (ggml's `gguf.c`): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! key/value count; each key/value is a string key, a `u32` value type and the value; each
//! tensor info is a string name, a `u32` dimension count, that many `u64` dimensions
//! (fastest first), a `u32` ggml type and a `u64` offset into the data section. The data
//! section starts at the first multiple of `general.alignment` (default 32) after the
//! infos, and every tensor's offset is a multiple of it. Version 1 (32-bit counts) is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::GgufError;
use super::dequant::{GgmlType, dequantize};

/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Caps that keep a corrupt header from asking for absurd allocations.
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

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
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
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
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(GgufError::format(
                self.path,
                format!("truncated while reading {what} at byte {}", self.pos),
            ));
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        // Every item takes at least one byte, so a count beyond the bytes left is corrupt.
        let left = (self.bytes.len() - self.pos) as u64;
        if n > MAX_COUNT.max(left) {
            return Err(GgufError::format(
                self.path,
                format!("{what} {n} is larger than the file allows"),
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.bytes.len() - self.pos)
            .ok_or_else(|| {
                GgufError::format(
                    self.path,
                    format!("truncated: {what} is a string of {len} bytes past the end"),
                )
            })?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| GgufError::format(self.path, format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
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
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::metadata(
                        self.path,
                        key,
                        "arrays nested too deep",
                    ));
                }
                let item_ty = self.u32(key)?;
                let n = self.count(key)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
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
        let n_tensors = c.count("the tensor count")?;
        let n_kv = c.count("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&key)?;
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
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{i}"))?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::tensor(
                    path,
                    &name,
                    format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
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
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let data_offset = usize::try_from(data_offset)
            .map_err(|_| GgufError::format(path, "data section offset overflows"))?;
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
        let numel = info.numel();
        let block = ty.block_size() as u64;
        if !numel.is_multiple_of(block) || !info.dims[0].is_multiple_of(block) {
            return Err(GgufError::tensor(
                &self.path,
                &info.name,
                format!(
                    "its rows of {} values are not whole {} blocks of {block}",
                    info.dims[0],
                    ty.name()
                ),
            ));
        }
        let size = numel / block * ty.block_bytes() as u64;
        let start = self.data_offset as u64 + info.offset;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= self.bytes.len() as u64);
        let Some(end) = end else {
            return Err(GgufError::tensor(
                &self.path,
                &info.name,
                format!(
                    "its {size} bytes at offset {} run past the end of the file",
                    info.offset
                ),
            ));
        };
        Ok(&self.bytes[start as usize..end as usize])
    }

    /// A tensor's values as f32 (dequantized), with its row-major shape.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let ty = self.ggml_type(info)?;
        let raw = self.raw(info)?;
        Ok((info.shape(), dequantize(ty, raw)))
    }
}
