//! The token embedding, and the output head when the checkpoint ties it to the embedding.
//!
//! A tied lm_head is the embedding matrix `E` `[vocab, hidden]` itself: logits are `x·Eᵀ`.
//! No transposed or second copy is made: the f32 table is multiplied through a transposed
//! view (burn-flex's GEMM reads it with strides), and an NF4 table ([`TokenEmbedding::Nf4`],
//! an NF4 run's embedding) is multiplied a chunk of [`HEAD_CHUNK_ROWS`] vocabulary rows at a
//! time, each chunk dequantized for its product only, in the forward pass and again in the
//! backward pass (`dX = dZ·E`), as QLoRA treats its frozen projections. A lookup dequantizes
//! only the rows it gathers.
//!
//! Why NF4 and not bf16 for an NF4 run's table: SmolLM2's embedding (28.3 M parameters) is
//! 113 MB in f32, 57 MB in bf16 and 16 MB in NF4. With bf16 the base would stay above 0.2×
//! its f32 bytes (projections 60 MB + 57 MB of 538 MB = 0.22×), NF4 brings it to 0.14×; the
//! quality cost is measured in `docs/benchmarks.md` (QLoRA on SmolLM2).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Flex, Shape, Slice, TensorMetadata};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::HOST_KERNEL_MAX_ROWS;
use crate::error::ModelError;
use crate::fused::{dense_f32, tensor_of, values};
use crate::kernels::buffers::par_zeroed;
use crate::quant::Nf4Matrix;
use crate::weights::read_f32;

/// Vocabulary rows dequantized per product of an NF4 head (576 × 2048 × 4 bytes = 4.7 MB of
/// f32 for SmolLM2, instead of the whole 113 MB table).
pub const HEAD_CHUNK_ROWS: usize = 2048;

/// The token embedding `[vocab, hidden]`. (A model holds one: boxing the dense tensor to
/// shrink the enum would buy nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum TokenEmbedding {
    /// f32 on the model's device.
    Dense(Tensor<2>),
    /// NF4 in host memory (the embedding of a model loaded with
    /// [`super::CausalLm::load_nf4`]); rows are dequantized when gathered.
    Nf4(Arc<Nf4Matrix>),
}

impl TokenEmbedding {
    /// `[vocab, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            TokenEmbedding::Dense(t) => t.dims(),
            TokenEmbedding::Nf4(q) => q.shape(),
        }
    }

    /// Bytes held by the table (f32 values, or NF4 codes and scales).
    pub fn resident_bytes(&self) -> usize {
        match self {
            TokenEmbedding::Dense(t) => t.shape().num_elements() * std::mem::size_of::<f32>(),
            TokenEmbedding::Nf4(q) => q.resident_bytes(),
        }
    }

    /// The table as f32 values, row-major `[vocab, hidden]` (dequantized for NF4).
    pub fn values(&self) -> Result<Vec<f32>, ModelError> {
        match self {
            TokenEmbedding::Dense(t) => read_f32(t, "model.embed_tokens.weight"),
            TokenEmbedding::Nf4(q) => Ok(q.dequantize()),
        }
    }

    /// The table as an f32 tensor on `device` (a dequantized copy for NF4).
    pub fn dense(&self, device: &Device) -> Tensor<2> {
        match self {
            TokenEmbedding::Dense(t) => t.clone(),
            TokenEmbedding::Nf4(q) => q.dequantize_tensor(device),
        }
    }

    /// Whether the table is an autodiff tensor (an NF4 table is host memory: no).
    pub fn is_autodiff(&self) -> bool {
        match self {
            TokenEmbedding::Dense(t) => t.is_autodiff(),
            TokenEmbedding::Nf4(_) => false,
        }
    }

    /// Applies `f` to a dense table (moving it to the autodiff device and back).
    pub(crate) fn map_dense(&mut self, f: impl Fn(Tensor<2>) -> Tensor<2>) {
        if let TokenEmbedding::Dense(t) = self {
            *t = f(t.clone());
        }
    }

    /// The rows of `ids` `[n]`: `[n, hidden]` on `device` (untracked: the table is frozen).
    pub fn gather(&self, ids: Tensor<1, Int>, device: &Device) -> Result<Tensor<2>, ModelError> {
        match self {
            TokenEmbedding::Dense(t) => Ok(t.clone().select(0, ids)),
            TokenEmbedding::Nf4(q) => {
                let [vocab, h] = q.shape();
                let ids: Vec<i64> = ids.into_data().iter::<i64>().collect();
                let scales = q.f32_scales();
                let mut out = Vec::with_capacity(ids.len() * h);
                for &id in &ids {
                    let row = usize::try_from(id)
                        .ok()
                        .filter(|&r| r < vocab)
                        .ok_or_else(|| {
                            ModelError::Input(format!(
                                "token id {id} is outside the vocabulary ({vocab})"
                            ))
                        })?;
                    out.extend(q.dequantize_rows_with(&scales, row..row + 1));
                }
                Ok(Tensor::from_data(
                    TensorData::new(out, [ids.len(), h]),
                    device,
                ))
            }
        }
    }

    /// Logits `x·Eᵀ` `[m, vocab]` for `x` `[m, hidden]` (the tied lm_head). Under autodiff
    /// on burn-flex an NF4 table registers its own backward step (see the module docs).
    pub fn head_forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            // Few untracked rows (decoding): `(E·xᵀ)ᵀ` streams E's rows contiguously.
            TokenEmbedding::Dense(t) if !x.is_autodiff() && x.dims()[0] <= HOST_KERNEL_MAX_ROWS => {
                t.clone().matmul(x.transpose()).transpose()
            }
            TokenEmbedding::Dense(t) => x.matmul(t.clone().transpose()),
            TokenEmbedding::Nf4(q) => {
                if let Some(y) = nf4_head_tracked(q, &x) {
                    return y;
                }
                let [m, _] = x.dims();
                let vocab = q.shape()[0];
                let device = x.device();
                let y = match x.clone().try_into_primitive::<Flex>() {
                    Ok(flex) => nf4_head_values(q, dense_f32(flex), m),
                    Err(_) => {
                        let xs = read_f32(&x, "hidden").unwrap_or_default();
                        let h = q.shape()[1];
                        if xs.len() == m * h {
                            nf4_head_values(q, tensor_of(xs, Shape::new([m, h])), m)
                        } else {
                            vec![f32::NAN; m * vocab]
                        }
                    }
                };
                Tensor::from_data(TensorData::new(y, [m, vocab]), &device)
            }
        }
    }
}

