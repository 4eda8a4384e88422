//! Per-example LoRA gradient features for attribution.
//!
//! For one example (prompt + completion, loss on the completion tokens), the gradient of
//! its *mean* token loss with respect to every LoRA A and B parameter, the base frozen and
//! LoRA dropout off, flattened in the adapter's canonical order (layer by layer; within a
//! layer q, k, v, o, gate, up, down; within a module `dA` then `dB`, each row-major). One
//! block per layer, so per-layer methods (DataInf) can tell layers apart after projection.
//! The gradient comes from the same autodiff pass as training
//! ([`Trainer::compute_gradients`] on a one-example micro-batch), so it is exactly the
//! gradient training sees for that example, divided by its supervised tokens.
//!
//! [`build_index`] is the training-time index builder: given the base, the adapter at K
//! checkpoints with the learning rate each stands for, and the training examples, it
//! returns the [`AttributionIndex`] to store beside the adapter. [`query_features`] is the
//! same computation for an answer, at answer time.

use std::time::Instant;

use tributary_attribution::{
    AttributionIndex, BlockLayout, IndexCheckpoint, IndexHeader, Projection, Projector,
};

use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::lora::LoraAdapter;
use crate::train::{TrainConfig, TrainExample, Trainer};
use crate::weights::read_f32;

/// Computes per-example gradients for one adapter (one checkpoint).
#[derive(Debug, Clone)]
pub struct GradientFeaturizer {
    trainer: Trainer,
    layout: BlockLayout,
}

impl GradientFeaturizer {
    /// A featurizer for `adapter` on `model` (LoRA dropout is turned off).
    pub fn new(model: &CausalLm, adapter: &LoraAdapter) -> Result<Self, ModelError> {
        let mut adapter = adapter.clone();
        adapter.config.lora_dropout = 0.0;
        let layout = gradient_layout(&adapter);
        let cfg = TrainConfig {
            batch_size: 1,
            ..TrainConfig::default()
        };
        let trainer = Trainer::from_adapter(model, adapter, cfg)?;
        Ok(Self { trainer, layout })
    }

    /// The layout of [`GradientFeaturizer::gradient`]'s output: one block per layer.
    pub fn layout(&self) -> &BlockLayout {
        &self.layout
    }

    /// The exact gradient of `example`'s mean completion loss, flattened (see the module
    /// docs). An example with no supervised token is an error naming it.
    pub fn gradient(&self, example: &TrainExample) -> Result<Vec<f32>, ModelError> {
        let g = self
            .trainer
            .compute_gradients(std::slice::from_ref(example), 0)?;
        if g.tokens == 0 {
            return Err(ModelError::Input(
                "attribution: the example has no supervised (completion) tokens".into(),
            ));
        }
        let inv = 1.0 / g.tokens as f32;
        let mut out = Vec::with_capacity(self.layout.len());
        for [a, b] in &g.grads {
            out.extend(read_f32(a, "grad A")?.into_iter().map(|x| x * inv));
            out.extend(read_f32(b, "grad B")?.into_iter().map(|x| x * inv));
        }
        Ok(out)
    }

    /// The mean completion loss of `example` under this adapter (no dropout).
    pub fn loss(&self, example: &TrainExample) -> Result<f32, ModelError> {
        self.trainer.eval_loss(std::slice::from_ref(example))
    }
}

/// One block per layer with adapted modules, named `layers.N`, each the sum of its modules'
/// `r·in + out·r`.
pub fn gradient_layout(adapter: &LoraAdapter) -> BlockLayout {
    let mut blocks: Vec<(String, usize)> = Vec::new();
    let mut last = None;
    for (layer, _, m) in adapter.iter() {
        let n = m.a.shape().num_elements() + m.b.shape().num_elements();
        if last == Some(layer) {
            if let Some(b) = blocks.last_mut() {
                b.1 += n;
            }
        } else {
            blocks.push((format!("layers.{layer}"), n));
            last = Some(layer);
        }
    }
    BlockLayout::new(blocks)
}

