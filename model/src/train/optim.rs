//! AdamW over the adapter's tensors, operation for operation as `torch.optim.AdamW`
//! (single-tensor path): decoupled weight decay, bias corrections computed in f64,
//! `eps` added outside the square root.
// Moments and gradients are walked in step with the adapter's modules (zips, no indices).
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use crate::error::ModelError;
use crate::lora::LoraAdapter;
use crate::peft::peft_key;
use crate::weights::HostTensor;

/// AdamW moments for every adapter tensor, in the adapter's canonical module order
/// (`[A, B]` per module).
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Optimizer steps taken.
    pub step: u64,
    pub(crate) exp_avg: Vec<[Tensor<2>; 2]>,
    pub(crate) exp_avg_sq: Vec<[Tensor<2>; 2]>,
}

/// Hyper-parameters of one AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    /// Learning rate of this step.
    pub lr: f64,
    /// (beta1, beta2).
    pub betas: (f64, f64),
    /// Epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl AdamW {
    /// Zero moments shaped like `adapter`'s tensors, on `device`.
    pub fn new(adapter: &LoraAdapter, device: &Device) -> Self {
        let zeros: Vec<[Tensor<2>; 2]> = adapter
            .iter()
            .map(|(_, _, m)| {
                [
                    Tensor::zeros(m.a.dims(), device),
                    Tensor::zeros(m.b.dims(), device),
                ]
            })
            .collect();
        Self {
            step: 0,
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros,
        }
    }

    /// One update of `adapter` with `grads` (`[dA, dB]` per module, canonical order).
    pub fn update(
        &mut self,
        adapter: &mut LoraAdapter,
        grads: &[[Tensor<2>; 2]],
        p: AdamWParams,
    ) -> Result<(), ModelError> {
        if grads.len() != self.exp_avg.len() {
            return Err(ModelError::Input(format!(
                "{} gradient pairs for {} adapter modules",
                grads.len(),
                self.exp_avg.len()
            )));
        }
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = p.betas;
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        let step_size = p.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        let moments = self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut());
        for ((_, _, module), (grad, (avg, avg_sq))) in
            adapter.iter_mut().zip(grads.iter().zip(moments))
        {
            let params = [&mut module.a, &mut module.b];
            let slots = params
                .into_iter()
                .zip(grad)
                .zip(avg.iter_mut().zip(avg_sq.iter_mut()));
            for ((param, g), (avg, avg_sq)) in slots {
                let g = g.clone();
                let mut w = param.clone();
                if p.weight_decay != 0.0 {
                    w = w.mul_scalar(1.0 - p.lr * p.weight_decay);
                }
                // exp_avg.lerp_(grad, 1 - beta1)
                let m = avg.clone();
                let m = m.clone().add(g.clone().sub(m).mul_scalar(1.0 - b1));
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                let v = avg_sq
                    .clone()
                    .mul_scalar(b2)
                    .add(g.clone().mul_scalar(1.0 - b2).mul(g));
                // denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
                let denom = v.clone().sqrt().div_scalar(bc2_sqrt).add_scalar(p.eps);
                // param.addcdiv_(exp_avg, denom, value=-step_size)
                *param = w.add(m.clone().div(denom).mul_scalar(-step_size));
                *avg = m;
                *avg_sq = v;
            }
        }
        Ok(())
    }

    /// The moments under `exp_avg.<PEFT key>` / `exp_avg_sq.<PEFT key>` names.
    pub fn to_host(
        &self,
        adapter: &LoraAdapter,
    ) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let mut out = BTreeMap::new();
        let moments = self.exp_avg.iter().zip(self.exp_avg_sq.iter());
        for ((layer, t, _), (avg, avg_sq)) in adapter.iter().zip(moments) {
            for (which, (m, v)) in ['A', 'B'].into_iter().zip(avg.iter().zip(avg_sq)) {
                let key = peft_key(layer, t, which);
                let n1 = format!("exp_avg.{key}");
                let n2 = format!("exp_avg_sq.{key}");
                out.insert(n1.clone(), HostTensor::from_tensor(m, &n1)?);
                out.insert(n2.clone(), HostTensor::from_tensor(v, &n2)?);
            }
        }
        Ok(out)
    }

    /// Rebuilds the moments saved by [`AdamW::to_host`].
    pub fn from_host(
        step: u64,
        tensors: &BTreeMap<String, HostTensor>,
        adapter: &LoraAdapter,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut exp_avg = Vec::new();
        let mut exp_avg_sq = Vec::new();
        for (layer, t, m) in adapter.iter() {
            let pair = |prefix: &str| -> Result<[Tensor<2>; 2], ModelError> {
                let mut out = Vec::with_capacity(2);
                for (which, dims) in [('A', m.a.dims()), ('B', m.b.dims())] {
                    let name = format!("{prefix}.{}", peft_key(layer, t, which));
                    let h = tensors
                        .get(&name)
                        .ok_or_else(|| ModelError::MissingTensor {
                            name: name.clone(),
                            location: "optimizer state".into(),
                        })?;
                    if h.shape.as_slice() != dims.as_slice() {
                        return Err(ModelError::ShapeMismatch {
                            name,
                            expected: dims.to_vec(),
                            found: h.shape.clone(),
                        });
                    }
                    out.push(h.to_tensor::<2>(device)?);
                }
                let b = out.pop();
                let a = out.pop();
                match (a, b) {
                    (Some(a), Some(b)) => Ok([a, b]),
                    _ => Err(ModelError::Input("optimizer state pair incomplete".into())),
                }
            };
            exp_avg.push(pair("exp_avg")?);
            exp_avg_sq.push(pair("exp_avg_sq")?);
        }
        Ok(Self {
            step,
            exp_avg,
            exp_avg_sq,
        })
    }
}
