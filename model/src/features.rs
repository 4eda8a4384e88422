//! Per-example LoRA gradient features for attribution.
//!
//! For one example (prompt + completion, loss on the completion tokens), the gradient of
//! its *mean* token loss with respect to every LoRA A and B parameter, the base frozen and
//! LoRA dropout off, flattened in the adapter's canonical order (layer by layer; within a
//! layer q, k, v, o, gate, up, down; within a module `dA` then `dB`, each row-major). One
//! block per layer, so per-layer methods (DataInf) can tell layers apart after projection.
//! One answer's gradient ([`GradientFeaturizer::gradient`]) comes from the same autodiff
//! pass as training ([`Trainer::compute_gradients`] on a one-example micro-batch), so it is
//! exactly the gradient training sees for that example, divided by its supervised tokens.
//!
//! [`build_index`] is the training-time index builder: given the base, the adapter at K
//! checkpoints with the learning rate each stands for, and the training examples, it
//! returns the [`AttributionIndex`] to store beside the adapter. It featurizes
//! [`FEATURE_BATCH`] examples of similar length per pass
//! ([`GradientFeaturizer::gradients`]): one batched forward and backward with the adapter
//! expanded to one copy per example ([`crate::decoder::PerExampleLora`]), whose gradients
//! are the examples' own. They equal the one-example pass to float rounding (not bit for
//! bit: the batched matrix products add in another order; the tests bound the difference).
//! [`query_features`] is the one-example computation for an answer, at answer time.
//!
//! **Base-gradient features (the default since the attribution benchmark measured them).**
//! Gradients of the *trained* adapter (TracIn's checkpoints) describe what each example
//! still gets wrong once training has fit it, which is mostly noise: on the planted
//! benchmark they rank an owner's examples with AUC 0.65–0.84. The gradient of the same
//! adapter with every `B` set to zero ([`LoraAdapter::with_zero_b`]) is the base model's own
//! weight gradient `δ xᵀ` seen through the trained `A` (`∂L/∂B = s · δ (A x)ᵀ`; `∂L/∂A = 0`):
//! what the example teaches the base model, in the directions the adapter learned to use.
//! Those rank the owner's examples with AUC 0.99–0.996 on the same benchmark
//! (docs/benchmarks.md). An index built so says it in its provenance
//! ([`FEATURES_KEY`] = [`BASE_GRADIENT`]), and answers are featurized the same way
//! ([`featurizer_adapter`]); older indexes keep their trained-checkpoint features.

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

    /// [`GradientFeaturizer::gradient`] of each of `examples`, from one batched forward and
    /// backward pass over all of them (see [`Trainer::per_example_gradients`]): the same
    /// numbers to float rounding, for about the cost of one training micro-batch. Pass
    /// examples of similar length: padding costs as much as real tokens.
    pub fn gradients(&self, examples: &[TrainExample]) -> Result<Vec<Vec<f32>>, ModelError> {
        let out = self.trainer.per_example_gradients(examples)?;
        if out.iter().any(|g| g.len() != self.layout.len()) {
            return Err(ModelError::Input(
                "attribution: per-example gradients do not fit the adapter's layout".into(),
            ));
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
        let mut per: Vec<Option<Vec<f32>>> = vec![None; examples.len()];
        for batch in length_batches(examples, FEATURE_BATCH) {
            let t0 = Instant::now();
            let exs: Vec<TrainExample> = batch.iter().map(|&(_, ex)| ex.clone()).collect();
            let grads = f.gradients(&exs).map_err(|e| {
                let ids: Vec<&str> = batch
                    .iter()
                    .map(|(i, _)| examples_id(examples, *i))
                    .collect();
                ModelError::Input(format!("examples {}: {e}", ids.join(", ")))
            })?;
            let t1 = Instant::now();
            for (&(i, _), g) in batch.iter().zip(grads) {
                let p = projector.project(&g).map_err(attr_err)?;
                if let Some(slot) = per.get_mut(i) {
                    *slot = Some(p);
                }
                cost.gradients += 1;
            }
            cost.gradient_seconds += (t1 - t0).as_secs_f64();
            cost.projection_seconds += t1.elapsed().as_secs_f64();
        }
        let per = per
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ModelError::Input("attribution index: an example was skipped".into()))?;
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
        fit_losses: None,
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
            let g =
                GradientFeaturizer::new(model, &featurizer_adapter(index, a))?.gradient(answer)?;
            projector.project(&g).map_err(attr_err)
        })
        .collect()
}

