//! Per-example LoRA factors, for per-example gradients from one batched backward pass (the
//! "expanded weights" trick of Opacus and functorch).
//!
//! For a micro-batch of `B` rows, every adapted module gets its own copy of `A` per row,
//! `[B, r, in]`, and of `B`, `[B, out, r]`, each a leaf of the autodiff graph filled with
//! the shared weight. The delta of row `i` is `x_i·A_iᵀ·B_iᵀ·scale`, two batched matmuls
//! with the same multiply-adds as the shared product `x·Aᵀ·Bᵀ·scale` over all rows. Since
//! row `i`'s activations only meet row `i`'s copies, the gradient of the summed loss with
//! respect to `A_i` and `B_i` is exactly the gradient of row `i`'s summed loss with respect
//! to the shared `A` and `B`; their sum over rows is the batch gradient.
//!
//! Used only by the attribution featurizer ([`crate::features`]): ordinary training keeps
//! the shared factors ([`super::mixed::LoraSel::One`]).
// Decoder math over tensors whose shapes were checked when the adapter was built
// (`LoraAdapter` against the model config), indexed per module.
#![allow(clippy::indexing_slicing)]

use burn::tensor::{Gradients, Tensor};

use crate::error::ModelError;
use crate::lora::{LoraAdapter, TargetModule};
use crate::weights::read_f32;

/// One module's per-row copies: `A` `[rows, r, in]`, `B` `[rows, out, r]`, the scale.
#[derive(Debug, Clone)]
struct RowFactors {
    a: Tensor<3>,
    b: Tensor<3>,
    scale: f32,
}

/// An adapter expanded to one tracked copy of each factor per batch row.
#[derive(Debug, Clone)]
pub struct PerExampleLora {
    /// `modules[layer][TargetModule::index()]`.
    modules: Vec<[Option<RowFactors>; 7]>,
    rows: usize,
}

impl PerExampleLora {
    /// `adapter` expanded to `rows` tracked copies (autodiff leaves that keep their
    /// gradients), on the adapter's device.
    pub fn expand(adapter: &LoraAdapter, rows: usize) -> Self {
        let modules = (0..adapter.num_layers())
            .map(|l| {
                TargetModule::ALL.map(|t| {
                    adapter.module(l, t).map(|m| RowFactors {
                        a: expand(&m.a, rows),
                        b: expand(&m.b, rows),
                        scale: m.scale,
                    })
                })
            })
            .collect();
        Self { modules, rows }
    }

    /// Rows (examples) the copies are made for.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.modules.len()
    }

    /// The LoRA delta of layer `l`, module `t` for `x` `[rows·s, in]` (row-major by batch
    /// row), `[rows·s, out]`; `None` where the module is not adapted.
    pub(crate) fn delta(&self, l: usize, t: TargetModule, x: Tensor<2>) -> Option<Tensor<2>> {
        let m = self.modules.get(l)?[t.index()].as_ref()?;
        let [n, fan_in] = x.dims();
        let s = n / self.rows.max(1);
        let d = x
            .reshape([self.rows, s, fan_in])
            .matmul(m.a.clone().transpose())
            .matmul(m.b.clone().transpose())
            .mul_scalar(m.scale);
        let [_, _, fan_out] = d.dims();
        Some(d.reshape([n, fan_out]))
    }

    /// After `loss.backward()`: each row's gradient, flattened in the adapter's canonical
    /// order (layer by layer; within a layer q, k, v, o, gate, up, down; within a module
    /// `dA` then `dB`, each row-major), multiplied by `row_scale[i]`.
    pub(crate) fn row_gradients(
        &self,
        grads: &Gradients,
        row_scale: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if row_scale.len() != self.rows {
            return Err(ModelError::Input(format!(
                "{} row scales for {} rows",
                row_scale.len(),
                self.rows
            )));
        }
        let per_row: usize = self
            .modules
            .iter()
            .flatten()
            .flatten()
            .map(|m| (m.a.shape().num_elements() + m.b.shape().num_elements()) / self.rows)
            .sum();
        let mut out: Vec<Vec<f32>> = (0..self.rows)
            .map(|_| Vec::with_capacity(per_row))
            .collect();
        for m in self.modules.iter().flatten().flatten() {
            for (leaf, what) in [(&m.a, "per-example grad A"), (&m.b, "per-example grad B")] {
                let n = leaf.shape().num_elements() / self.rows.max(1);
                let g = match leaf.grad(grads) {
                    Some(g) => read_f32(&g, what)?,
                    None => vec![0.0; n * self.rows],
                };
                for ((row, chunk), &k) in out.iter_mut().zip(g.chunks(n.max(1))).zip(row_scale) {
                    row.extend(chunk.iter().map(|x| x * k));
                }
            }
        }
        Ok(out)
    }
}

/// `w` `[d0, d1]` repeated to `[rows, d0, d1]` as a tracked leaf.
fn expand(w: &Tensor<2>, rows: usize) -> Tensor<3> {
    w.clone()
        .unsqueeze_dim::<3>(0)
        .repeat_dim(0, rows)
        .autodiff()
        .require_grad()
}
