//! A model that multiplies by llama.cpp's block formats: [`CausalLm::use_gguf_blocks`] keeps
//! the projections and lm_head that a GGUF file stores in Q4_1 or Q8_0 in those blocks
//! (`--quantize gguf`), [`CausalLm::quantize_blocks`] quantizes any model's projections to
//! Q4_1 and its lm_head to Q8_0 (`--quantize q4_1`, the mix of PyPI's SmolLM2 file). Both take
//! the int8 kernels ([`crate::kernels::int8`]) with 8-bit activations, as llama.cpp computes
//! them; norms and the embedding lookup stay f32. See [`crate::quant::blocks`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::CausalLm;
use super::linear::LinearWeight;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::gguf::dequant::GgmlType;
use crate::gguf::mapping::{Permute, hf_name, unpermuted_source_row};
use crate::kernels::int8::{Int8Isa, block_matmul_isa};
use crate::kernels::{PackedMatrix, Split};
use crate::lora::TargetModule;
use crate::quant::blocks::{BLOCK, BlockFormat, BlockMatrix};
use crate::weights::transpose;

/// The lm_head in a host kernel's layout, for untracked products.
#[derive(Debug, Clone)]
pub(crate) enum HostHead {
    /// bf16 or f32 packed for the decode kernels (`--dtype bf16|f32-packed`).
    Packed(Arc<PackedMatrix>),
    /// Q8_0 (or Q4_1) blocks of `[vocab, hidden]` (`--quantize gguf|q4_1`).
    Blocks(Arc<BlockMatrix>),
}

impl HostHead {
    /// `x` `[m, hidden]` → logits `[m, vocab]`; `simd` picks the SIMD paths where the CPU has
    /// them.
    pub(crate) fn matmul_with(&self, x: &[f32], m: usize, simd: bool) -> Vec<f32> {
        match self {
            HostHead::Packed(p) => p.matmul_with(x, m, simd),
            HostHead::Blocks(b) => block_matmul_isa(b, x, m, Int8Isa::select(simd), Split::Auto),
        }
    }

    /// Bytes held.
    pub(crate) fn resident_bytes(&self) -> usize {
        match self {
            HostHead::Packed(p) => p.resident_bytes(),
            HostHead::Blocks(b) => b.resident_bytes(),
        }
    }
}

/// What [`CausalLm::use_gguf_blocks`] kept in blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GgufBlocksReport {
    /// Projections now multiplied in their file blocks, by format name.
    pub projections: Vec<(String, usize)>,
    /// The lm_head's format, when it is kept in blocks.
    pub head: Option<String>,
    /// Projections left as loaded (their file type has no int8 kernel).
    pub others: usize,
}

fn block_format(ty: GgmlType) -> Option<BlockFormat> {
    match ty {
        GgmlType::Q4_1 => Some(BlockFormat::Q4_1),
        GgmlType::Q8_0 => Some(BlockFormat::Q8_0),
        _ => None,
    }
}

/// Reads tensor `name`'s blocks from `file` with llama.cpp's Q/K row permutation undone.
fn read_blocks(
    file: &GgufFile,
    name: &str,
    format: BlockFormat,
    perm: Permute,
) -> Result<BlockMatrix, ModelError> {
    let info = file.tensor(name).ok_or_else(|| {
        ModelError::Input(format!("{}: no tensor `{name}`", file.path().display()))
    })?;
    let shape = info.shape();
    let [rows, cols] = shape.as_slice() else {
        return Err(ModelError::Input(format!(
            "{}: tensor `{name}` has shape {shape:?}, not a matrix",
            file.path().display()
        )));
    };
    let (rows, cols) = (*rows, *cols);
    let raw = file.raw(info)?;
    let source = |r: usize| match perm {
        Permute::None => r,
        Permute::Heads(heads) => unpermuted_source_row(r, rows, heads),
    };
    BlockMatrix::from_ggml(format, raw, rows, cols, source)
        .map_err(|e| ModelError::Input(format!("{}: tensor `{name}`: {e}", file.path().display())))
}

