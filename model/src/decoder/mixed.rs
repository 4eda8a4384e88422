//! Which LoRA deltas a forward pass adds: none, one adapter for the whole batch, or a
//! different adapter per row ([`MixedLora`]).
//!
//! A mixed batch runs the base projection once for all rows (the base weights, the expensive
//! part, are read once per step whatever the number of adapters), then adds each row's own
//! LoRA delta.
//!
//! Where the base projection runs on the host kernels (packed or NF4 weights, few rows, no
//! autodiff, no dropout), the deltas do too ([`LoraSel::host_forward`]): each adapter's
//! factors are packed once ([`LoraAdapter::host_factors`], bf16 when the base is bf16) and
//! its rows' deltas are added into the base output before it becomes a tensor, the rows of
//! one adapter sharing one pass over its factors.
//!
//! Otherwise burn computes them. When every adapter that adapts a module uses the same rank there, the row
//! factors are stacked once, at [`MixedLora::new`], into `Aᵀ` `[rows, in, r]` and
//! `Bᵀ·scale` `[rows, r, out]` (zeros for rows without that adapter), and the deltas of all
//! rows are two batched matmuls per module. Otherwise each adapter's rows are gathered and
//! its `x·Aᵀ·Bᵀ·scale` computed on them alone, then added back (four operations per adapter).
// Decoder math over tensors whose shapes were checked when the checkpoint loaded
// (`weights::TensorStore::tensor`, `gguf::mapping`), indexed in hot loops. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use std::borrow::Cow;
use std::cell::OnceCell;
use std::sync::OnceLock;

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use super::linear::{Linear, LinearWeight};
use super::per_example::PerExampleLora;
use crate::error::ModelError;
use crate::kernels::{LoraFactors, Split};
use crate::lora::{LoraAdapter, TargetModule};
use crate::train::dropout::LoraDropout;

/// Per layer and module: the row-stacked factors, when the ranks allow stacking.
type Stacked = Vec<[Option<(Tensor<3>, Tensor<3>)>; 7]>;

/// What the host kernels add to one module's base product: each adapter's factors with the
/// rows it serves, and the factors' memory to prefetch during the base product.
struct HostLora<'a> {
    groups: Vec<(&'a LoraFactors, Cow<'a, [usize]>)>,
    prefetch: Vec<(*const u8, usize)>,
}

impl HostLora<'_> {
    /// Adds every group's delta into `y` (`[m, out]`), over the decode pool when it pays.
    fn add_deltas(&self, x: &[f32], y: &mut [f32], simd: bool) {
        let groups: Vec<(&LoraFactors, &[usize])> = self
            .groups
            .iter()
            .map(|(f, rows)| (*f, rows.as_ref()))
            .collect();
        LoraFactors::add_deltas_split(&groups, x, y, simd, Split::Auto);
    }
}

/// A batch whose row `i` uses `adapters[row_adapter[i]]`, or no adapter when `None`.
#[derive(Debug, Clone)]
pub struct MixedLora<'a> {
    adapters: Vec<&'a LoraAdapter>,
    row_adapter: &'a [Option<usize>],
    /// Made on the first burn-path call (the host path never needs it).
    stacked: OnceLock<Stacked>,
}

impl<'a> MixedLora<'a> {
    /// Checks that every row's adapter index exists.
    pub fn new(
        adapters: &'a [LoraAdapter],
        row_adapter: &'a [Option<usize>],
    ) -> Result<Self, ModelError> {
        Self::from_refs(adapters.iter().collect(), row_adapter)
    }

    /// [`MixedLora::new`] over adapters held elsewhere (an adapter cache's entries).
    pub fn from_refs(
        adapters: Vec<&'a LoraAdapter>,
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
            stacked: OnceLock::new(),
        })
    }

    fn stacked(&self) -> &Stacked {
        self.stacked.get_or_init(|| {
            let layers = self.adapters.first().map_or(0, |a| a.num_layers());
            (0..layers)
                .map(|l| {
                    TargetModule::ALL.map(|t| stack_rows(&self.adapters, self.row_adapter, l, t))
                })
                .collect()
        })
    }

    /// For a call with `s` positions per row: each used adapter's index with its rows in
    /// the flattened `[rows·s]` activations.
    fn host_groups(&self, s: usize) -> Vec<(usize, Vec<usize>)> {
        (0..self.adapters.len())
            .filter_map(|k| {
                let rows: Vec<usize> = self
                    .row_adapter
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| **a == Some(k))
                    .flat_map(|(r, _)| r * s..(r + 1) * s)
                    .collect();
                (!rows.is_empty()).then_some((k, rows))
            })
            .collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.row_adapter.len()
    }

    /// The adapters.
    pub fn adapters(&self) -> &[&'a LoraAdapter] {
        &self.adapters
    }

    /// [`MixedLora::host_groups`] as index tensors on `device`, for the burn path: each used
    /// adapter with the indices of its rows in the flattened `[rows·s]` activations.
    fn group_tensors(
        &self,
        host_groups: &[(usize, Vec<usize>)],
        device: &Device,
    ) -> Vec<(&'a LoraAdapter, Tensor<1, Int>)> {
        host_groups
            .iter()
            .map(|(k, rows)| {
                let idx: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
                let n = idx.len();
                (
                    self.adapters[*k],
                    Tensor::from_data(TensorData::new(idx, [n]), device),
                )
            })
            .collect()
    }
}