/// `x·Eᵀ` `[m, vocab]` row-major for a dense flex `x` `[m, hidden]`, one chunk of
/// [`HEAD_CHUNK_ROWS`] vocabulary rows dequantized at a time.
fn nf4_head_values(q: &Nf4Matrix, x: FlexTensor, m: usize) -> Vec<f32> {
    let [vocab, h] = q.shape();
    let scales = q.f32_scales();
    let mut out = par_zeroed(m * vocab);
    let mut v0 = 0;
    while v0 < vocab {
        let v1 = (v0 + HEAD_CHUNK_ROWS).min(vocab);
        let cv = v1 - v0;
        let e = tensor_of(q.dequantize_rows_with(&scales, v0..v1), Shape::new([cv, h]));
        let y = dense_f32(Flex::float_matmul(x.clone(), Flex::float_transpose(e)));
        for (dst, src) in out.chunks_mut(vocab).zip(values(&y).chunks(cv)) {
            if let Some(d) = dst.get_mut(v0..v1) {
                d.copy_from_slice(src);
            }
        }
        v0 = v1;
    }
    out
}

/// The autodiff step of the NF4 head: one parent (`x`), the shared table as state.
#[derive(Debug)]
struct Nf4HeadBackward;

impl Backward<Flex, 1> for Nf4HeadBackward {
    type State = Arc<Nf4Matrix>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let q = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            // dX = dZ·E, summed over chunks of vocabulary rows.
            let [vocab, h] = q.shape();
            let dz = dense_f32(grad);
            let m = dz.shape().num_elements() / vocab.max(1);
            let scales = q.f32_scales();
            let mut dx: Option<FlexTensor> = None;
            let mut v0 = 0;
            while v0 < vocab {
                let v1 = (v0 + HEAD_CHUNK_ROWS).min(vocab);
                let e = tensor_of(
                    q.dequantize_rows_with(&scales, v0..v1),
                    Shape::new([v1 - v0, h]),
                );
                let dz_c = Flex::float_slice(dz.clone(), &[Slice::from(0..m), Slice::from(v0..v1)]);
                let part = Flex::float_matmul(dz_c, e);
                dx = Some(match dx {
                    Some(acc) => Flex::float_add(acc, part),
                    None => part,
                });
                v0 = v1;
            }
            dx.unwrap_or_else(|| tensor_of(vec![0.0; m * h], Shape::new([m, h])))
        });
    }
}

/// The NF4 head for an autodiff `x` on burn-flex; `None` elsewhere.
fn nf4_head_tracked(q: &Arc<Nf4Matrix>, x: &Tensor<2>) -> Option<Tensor<2>> {
    crate::fused::lift(Nf4HeadBackward, [x], |[x]| {
        let x = dense_f32(x);
        let [vocab, h] = q.shape();
        let n = x.shape().num_elements();
        if h == 0 || !n.is_multiple_of(h) {
            return None;
        }
        let m = n / h;
        let y = nf4_head_values(q, x, m);
        Some((tensor_of(y, Shape::new([m, vocab])), Arc::clone(q)))
    })
}