impl CausalLm {
    /// Keeps the GGUF file `path`'s Q4_1 and Q8_0 projections and lm_head (a tied one: the
    /// embedding's tensor) in their blocks for every product (llama.cpp's arithmetic, see
    /// [`crate::quant::blocks`]); the model must have been loaded from that file. Tensors in
    /// other types stay as loaded.
    pub fn use_gguf_blocks(&mut self, path: &Path) -> Result<GgufBlocksReport, ModelError> {
        let _span = tracing::info_span!("use_gguf_blocks", path = %path.display()).entered();
        let file = GgufFile::open(path)?;
        self.host_weights = OnceLock::new();
        let mut report = GgufBlocksReport::default();
        let mut count = |format: BlockFormat| match report
            .projections
            .iter_mut()
            .find(|(n, _)| n == format.name())
        {
            Some((_, c)) => *c += 1,
            None => report.projections.push((format.name().to_string(), 1)),
        };
        // Each projection's checkpoint name, once.
        let targets: HashMap<String, (usize, TargetModule)> = (0..self.layers.len())
            .flat_map(|l| TargetModule::ALL.map(|t| (format!("{}.weight", t.path(l)), (l, t))))
            .collect();
        let mut head = None;
        for info in &file.tensors {
            let Some(format) = file.ggml_type(info).ok().and_then(block_format) else {
                continue;
            };
            let Some((hf, perm)) = hf_name(&info.name, &self.cfg) else {
                continue;
            };
            let tied = self.cfg.tie_word_embeddings;
            if hf == "lm_head.weight" || (tied && hf == "model.embed_tokens.weight") {
                head = Some(read_blocks(&file, &info.name, format, perm)?);
                continue;
            }
            let Some(&(l, t)) = targets.get(&hf) else {
                continue;
            };
            let blocks = read_blocks(&file, &info.name, format, perm)?;
            let Some(layer) = self.layers.get_mut(l) else {
                continue;
            };
            let lin = layer.linear_mut(t);
            let [inp, out] = lin.weight_t.dims();
            if blocks.shape() != [out, inp] {
                return Err(ModelError::ShapeMismatch {
                    name: hf,
                    expected: vec![out, inp],
                    found: blocks.shape().to_vec(),
                });
            }
            lin.weight_t = LinearWeight::Blocks(Arc::new(blocks));
            count(format);
        }
        report.others = self.layers.len() * TargetModule::ALL.len()
            - report.projections.iter().map(|(_, c)| c).sum::<usize>();
        if let Some(h) = head {
            let want = [self.cfg.vocab_size, self.cfg.hidden_size];
            if h.shape() != want {
                return Err(ModelError::ShapeMismatch {
                    name: "lm_head.weight".into(),
                    expected: want.to_vec(),
                    found: h.shape().to_vec(),
                });
            }
            report.head = Some(h.format().name().to_string());
            self.head_host = Some(HostHead::Blocks(Arc::new(h)));
        }
        Ok(report)
    }

    /// Quantizes the seven projections of every layer to Q4_1 and the lm_head to Q8_0 (a
    /// tied head: a Q8_0 copy beside the f32 embedding the lookups read), as ggml's reference
    /// quantizers do; products then take the int8 kernels. Projections already in blocks stay,
    /// and so does any whose input width is not a whole number of blocks of 32 (as llama.cpp's
    /// quantizer keeps such tensors in another type). Returns how many were left as they were.
    pub fn quantize_blocks(&mut self) -> Result<usize, ModelError> {
        let _span = tracing::info_span!("quantize_blocks").entered();
        self.host_weights = OnceLock::new();
        let mut kept = 0;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            for t in TargetModule::ALL {
                let lin = layer.linear_mut(t);
                let name = format!("{}.weight", t.path(l));
                let [inp, out] = lin.weight_t.dims();
                if !inp.is_multiple_of(BLOCK) {
                    kept += 1;
                    continue;
                }
                if let LinearWeight::Blocks(_) = lin.weight_t {
                    continue;
                }
                let w = transpose(&lin.weight_t.values_t(&name)?, inp, out);
                let blocks = BlockMatrix::quantize(BlockFormat::Q4_1, &w, out, inp)
                    .map_err(|e| ModelError::Input(format!("{name}: {e}")))?;
                lin.weight_t = LinearWeight::Blocks(Arc::new(blocks));
            }
        }
        let (head_t, [h, v]) = self.head_t_values()?;
        if !h.is_multiple_of(BLOCK) {
            return Ok(kept);
        }
        let head = BlockMatrix::quantize(BlockFormat::Q8_0, &transpose(&head_t, h, v), v, h)
            .map_err(|e| ModelError::Input(format!("lm_head.weight: {e}")))?;
        self.head_host = Some(HostHead::Blocks(Arc::new(head)));
        Ok(kept)
    }
}