/// `Aᵀ` `[rows, in, r]` and `Bᵀ·scale` `[rows, r, out]` of module `t` in layer `l` for every
/// row, or `None` when no adapter adapts it or the adapters' ranks differ there.
fn stack_rows(
    adapters: &[&LoraAdapter],
    row_adapter: &[Option<usize>],
    l: usize,
    t: TargetModule,
) -> Option<(Tensor<3>, Tensor<3>)> {
    let modules: Vec<_> = adapters.iter().map(|a| a.module(l, t)).collect();
    let first = modules.iter().flatten().next()?;
    let ([r, fan_in], [fan_out, _]) = (first.a.dims(), first.b.dims());
    if modules.iter().flatten().any(|m| m.a.dims()[0] != r) {
        return None;
    }
    let device = first.a.device();
    let mut a_rows = Vec::with_capacity(row_adapter.len());
    let mut b_rows = Vec::with_capacity(row_adapter.len());
    for k in row_adapter {
        match k.and_then(|k| modules.get(k).copied().flatten()) {
            Some(m) => {
                a_rows.push(m.a.clone().transpose());
                b_rows.push(m.b.clone().transpose().mul_scalar(m.scale));
            }
            None => {
                a_rows.push(Tensor::zeros([fan_in, r], &device));
                b_rows.push(Tensor::zeros([r, fan_out], &device));
            }
        }
    }
    Some((Tensor::stack(a_rows, 0), Tensor::stack(b_rows, 0)))
}