/// The adapter at one checkpoint and the learning rate it stands for in TracIn-CP (the sum
/// of the step learning rates since the previous checkpoint).
#[derive(Debug, Clone)]
pub struct CheckpointAdapter {
    /// Optimizer steps completed.
    pub step: u64,
    /// Its weight.
    pub lr: f64,
    /// The adapter then.
    pub adapter: LoraAdapter,
}

/// What building an index cost.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct IndexCost {
    /// Seconds in gradient passes.
    pub gradient_seconds: f64,
    /// Seconds projecting.
    pub projection_seconds: f64,
    /// Examples × checkpoints featurized.
    pub gradients: usize,
}

/// Builds the attribution index of `examples` (`(id, example)`) over `checkpoints`,
/// projected by `projection`. The function a training driver calls once the checkpoints
/// exist (keep `Trainer::adapter()` copies at each checkpoint step: they are small).
#[allow(clippy::disallowed_methods)] // reports how long feature extraction took
pub fn build_index(
    model: &CausalLm,
    checkpoints: &[CheckpointAdapter],
    examples: &[(String, TrainExample)],
    projection: Projection,
    provenance: serde_json::Value,
) -> Result<(AttributionIndex, IndexCost), ModelError> {
    let first = checkpoints
        .first()
        .ok_or_else(|| ModelError::Input("attribution index: no checkpoints given".into()))?;
    let layout = gradient_layout(&first.adapter);
    let projector = Projector::new(projection, layout.clone()).map_err(attr_err)?;
    let mut cost = IndexCost {
        gradient_seconds: 0.0,
        projection_seconds: 0.0,
        gradients: 0,
    };
    let mut features = Vec::with_capacity(checkpoints.len());
    for ck in checkpoints {
        let f = GradientFeaturizer::new(model, &ck.adapter)?;
        if f.layout() != &layout {
            return Err(ModelError::Input(
                "attribution index: checkpoints have different adapter layouts".into(),
            ));
        }
        let mut per = Vec::with_capacity(examples.len());
        for (id, ex) in examples {
            let t0 = Instant::now();
            let g = f
                .gradient(ex)
                .map_err(|e| ModelError::Input(format!("example {id}: {e}")))?;
            let t1 = Instant::now();
            per.push(projector.project(&g).map_err(attr_err)?);
            cost.gradient_seconds += (t1 - t0).as_secs_f64();
            cost.projection_seconds += t1.elapsed().as_secs_f64();
            cost.gradients += 1;
        }
        features.push(per);
    }
    let header = IndexHeader {
        projection,
        gradient_layout: layout,
        feature_layout: projector.output_layout().clone(),
        checkpoints: checkpoints
            .iter()
            .map(|c| IndexCheckpoint {
                step: c.step,
                lr: c.lr,
            })
            .collect(),
        example_ids: examples.iter().map(|(id, _)| id.clone()).collect(),
        provenance,
    };
    let index = AttributionIndex::new(header, features).map_err(attr_err)?;
    Ok((index, cost))
}

/// The features of one answer (prompt + generated tokens as a [`TrainExample`] with the
/// prompt masked) at every checkpoint, projected as `index` was; pass only the served
/// adapter for the cheaper one-checkpoint approximation.
pub fn query_features(
    model: &CausalLm,
    adapters: &[&LoraAdapter],
    answer: &TrainExample,
    index: &AttributionIndex,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let projector = Projector::new(
        index.header.projection,
        index.header.gradient_layout.clone(),
    )
    .map_err(attr_err)?;
    adapters
        .iter()
        .map(|a| {
            let g = GradientFeaturizer::new(model, a)?.gradient(answer)?;
            projector.project(&g).map_err(attr_err)
        })
        .collect()
}

fn attr_err(e: tributary_attribution::AttributionError) -> ModelError {
    ModelError::Input(format!("attribution: {e}"))
}
