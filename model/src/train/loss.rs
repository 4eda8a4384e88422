//! Batching examples (left padding) and the causal-LM loss: labels shifted by one, `-100`
//! ignored, summed here and divided by the step's supervised-token count by the trainer.
// Examples come from user data: index only through `get` and iterators.
#![deny(clippy::indexing_slicing)]

use burn::tensor::{Int, Tensor, TensorData};

use super::{IGNORE_INDEX, TrainExample};
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::fused;

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
