//! Per-example gradients of a micro-batch from one batched forward and backward pass
//! ([`Trainer::per_example_gradients`], used by the attribution featurizer).

use super::loss::{collate, nll_sum};
use super::{TrainExample, Trainer};
use crate::decoder::PerExampleLora;
use crate::error::ModelError;

impl Trainer {
    /// For each of `examples`, the gradient of its *mean* completion loss with respect to
    /// every adapter tensor, flattened in the adapter's canonical order (see
    /// [`crate::features`]), from one forward and backward pass over the whole micro-batch
    /// with the adapter expanded to one copy per example ([`PerExampleLora`]). LoRA dropout
    /// is not applied. Equal, to float rounding, to [`Trainer::compute_gradients`] on each
    /// example alone divided by its supervised tokens; an example with no supervised token
    /// is an error naming its position.
    pub fn per_example_gradients(
        &self,
        examples: &[TrainExample],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let _span = tracing::debug_span!("per_example_gradients", n = examples.len()).entered();
        let mut row_scale = Vec::with_capacity(examples.len());
        for (i, ex) in examples.iter().enumerate() {
            let n = ex.supervised_tokens();
            if n == 0 {
                return Err(ModelError::Input(format!(
                    "example {i} of the micro-batch has no supervised (completion) tokens"
                )));
            }
            row_scale.push(1.0 / n as f32);
        }
        let pad = self.base.generation_config().pad_token_id.unwrap_or(0);
        let c = collate(examples, pad, self.base.config().vocab_size)?;
        let expanded = PerExampleLora::expand(&self.adapter, examples.len());
        let ids = self.base_ad.ids_tensor(&c.input_ids)?;
        let hidden = self
            .base_ad
            .forward_hidden_per_example(ids, &c.left_pad, &expanded)?;
        let loss = nll_sum(&self.base_ad, hidden, &c);
        let grads = loss.backward();
        expanded.row_gradients(&grads, &row_scale)
    }
}
