//! Batching examples (left padding) and the causal-LM loss: labels shifted by one, `-100`
//! ignored, summed here and divided by the step's supervised-token count by the trainer.
//!
//! [`chunked_nll`] computes the loss and its gradient a block of supervised positions at a
//! time ([`loss_chunk_rows`]: about 16 MB of logits), so the `[positions, vocab]` logits and
//! their gradient never exist whole: at SmolLM2's vocabulary (49,152) and 512 positions one
//! copy is 100 MB, and the backward pass held two (logits and their gradient).
// Examples come from user data: index only through `get` and iterators.
#![deny(clippy::indexing_slicing)]

use burn::tensor::{Int, Tensor, TensorData};

use super::{IGNORE_INDEX, TrainExample};
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::fused;
use crate::weights::read_f32;

/// A micro-batch laid out for the decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Collated {
    /// Left-padded token rows, all of one length.
    pub input_ids: Vec<Vec<u32>>,
    /// Padding positions at the start of each row.
    pub left_pad: Vec<usize>,
    /// Flat indices (`row * seq + t`) of the positions whose next-token target counts.
    pub positions: Vec<i64>,
    /// The targets of those positions.
    pub targets: Vec<i64>,
    /// Real (non-padding) input tokens.
    pub input_tokens: usize,
}

impl Collated {
    /// Supervised tokens (the loss's denominator contribution).
    pub fn tokens(&self) -> usize {
        self.targets.len()
    }
}

/// Left-pads `examples` with `pad_id` and lists the supervised positions: position `t`
/// predicts `labels[t+1]` unless that is `-100`.
pub fn collate(
    examples: &[TrainExample],
    pad_id: u32,
    vocab: usize,
) -> Result<Collated, ModelError> {
    if examples.is_empty() {
        return Err(ModelError::Input("empty micro-batch".into()));
    }
    let s = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    if s == 0 {
        return Err(ModelError::Input(
            "every example in the micro-batch is empty".into(),
        ));
    }
    let mut c = Collated {
        input_ids: Vec::with_capacity(examples.len()),
        left_pad: Vec::with_capacity(examples.len()),
        positions: Vec::new(),
        targets: Vec::new(),
        input_tokens: 0,
    };
    for (i, ex) in examples.iter().enumerate() {
        if ex.labels.len() != ex.input_ids.len() {
            return Err(ModelError::Input(format!(
                "example {i}: {} labels for {} input_ids",
                ex.labels.len(),
                ex.input_ids.len()
            )));
        }
        if let Some(t) = ex.input_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "example {i}: token id {t} is outside the vocabulary ({vocab})"
            )));
        }
        let pad = s - ex.input_ids.len();
        let mut row = vec![pad_id; pad];
        row.extend_from_slice(&ex.input_ids);
        for (t, &l) in ex.labels.iter().enumerate().skip(1) {
            if l == IGNORE_INDEX {
                continue;
            }
            if l < 0 || l as usize >= vocab {
                return Err(ModelError::Input(format!(
                    "example {i}: label {l} at position {t} is outside the vocabulary"
                )));
            }
            c.positions.push((i * s + pad + t - 1) as i64);
            c.targets.push(l);
        }
        c.input_tokens += ex.input_ids.len();
        c.input_ids.push(row);
        c.left_pad.push(pad);
    }
    Ok(c)
}

/// The summed negative log-likelihood of the supervised targets, given the decoder's
/// final hidden states `[b, s, h]`. Only supervised positions go through the lm_head.
/// Returns a one-element tensor (on the hidden states' device, tracked if they are).
pub(crate) fn nll_sum(model: &CausalLm, hidden: Tensor<3>, c: &Collated) -> Tensor<1> {
    let [b, s, h] = hidden.dims();
    let device = hidden.device();
    let n = c.targets.len();
    let pos = Tensor::<1, Int>::from_data(TensorData::new(c.positions.clone(), [n]), &device);
    let rows = hidden.reshape([b * s, h]).select(0, pos);
    let logits = model
        .lm_head_forward(rows.reshape([1, n, h]))
        .reshape([n, model.config().vocab_size]);
    match fused::token_nll_sum(&logits, &c.targets) {
        Some(loss) => loss,
        None => fused::token_nll_sum_composite(logits, &c.targets),
    }
}

/// f32 logits per block of [`chunked_nll`] (16 MB).
const LOSS_CHUNK_ELEMENTS: usize = 1 << 22;

/// Supervised positions per block of [`chunked_nll`] for a vocabulary of `vocab`.
pub fn loss_chunk_rows(vocab: usize) -> usize {
    (LOSS_CHUNK_ELEMENTS / vocab.max(1)).max(1)
}

/// The summed negative log-likelihood of the supervised targets from the decoder's final
/// hidden states `[b, s, h]`, the lm_head and the loss taken `chunk_rows` positions at a time.
/// `tracked` false: the loss only (the second value is the loss as a tensor). `tracked`
/// (`hidden` part of an autodiff graph): each block's logits are made from an untracked copy of its rows, differentiated
/// at once and dropped; the second value is `Σ rows ⊙ d(rows)`, whose backward carries
/// exactly those gradients into the caller's graph.
pub fn chunked_nll(
    model: &CausalLm,
    hidden: Tensor<3>,
    c: &Collated,
    chunk_rows: usize,
    tracked: bool,
) -> Result<(f64, Tensor<1>), ModelError> {
    let [b, s, h] = hidden.dims();
    let device = hidden.device();
    let vocab = model.config().vocab_size;
    let n = c.targets.len();
    let pos = Tensor::<1, Int>::from_data(TensorData::new(c.positions.clone(), [n]), &device);
    let rows = hidden.reshape([b * s, h]).select(0, pos);
    let values = rows.clone().detach();
    let mut total = 0.0f64;
    let mut parts = Vec::new();
    let step = chunk_rows.max(1);
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + step).min(n);
        let m = r1 - r0;
        let x = values.clone().slice([r0..r1, 0..h]);
        let x = if tracked { x.require_grad() } else { x };
        let logits = model
            .lm_head_forward(x.clone().reshape([1, m, h]))
            .reshape([m, vocab]);
        let Some(targets) = c.targets.get(r0..r1) else {
            return Err(ModelError::Input(format!(
                "loss block {r0}..{r1} is outside the {} targets",
                c.targets.len()
            )));
        };
        let loss = match fused::token_nll_sum(&logits, targets) {
            Some(loss) => loss,
            None => fused::token_nll_sum_composite(logits, targets),
        };
        total += f64::from(
            read_f32(&loss, "loss")?
                .first()
                .copied()
                .unwrap_or(f32::NAN),
        );
        if tracked {
            let grads = loss.backward();
            let dx = x
                .grad(&grads)
                .ok_or_else(|| ModelError::Input("the loss does not depend on its rows".into()))?;
            parts.push(dx);
        }
        r0 = r1;
    }
    let scalar = if tracked {
        let d = Tensor::cat(parts, 0).autodiff();
        rows.mul(d).sum()
    } else {
        Tensor::<1>::from_data(TensorData::new(vec![total as f32], [1]), &device)
    };
    Ok((total, scalar))
}
