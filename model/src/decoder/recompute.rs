//! Training with activation recomputation (gradient checkpointing by layer): the forward pass
//! keeps only each decoder layer's input, and the backward pass runs every layer a second
//! time, last to first, under autodiff, to get its gradients.
//!
//! Without it burn's autodiff keeps, from the forward pass to the backward pass, everything
//! every layer's backward needs: normed inputs, q/k/v, attention probabilities, the MLP's
//! gate, up and SwiGLU outputs, … (~26 MB per layer of SmolLM2 at 512 positions, ~790 MB in
//! all). With it the forward pass keeps one `[positions, hidden]` tensor per layer (1.2 MB
//! per layer there) and the backward pass holds one layer's graph at a time, at the cost of a
//! second forward pass through the layers (~1.4× the arithmetic of a step on SmolLM2 at 512
//! positions, where the lm_head, not recomputed, is a fifth of the forward pass).
//!
//! burn's own checkpointing (`BalancedCheckpointing`) does not do this: it recomputes only
//! the operations it marks memory-bound (elementwise ones), while matmuls and the fused
//! training ops (`crate::fused`, compute-bound) keep their saved state.
//!
//! The steps, each an ordinary autodiff graph:
//! 1. forward through the layers with nothing tracked (no graph is built), keeping each
//!    layer's input and its LoRA dropout state;
//! 2. the final norm and the loss from the last hidden states as a leaf (the caller's `head`),
//!    backward: the gradient of the last hidden states;
//! 3. for each layer from the last: its input as a leaf, that layer's LoRA factors as fresh
//!    leaves, the layer again, and the backward of `Σ out ⊙ g` (exactly `g` reaches `out`),
//!    giving the factors' gradients and the gradient `g` of the layer's input.
//!
//! The same operations run on the same values as without recomputation, so the gradients
//! agree to float rounding (the order in which burn sums a tensor's gradient contributions
//! differs): `model/tests/recompute.rs`.

use burn::tensor::{Int, Tensor};

use super::CausalLm;
use super::mixed::LoraSel;
use super::rms_norm;
use crate::error::ModelError;
use crate::lora::LoraAdapter;
use crate::train::dropout::LoraDropout;

/// The final hidden states' loss, given to [`CausalLm::recompute_gradients`]: from the
/// normed hidden states `[b, s, hidden]` (tracked), the summed loss and the one-element
/// tensor whose backward gives their gradient.
pub(crate) type HeadLoss<'a> = dyn FnOnce(Tensor<3>) -> Result<(f64, Tensor<1>), ModelError> + 'a;

impl CausalLm {
    /// The summed loss and the gradients `[dA, dB]` of every module of `adapter` (canonical
    /// order), with each layer recomputed in the backward pass (see the module docs).
    /// `self` is the autodiff model ([`CausalLm::to_autodiff`]); `adapter`'s tensors are on
    /// its device, untracked.
    pub(crate) fn recompute_gradients(
        &self,
        input_ids: Tensor<2, Int>,
        left_pad: &[usize],
        adapter: &LoraAdapter,
        mut dropout: Option<LoraDropout>,
        head: Box<HeadLoss<'_>>,
    ) -> Result<(f64, Vec<[Tensor<2>; 2]>), ModelError> {
        let [b, s] = input_ids.dims();
        if b == 0 || s == 0 {
            return Err(ModelError::Input("empty input_ids".into()));
        }
        if !self.device.is_autodiff() {
            return Err(ModelError::Input(
                "recomputation needs the autodiff model (CausalLm::to_autodiff)".into(),
            ));
        }
        if !left_pad.is_empty() && (left_pad.len() != b || left_pad.iter().any(|&p| p > s)) {
            return Err(ModelError::Input(format!(
                "left_pad {left_pad:?} does not fit a batch of {b} rows of {s}"
            )));
        }
        LoraSel::single(Some(adapter)).check_layers(self.cfg.num_hidden_layers)?;
        let layers = self.layers.len();
        let ctx = self.layer_inputs(left_pad, b, s);

        // 1. Forward, untracked: each layer's input and dropout state.
        let untracked = LoraSel::single(Some(adapter));
        let mut hs = self
            .embed
            .gather(input_ids.reshape([b * s]), &self.device)?
            .detach();
        let mut inputs = Vec::with_capacity(layers);
        let mut dropouts = Vec::with_capacity(layers);
        for l in 0..layers {
            inputs.push(hs.clone());
            dropouts.push(dropout.clone());
            let mut d = dropout.as_mut();
            hs = self.layer_forward(l, hs, &untracked, &mut d, &ctx, None);
        }

        // 2. The loss from the last hidden states.
        let last = hs.detach().require_grad();
        let normed = rms_norm(last.clone(), &self.norm, self.cfg.rms_norm_eps);
        let (loss_sum, scalar) = head(normed.reshape([b, s, self.cfg.hidden_size]))?;
        let grads = scalar.backward();
        let mut g = last.grad(&grads).ok_or_else(|| {
            ModelError::Input("the loss does not depend on the hidden states".into())
        })?;
        drop(grads);

        // 3. Each layer again, last to first.
        let mut per_layer: Vec<Vec<[Tensor<2>; 2]>> = vec![Vec::new(); layers];
        for l in (0..layers).rev() {
            let x = inputs
                .pop()
                .ok_or_else(|| ModelError::Input("layer inputs ran out".into()))?
                .require_grad();
            let mut tracked = adapter.clone();
            for (ml, _, m) in tracked.iter_mut() {
                if ml == l {
                    m.a = m.a.clone().detach().require_grad();
                    m.b = m.b.clone().detach().require_grad();
                }
            }
            let sel = LoraSel::single(Some(&tracked));
            let mut d = dropouts.get_mut(l).and_then(Option::as_mut);
            let out = self.layer_forward(l, x.clone(), &sel, &mut d, &ctx, None);
            let grads = out.mul(g.autodiff()).sum().backward();
            g = x
                .grad(&grads)
                .unwrap_or_else(|| Tensor::zeros(x.dims(), &self.device).inner());
            for (ml, _, m) in tracked.iter() {
                if ml != l {
                    continue;
                }
                let grad = |t: &Tensor<2>| {
                    t.grad(&grads)
                        .unwrap_or_else(|| Tensor::zeros(t.dims(), &self.device).inner())
                };
                per_layer[l].push([grad(&m.a), grad(&m.b)]);
            }
        }
        Ok((loss_sum, per_layer.into_iter().flatten().collect()))
    }
}