/// Each example's mean completion loss under `adapter` (no dropout): how well training fit
/// it, stored in the index ([`tributary_attribution::score::suspects`]).
pub fn fit_losses(
    model: &CausalLm,
    adapter: &LoraAdapter,
    examples: &[TrainExample],
) -> Result<Vec<f32>, ModelError> {
    let cfg = TrainConfig {
        batch_size: 1,
        ..TrainConfig::default()
    };
    let mut adapter = adapter.clone();
    adapter.config.lora_dropout = 0.0;
    let evaluator = Trainer::from_adapter(model, adapter, cfg)?;
    examples
        .iter()
        .map(|e| evaluator.eval_loss(std::slice::from_ref(e)))
        .collect()
}

/// The provenance key of an index that records which features it holds.
pub const FEATURES_KEY: &str = "features";
/// [`FEATURES_KEY`]'s value for base-gradient features (module docs).
pub const BASE_GRADIENT: &str = "base_gradient";

/// Whether `index` holds base-gradient features.
pub fn is_base_gradient(index: &AttributionIndex) -> bool {
    index
        .header
        .provenance
        .get(FEATURES_KEY)
        .and_then(|v| v.as_str())
        == Some(BASE_GRADIENT)
}

/// The adapter answers are differentiated through for `index`: `adapter` itself, or with
/// its `B` zeroed when the index holds base-gradient features.
pub fn featurizer_adapter(index: &AttributionIndex, adapter: &LoraAdapter) -> LoraAdapter {
    if is_base_gradient(index) {
        adapter.with_zero_b()
    } else {
        adapter.clone()
    }
}

/// Examples per batched featurization pass in [`build_index`] (the training default's
/// micro-batch).
pub const FEATURE_BATCH: usize = 8;

/// `examples` as micro-batches of at most `size` (`(position, example)`), shortest first so
/// that each batch pads little; ties keep their order.
fn length_batches(
    examples: &[(String, TrainExample)],
    size: usize,
) -> Vec<Vec<(usize, &TrainExample)>> {
    let mut order: Vec<(usize, &TrainExample)> =
        examples.iter().map(|(_, ex)| ex).enumerate().collect();
    order.sort_by_key(|(_, ex)| ex.input_ids.len());
    order
        .chunks(size.max(1))
        .map(<[(usize, &TrainExample)]>::to_vec)
        .collect()
}

fn examples_id(examples: &[(String, TrainExample)], i: usize) -> &str {
    examples.get(i).map_or("?", |(id, _)| id.as_str())
}

fn attr_err(e: tributary_attribution::AttributionError) -> ModelError {
    ModelError::Input(format!("attribution: {e}"))
}

/// The projection every index built during training uses unless told otherwise: a count
/// sketch to 2048 numbers per layer with a fixed, recorded seed (so anyone can rebuild it).
pub const DEFAULT_PROJECTION: Projection = Projection::CountSketch {
    k: 2048,
    seed: 0x7472_6962_7574_6172,
};

/// How many checkpoints an index keeps for a run of `epochs` passes over the data: one per
/// two epochs, at least 1 and at most 4. Each costs about 1.2–1.5 epochs of training
/// (batched forward and backward passes and the projection; docs/benchmarks.md), so the
/// index costs about 0.6–0.75× the training time at this rule.
pub fn default_checkpoints(epochs: f64) -> usize {
    ((epochs / 2.0).floor() as usize).clamp(1, 4)
}

/// Records, while training runs, what the attribution index needs: a copy of the adapter
/// at `k` evenly spaced steps (the last one at the end of training) and the summed learning
/// rate of the steps each stands for. The training driver calls it after every step (as an
/// [`Observer`](crate::train::driver::Observer) of a [`Session`], or by hand where the
/// steps run elsewhere: the workers of a data-parallel job call
/// [`IndexRecorder::record`] after each update); [`IndexRecorder::build`] then computes the
/// features once training is done.
#[derive(Debug, Clone)]
pub struct IndexRecorder {
    /// Index the final adapter's base-gradient features instead of the kept snapshots.
    base_gradient: bool,
    /// The last step [`IndexRecorder::record`] saw.
    last_step: u64,
    marks: Vec<u64>,
    lr_since: f64,
    checkpoints: Vec<CheckpointAdapter>,
}