/// The LoRA deltas of one forward call.
pub(crate) enum LoraSel<'a> {
    None,
    One(&'a LoraAdapter),
    /// Row-stacked factors where possible, per-adapter row groups (see
    /// [`MixedLora::group_tensors`]) for the other modules.
    Mixed {
        lora: &'a MixedLora<'a>,
        /// Made on the first burn-path call that needs them.
        groups: OnceCell<Vec<(&'a LoraAdapter, Tensor<1, Int>)>>,
        /// Each used adapter's index and rows (the host path reads them; the burn path's
        /// `groups` are made from them).
        host_groups: Vec<(usize, Vec<usize>)>,
        seq: usize,
        device: Device,
    },
    /// Each row its own tracked copy of one adapter (per-example gradients, burn only).
    PerExample(&'a PerExampleLora),
}

impl<'a> LoraSel<'a> {
    pub(crate) fn single(lora: Option<&'a LoraAdapter>) -> Self {
        lora.map_or(LoraSel::None, LoraSel::One)
    }

    pub(crate) fn mixed(lora: &'a MixedLora<'a>, seq: usize, device: &Device) -> Self {
        LoraSel::Mixed {
            lora,
            groups: OnceCell::new(),
            host_groups: lora.host_groups(seq),
            seq,
            device: device.clone(),
        }
    }

    /// The host factors of layer `l`, module `t` for a call of `m` rows (each adapter with
    /// the rows it serves) and the memory to prefetch while the base is multiplied; `None`
    /// where an adapter's factors cannot serve (they do not fit the weight).
    fn host_lora<'s>(
        &'s self,
        l: usize,
        t: TargetModule,
        linear: &Linear,
        m: usize,
    ) -> Option<HostLora<'s>> {
        // bf16 base weights leave memory bandwidth to spare: the factors are then fetched
        // while the base is multiplied (measured: 8 adapters +12 %); an f32 base has none
        // to spare, and the same prefetch slowed it (docs/benchmarks.md, speed work 4).
        let bf16 = linear.weight_t.is_host_bf16();
        let [fan_in, fan_out] = linear.weight_t.dims();
        // The factors of adapter `a` for this module; Err(()) when they cannot serve.
        let factors = |a: &'a LoraAdapter| -> Result<Option<&'a LoraFactors>, ()> {
            let host = a.host_factors(bf16).map_err(|_| ())?;
            match host.get(l).and_then(|m| m[t.index()].as_ref()) {
                Some(f) if f.dims()[1..] != [fan_in, fan_out] => Err(()),
                f => Ok(f),
            }
        };
        let mut groups = Vec::new();
        match self {
            LoraSel::None => {}
            LoraSel::PerExample(_) => return None,
            LoraSel::One(a) => {
                if let Some(f) = factors(a).ok()? {
                    groups.push((f, Cow::Owned((0..m).collect())));
                }
            }
            LoraSel::Mixed {
                lora, host_groups, ..
            } => {
                for (k, rows) in host_groups {
                    if let Some(f) = factors(lora.adapters[*k]).ok()? {
                        groups.push((f, Cow::Borrowed(rows.as_slice())));
                    }
                }
            }
        }
        let prefetch = groups
            .iter()
            .filter(|_| bf16)
            .flat_map(|(f, _)| f.memory())
            .collect();
        Some(HostLora { groups, prefetch })
    }

    /// `linear`'s projection of `x` plus the LoRA delta of layer `l`, module `t`, both on the
    /// host kernels (see the module docs); `None` where burn must compute them (no adapter,
    /// dense or non-fusable base weights, many rows, autodiff, factors that do not fit the
    /// weight).
    pub(crate) fn host_forward(
        &self,
        l: usize,
        t: TargetModule,
        linear: &Linear,
        x: &Tensor<2>,
    ) -> Option<Tensor<2>> {
        if matches!(self, LoraSel::None | LoraSel::PerExample(_))
            || matches!(
                linear.weight_t,
                LinearWeight::Dense(_) | LinearWeight::Bf16(_)
            )
            || x.is_autodiff()
        {
            return None;
        }
        let lora = self.host_lora(l, t, linear, x.dims()[0])?;
        linear.forward_host_with(x, &lora.prefetch, |xs, y| {
            lora.add_deltas(xs, y, crate::kernels::simd_available())
        })
    }

    /// [`LoraSel::host_forward`] on host buffers, for the host decode step: `x` `[m, in]`
    /// row-major → `linear`'s projection plus the LoRA delta of layer `l`, module `t`, plus
    /// `bias`, `[m, out]` row-major, no tensor made (`simd`: AVX-512 or portable kernels).
    /// Also serves calls without adapter. `None` where the weight is not host-capable or the
    /// factors do not fit it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn host_forward_slice(
        &self,
        l: usize,
        t: TargetModule,
        linear: &Linear,
        x: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        simd: bool,
    ) -> Option<Vec<f32>> {
        let lora = self.host_lora(l, t, linear, m)?;
        let mut y = linear
            .weight_t
            .host_matmul_slice(x, m, simd, &lora.prefetch, |xs, y| {
                lora.add_deltas(xs, y, simd)
            })?;
        if let Some(b) = bias {
            for row in y.chunks_mut(linear.weight_t.dims()[1]) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        Some(y)
    }

    /// Every adapter involved has `layers` layers.
    pub(crate) fn check_layers(&self, layers: usize) -> Result<(), ModelError> {
        let bad = match self {
            LoraSel::None => None,
            LoraSel::One(a) => (a.num_layers() != layers).then_some(a.num_layers()),
            LoraSel::PerExample(p) => (p.num_layers() != layers).then_some(p.num_layers()),
            LoraSel::Mixed { lora, .. } => lora
                .adapters
                .iter()
                .map(|a| a.num_layers())
                .find(|&n| n != layers),
        };
        match bad {
            Some(n) => Err(ModelError::Input(format!(
                "adapter has {n} layers, the model {layers}"
            ))),
            None => Ok(()),
        }
    }

    /// A bf16 trainer's projection `t` of layer `l` with its LoRA delta as one fused op
    /// ([`crate::fused::lora_linear_bf16`]), bias added; `None` where it does not apply (no
    /// single adapter, the module not adapted, a weight not in bf16, untracked input): the
    /// caller then adds [`Self::add_delta`] to the projection.
    pub(crate) fn fused_bf16_forward(
        &self,
        l: usize,
        t: TargetModule,
        linear: &Linear,
        x: &Tensor<2>,
    ) -> Option<Tensor<2>> {
        let LoraSel::One(adapter) = self else {
            return None;
        };
        let module = adapter.module(l, t)?;
        let LinearWeight::Bf16(weight) = &linear.weight_t else {
            return None;
        };
        let y = crate::fused::lora_linear_bf16(weight, x, &module.a, &module.b, module.scale)?;
        Some(linear.with_bias(y))
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
            LoraSel::PerExample(p) => match p.delta(l, t, x) {
                Some(d) => y.add(d),
                None => y,
            },
            LoraSel::Mixed { lora, seq, .. }
                if let Some(Some((a, b))) = lora.stacked().get(l).map(|m| &m[t.index()]) =>
            {
                let [n, fan_in] = x.dims();
                let rows = n / seq;
                let d = x
                    .reshape([rows, *seq, fan_in])
                    .matmul(a.clone())
                    .matmul(b.clone());
                let [_, _, fan_out] = d.dims();
                y.add(d.reshape([n, fan_out]))
            }
            LoraSel::Mixed {
                lora,
                groups,
                host_groups,
                device,
                ..
            } => {
                let mut y = y;
                for (a, idx) in groups.get_or_init(|| lora.group_tensors(host_groups, device)) {
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
