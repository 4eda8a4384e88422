//! A job's attribution index, recorded where the job trains, once.
//!
//! Every worker of a job applies the same updates, so each ends with the same adapter. The
//! worker asked to export the adapter builds the index from it
//! ([`tributary_model::features::IndexRecorder::base_gradient`]: the final adapter's
//! base-gradient features, one batched forward and backward pass per 8 examples of similar
//! length, each example's gradient exact) and returns it as two extra files, `attribution.index` (the bytes of
//! [`tributary_attribution::AttributionIndex`]) and `attribution.json` (its size per example
//! and its cost against the training time); the coordinator stores them under
//! `attribution/index/<adapter digest>/` beside the adapter, not among its files.
//!
//! Example ids are the data rows' `id` (a datanet export carries the content id) or
//! `line-N`; the row's `contributor` goes into the index's provenance. Setting
//! `TRIBUTARY_ATTRIBUTION_INDEX=off` in the worker's environment skips the index.

use std::path::Path;
use std::time::{Duration, Instant};

use tributary_model::data::Example;
use tributary_model::decoder::CausalLm;
use tributary_model::features::{DEFAULT_PROJECTION, IndexRecorder};
use tributary_model::train::{TrainExample, Trainer};
use tributary_protocol::{Digest, JobSpec, NamedFile};

/// The name of the index file in an export.
pub const INDEX_FILE: &str = "attribution.index";
/// The name of the index summary in an export.
pub const SUMMARY_FILE: &str = "attribution.json";

/// `(id, contributor)` of each loaded example, from the data file's rows.
pub fn row_ids(path: &Path, examples: &[Example]) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    Ok(examples
        .iter()
        .map(|e| {
            let row = lines
                .get(e.line.saturating_sub(1))
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
            let field = |k: &str| {
                row.as_ref()
                    .and_then(|r| r.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            (
                field("id").unwrap_or_else(|| format!("line-{}", e.line)),
                field("contributor").unwrap_or_default(),
            )
        })
        .collect())
}

/// What a job records for its index while it trains.
#[derive(Debug, Clone)]
pub struct Recording {
    recorder: IndexRecorder,
    rows: Vec<(String, String)>,
    data: String,
    base: Digest,
    data_digest: Digest,
    epochs: f64,
    training: Duration,
    enabled: bool,
}

impl Recording {
    pub fn new(
        spec: &JobSpec,
        rows: Vec<(String, String)>,
        total_steps: u64,
        examples: u64,
        base: Digest,
        data_digest: Digest,
    ) -> Self {
        let epochs = total_steps as f64 * f64::from(spec.train.batch_size) / examples.max(1) as f64;
        let enabled = std::env::var("TRIBUTARY_ATTRIBUTION_INDEX").map_or(true, |v| v != "off");
        Self {
            recorder: IndexRecorder::base_gradient(),
            rows,
            data: spec.data.split('?').next().unwrap_or_default().to_string(),
            base,
            data_digest,
            epochs,
            training: Duration::ZERO,
            enabled,
        }
    }

    /// Time spent computing gradients (the training time the index is compared with).
    pub fn add_training_time(&mut self, d: Duration) {
        self.training += d;
    }

    /// After the update of step `step` (0-based) with learning rate `lr`, taking `d`.
    pub fn after_update(&mut self, step: u64, lr: f64, trainer: &Trainer, d: Duration) {
        self.training += d;
        if self.enabled {
            self.recorder.record(step.saturating_add(1), lr, trainer);
        }
    }

    /// The index files of the trained adapter (none when turned off).
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    pub fn build(
        &self,
        model: &CausalLm,
        trainer: &Trainer,
        examples: &[TrainExample],
    ) -> Result<Vec<NamedFile>, String> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        if examples.len() != self.rows.len() {
            return Err(format!(
                "attribution index: {} examples but {} row ids",
                examples.len(),
                self.rows.len()
            ));
        }
        let t0 = Instant::now();
        let pairs: Vec<(String, TrainExample)> = self
            .rows
            .iter()
            .zip(examples)
            .map(|((id, _), ex)| (id.clone(), ex.clone()))
            .collect();
        let provenance = serde_json::json!({
            "base_model_digest": self.base.to_hex(),
            "data_digest": self.data_digest.to_hex(),
            "data": self.data,
            "contributors": self.rows.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
            "epochs": self.epochs,
            "loss": "mean over completion tokens",
        });
        let (index, cost) = self
            .recorder
            .build(model, trainer, &pairs, DEFAULT_PROJECTION, provenance)
            .map_err(|e| format!("attribution index: {e}"))?;
        let bytes = index
            .to_bytes()
            .map_err(|e| format!("attribution index: {e}"))?;
        let seconds = t0.elapsed().as_secs_f64();
        let training = self.training.as_secs_f64();
        let summary = serde_json::json!({
            "examples": index.len(),
            "checkpoints": index.header.checkpoints,
            "projection": index.header.projection,
            "bytes_per_example": index.bytes_per_example(),
            "index_bytes": bytes.len(),
            "build_seconds": seconds,
            "gradient_seconds": cost.gradient_seconds,
            "projection_seconds": cost.projection_seconds,
            "training_seconds": training,
            "cost_ratio": if training > 0.0 { seconds / training } else { 0.0 },
        });
        tracing::info!(
            examples = index.len(),
            checkpoints = index.checkpoints(),
            bytes_per_example = index.bytes_per_example(),
            seconds,
            training,
            "attribution index built"
        );
        Ok(vec![
            NamedFile {
                name: INDEX_FILE.into(),
                bytes,
            },
            NamedFile {
                name: SUMMARY_FILE.into(),
                bytes: serde_json::to_vec_pretty(&summary).unwrap_or_default(),
            },
        ])
    }
}