impl IndexRecorder {
    /// Snapshots at `k` evenly spaced steps of a `total_steps` run (at least one: the end).
    pub fn new(total_steps: u64, k: usize) -> Self {
        let k = k.max(1) as u64;
        let mut marks: Vec<u64> = (1..=k)
            .map(|j| (total_steps.saturating_mul(j) / k).max(1))
            .collect();
        marks.dedup();
        Self {
            base_gradient: false,
            last_step: 0,
            marks,
            lr_since: 0.0,
            checkpoints: Vec::new(),
        }
    }

    /// The default: no snapshots; [`IndexRecorder::build`] indexes the final adapter's
    /// base-gradient features (module docs), weighted by the learning rate summed over the
    /// whole run. It costs one featurization pass over the examples, whatever the run's
    /// length.
    pub fn base_gradient() -> Self {
        Self {
            base_gradient: true,
            last_step: 0,
            marks: Vec::new(),
            lr_since: 0.0,
            checkpoints: Vec::new(),
        }
    }

    /// After step `done` (steps completed) trained with learning rate `lr`.
    pub fn record(&mut self, done: u64, lr: f64, trainer: &Trainer) {
        self.lr_since += lr;
        self.last_step = done;
        if self.marks.contains(&done) && self.checkpoints.last().is_none_or(|c| c.step < done) {
            self.checkpoints.push(CheckpointAdapter {
                step: done,
                lr: std::mem::take(&mut self.lr_since),
                adapter: trainer.adapter(),
            });
        }
    }

    /// The steps at which adapters are kept.
    pub fn marks(&self) -> &[u64] {
        &self.marks
    }

    /// The adapters kept so far.
    pub fn checkpoints(&self) -> &[CheckpointAdapter] {
        &self.checkpoints
    }

    /// Builds the index over `examples` from the kept adapters; when none was kept (a run
    /// resumed after its last mark) the final adapter `trainer` stands alone, weighted by
    /// the learning rate summed since.
    pub fn build(
        &self,
        model: &CausalLm,
        trainer: &Trainer,
        examples: &[(String, TrainExample)],
        projection: Projection,
        provenance: serde_json::Value,
    ) -> Result<(AttributionIndex, IndexCost), ModelError> {
        if self.base_gradient {
            let mut provenance = provenance;
            if let Some(o) = provenance.as_object_mut() {
                o.insert(FEATURES_KEY.into(), BASE_GRADIENT.into());
            }
            let ck = CheckpointAdapter {
                step: self.last_step,
                lr: self.lr_since.max(f64::MIN_POSITIVE),
                adapter: trainer.adapter().with_zero_b(),
            };
            let (mut index, cost) = build_index(model, &[ck], examples, projection, provenance)?;
            let exs: Vec<TrainExample> = examples.iter().map(|(_, e)| e.clone()).collect();
            index.header.fit_losses = Some(fit_losses(model, &trainer.adapter(), &exs)?);
            return Ok((index, cost));
        }
        let mut cks = self.checkpoints.clone();
        if cks.is_empty() {
            cks.push(CheckpointAdapter {
                step: 0,
                lr: self.lr_since.max(f64::MIN_POSITIVE),
                adapter: trainer.adapter(),
            });
        }
        build_index(model, &cks, examples, projection, provenance)
    }
}

impl crate::train::driver::Observer<crate::train::driver::Session> for IndexRecorder {
    fn after_step(
        &mut self,
        backend: &mut crate::train::driver::Session,
        ev: &crate::train::driver::StepEvent<'_>,
    ) -> Result<(), ModelError> {
        self.record(
            ev.step.saturating_add(1),
            ev.output.lr.unwrap_or(0.0),
            backend.trainer(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod recorder_tests {
    use super::*;

    #[test]
    fn marks_are_evenly_spaced_and_end_at_the_last_step() {
        assert_eq!(IndexRecorder::new(10, 2).marks(), &[5, 10]);
        assert_eq!(IndexRecorder::new(3, 4).marks(), &[1, 2, 3]);
        assert_eq!(IndexRecorder::new(7, 1).marks(), &[7]);
        assert_eq!(default_checkpoints(0.4), 1);
        assert_eq!(default_checkpoints(5.0), 2);
        assert_eq!(default_checkpoints(100.0), 4);
    }
}
