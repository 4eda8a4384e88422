//! Which LoRA deltas a forward pass adds: none, one adapter for the whole batch, or a
//! different adapter per row ([`MixedLora`]).
//!
//! A mixed batch runs the base projection once for all rows, then for each adapter gathers
//! its rows, computes `x·Aᵀ·Bᵀ·scale` for them alone (two thin GEMMs) and adds the result
//! back into those rows. The base weights, the expensive part, are read once per step
//! whatever the number of adapters.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::ModelError;
use crate::lora::{LoraAdapter, TargetModule};
use crate::train::dropout::LoraDropout;

/// A batch whose row `i` uses `adapters[row_adapter[i]]`, or no adapter when `None`.
#[derive(Debug, Clone, Copy)]
pub struct MixedLora<'a> {
    adapters: &'a [LoraAdapter],
    row_adapter: &'a [Option<usize>],
}

impl<'a> MixedLora<'a> {
    /// Checks that every row's adapter index exists.
    pub fn new(
        adapters: &'a [LoraAdapter],
        row_adapter: &'a [Option<usize>],
    ) -> Result<Self, ModelError> {
        if let Some(bad) = row_adapter.iter().flatten().find(|&&k| k >= adapters.len()) {
            return Err(ModelError::Input(format!(
                "row adapter index {bad} with {} adapters",
                adapters.len()
            )));
        }
        Ok(Self {
            adapters,
            row_adapter,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.row_adapter.len()
    }

    /// The adapters.
    pub fn adapters(&self) -> &'a [LoraAdapter] {
        self.adapters
    }

    /// For a call with `s` positions per row: each used adapter with the indices of its
    /// rows in the flattened `[rows·s]` activations.
    fn groups(&self, s: usize, device: &Device) -> Vec<(&'a LoraAdapter, Tensor<1, Int>)> {
        let mut out = Vec::new();
        for (k, adapter) in self.adapters.iter().enumerate() {
            let idx: Vec<i64> = self
                .row_adapter
                .iter()
                .enumerate()
                .filter(|(_, a)| **a == Some(k))
                .flat_map(|(r, _)| (r * s..(r + 1) * s).map(|i| i as i64))
                .collect();
            if !idx.is_empty() {
                let n = idx.len();
                out.push((
                    adapter,
                    Tensor::from_data(TensorData::new(idx, [n]), device),
                ));
            }
        }
        out
    }
}

/// The LoRA deltas of one forward call.
pub(crate) enum LoraSel<'a> {
    None,
    One(&'a LoraAdapter),
    /// Per-adapter row groups (see [`MixedLora::groups`]).
    Mixed(Vec<(&'a LoraAdapter, Tensor<1, Int>)>),
}

impl<'a> LoraSel<'a> {
    pub(crate) fn single(lora: Option<&'a LoraAdapter>) -> Self {
        lora.map_or(LoraSel::None, LoraSel::One)
    }

    pub(crate) fn mixed(m: &MixedLora<'a>, s: usize, device: &Device) -> Self {
        LoraSel::Mixed(m.groups(s, device))
    }

    /// Every adapter involved has `layers` layers.
    pub(crate) fn check_layers(&self, layers: usize) -> Result<(), ModelError> {
        let bad = match self {
            LoraSel::None => None,
            LoraSel::One(a) => (a.num_layers() != layers).then_some(a.num_layers()),
            LoraSel::Mixed(g) => g.iter().map(|(a, _)| a.num_layers()).find(|&n| n != layers),
        };
        match bad {
            Some(n) => Err(ModelError::Input(format!(
                "adapter has {n} layers, the model {layers}"
            ))),
            None => Ok(()),
        }
    }

    /// `y` (the base projection of `x`) plus the LoRA delta of layer `l`, module `t`.
    pub(crate) fn add_delta(
        &self,
        l: usize,
        t: TargetModule,
        x: Tensor<2>,
        y: Tensor<2>,
        dropout: Option<&mut LoraDropout>,
    ) -> Tensor<2> {
        match self {
            LoraSel::None => y,
            LoraSel::One(a) => match a.module(l, t) {
                Some(m) => {
                    let x = match dropout {
                        Some(d) => d.apply(x),
                        None => x,
                    };
                    y.add(m.delta(x))
                }
                None => y,
            },
            LoraSel::Mixed(groups) => {
                let mut y = y;
                for (a, idx) in groups {
                    if let Some(m) = a.module(l, t) {
                        let d = m.delta(x.clone().select(0, idx.clone()));
                        y = y.select_assign(0, idx.clone(), d, IndexingUpdateOp::Add);
                    }
                }
                y
            }
        }
    }
}
