//! The fine-tuning job spec, in TOML or JSON, with keys a PEFT/axolotl user expects:
//!
//! ```toml
//! base_model = "models/tiny"          # directory path or object-store URL (s3://…, file:///…)
//! data = "data/train.jsonl"           # JSONL path or URL, or "datanet://NAME@VERSION"
//! workers = 2                         # or "auto"
//! [lora]
//! rank = 8
//! alpha = 16.0
//! dropout = 0.05
//! target_modules = ["q_proj", "v_proj"]
//! [train]
//! steps = 100                         # or epochs = 3
//! batch_size = 8                      # examples per optimizer step (global batch)
//! grad_accum = 4                      # micro-batches per global batch (default: batch_size)
//! lr = 2e-4
//! warmup = 10
//! seed = 42
//! max_grad_norm = 1.0
//! checkpoint_every = 50
//! precision = "bf16"                  # or "f32" (default: the worker's fastest, see below)
//! recompute = true                    # recompute activations in the backward pass (default off)
//! [resources]
//! gpu = 1                             # only workers with a hardware GPU (see spec_resources)
//! ```
//!
//! The global batch is cut into `grad_accum` micro-batches of `batch_size / grad_accum`
//! examples; micro-batches are the unit spread over workers, so at most `grad_accum` workers
//! share one job, and the reduction over micro-batches in index order makes the result
//! independent of the number of workers. Validation errors name the field and its limit.
//!
//! `train.precision` is the arithmetic of the frozen base's products (`tributary_model::
//! precision`): "f32", or "bf16" (mixed precision, f32 accumulation, LoRA weights and
//! optimizer in f32). Without it each worker takes the fastest precision whose quality holds
//! on its CPU (bf16 where it has AVX-512 BF16): name it when the workers' CPUs differ, since
//! the worker-count invariance holds at one precision.
//!
//! `base_model` URLs are downloaded into the worker's cache; `data = "datanet://NAME@VERSION"`
//! (VERSION a number, a digest or prefix, or `latest`) is resolved in the worker's `--store`
//! and exported as JSONL. The registered digests are the model files' BLAKE3 (the same for a
//! path and a URL with the same files) and the data file's BLAKE3 or the datanet version's
//! manifest digest. See `worker/src/sources.rs` and docs/cluster.md.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ProtocolError, Result};

/// Number of workers for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workers {
    /// As many as are free, up to the number of micro-batches.
    #[default]
    Auto,
    /// Exactly this many.
    Count(u32),
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Workers::Auto => s.serialize_str("auto"),
            Workers::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) if s == "auto" => Ok(Workers::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "workers must be a number or \"auto\", got {s:?}"
            ))),
            Raw::N(n) => u32::try_from(n)
                .map(Workers::Count)
                .map_err(|_| serde::de::Error::custom(format!("workers = {n} is out of range"))),
        }
    }
}

/// LoRA hyper-parameters, named as in PEFT's `LoraConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSpec {
    pub rank: u32,
    pub alpha: f32,
    pub dropout: f32,
    pub target_modules: Vec<String>,
}

impl Default for LoraSpec {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

/// Training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Optimizer steps; exactly one of `steps` and `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Passes over the data; exactly one of `steps` and `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Examples per optimizer step (the global batch).
    #[serde(default = "default_batch")]
    pub batch_size: u32,
    /// Micro-batches per global batch; must divide `batch_size`. Default: `batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_accum: Option<u32>,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Linear warm-up steps.
    #[serde(default)]
    pub warmup: u64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f32>,
    /// Checkpoint every this many steps (default: never, except at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<u64>,
    /// Share of the examples held out for the eval loss (the last ones, in dataset order);
    /// `(0, 0.5]`. None: no eval split, only the train loss is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    /// "f32" or "bf16" (default: the worker's fastest; see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping
    /// them (`tributary_model::train::TrainConfig::recompute`): the same gradients, much less
    /// memory at long sequences, more arithmetic. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recompute: Option<bool>,
}

/// The values `train.precision` may take.
pub const PRECISIONS: [&str; 2] = ["f32", "bf16"];

fn default_batch() -> u32 {
    8
}
fn default_lr() -> f64 {
    2e-4
}

/// A fine-tuning job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Base model directory or object-store URL.
    pub base_model: String,
    /// Training data: a JSONL file path or URL.
    pub data: String,
    #[serde(default)]
    pub workers: Workers,
    #[serde(default)]
    pub lora: LoraSpec,
    pub train: TrainSpec,
    /// The adapter name the trained adapter is served under (`model` in the OpenAI API)
    /// once the job succeeds; optional (the adapter is always servable by its digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The identity that submitted the job: set by the gateway from the caller's API key (a
    /// value in a submitted spec is replaced); it owns the job's adapter and its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What each worker must have (`[resources] gpu = 1`: only workers with a hardware GPU;
    /// see [`crate::spec_resources`]).
    #[serde(
        default,
        skip_serializing_if = "crate::spec_resources::Resources::is_empty"
    )]
    pub resources: crate::spec_resources::Resources,
}

/// Limits checked by [`JobSpec::validate`].
pub mod limits {
    pub const MAX_RANK: u32 = 1024;
    pub const MAX_ALPHA: f32 = 65536.0;
    pub const MAX_STEPS: u64 = 100_000_000;
    pub const MAX_EPOCHS: u32 = 10_000;
    pub const MAX_BATCH: u32 = 1 << 20;
    pub const MAX_WORKERS: u32 = 4096;
    pub const MAX_LR: f64 = 1.0;
}

fn spec_err(msg: String) -> ProtocolError {
    ProtocolError::Spec(msg)
}

impl JobSpec {
    /// Parses TOML and validates.
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let spec: Self = toml::from_str(s).map_err(|e| spec_err(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses JSON and validates.
    pub fn from_json_str(s: &str) -> Result<Self> {
        let spec: Self = serde_json::from_str(s).map_err(|e| spec_err(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads a `.toml` or `.json` file (other extensions: JSON if it starts with `{`).
    pub fn from_path(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ProtocolError::io(path, e))?;
        let json = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => true,
            Some("toml") => false,
            _ => text.trim_start().starts_with('{'),
        };
        let parsed = if json {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        };
        parsed.map_err(|e| match e {
            ProtocolError::Spec(msg) => spec_err(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The spec as compact JSON (what travels to workers).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| ProtocolError::Encode(e.to_string()))
    }

    /// Micro-batches per global batch.
    pub fn micro_batches(&self) -> u32 {
        self.train.grad_accum.unwrap_or(self.train.batch_size)
    }

    /// Examples per micro-batch.
    pub fn micro_batch_size(&self) -> u32 {
        self.train.batch_size / self.micro_batches().max(1)
    }

    /// Optimizer steps, given the number of examples when the spec counts epochs.
    pub fn total_steps(&self, dataset_len: u64) -> u64 {
        match (self.train.steps, self.train.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => {
                let per_epoch = dataset_len.div_ceil(u64::from(self.train.batch_size.max(1)));
                per_epoch.max(1).saturating_mul(u64::from(e))
            }
            (None, None) => 0,
        }
    }

    /// `(train, eval)` example counts of a dataset of `n` examples under `train.eval_fraction`
    /// (the eval examples are the last `eval` ones; at least one is trained on).
    pub fn eval_split(&self, n: u64) -> (u64, u64) {
        let Some(f) = self.train.eval_fraction else {
            return (n, 0);
        };
        let eval = ((n as f64 * f).round() as u64)
            .max(1)
            .min(n.saturating_sub(1));
        (n - eval, eval)
    }

    /// Checks every field against its limit; the error names the field.
    pub fn validate(&self) -> Result<()> {
        use limits::*;
        if let Some(f) = self.train.eval_fraction
            && !(f > 0.0 && f <= 0.5)
        {
            return Err(spec_err(format!(
                "train.eval_fraction = {f} is out of range: must be in (0, 0.5]"
            )));
        }
        crate::spec_check::check_location("base_model", &self.base_model, false)
            .map_err(spec_err)?;
        self.resources.validate().map_err(spec_err)?;
        crate::spec_check::check_location("data", &self.data, true).map_err(spec_err)?;
        if let Workers::Count(n) = self.workers
            && (n == 0 || n > MAX_WORKERS)
        {
            return Err(spec_err(format!(
                "workers = {n} is out of range: must be 1..={MAX_WORKERS} or \"auto\""
            )));
        }
        let l = &self.lora;
        if l.rank == 0 || l.rank > MAX_RANK {
            return Err(spec_err(format!(
                "lora.rank = {} is out of range: must be 1..={MAX_RANK}",
                l.rank
            )));
        }
        if !(l.alpha > 0.0 && l.alpha <= MAX_ALPHA) {
            return Err(spec_err(format!(
                "lora.alpha = {} is out of range: must be in (0, {MAX_ALPHA}]",
                l.alpha
            )));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return Err(spec_err(format!(
                "lora.dropout = {} is out of range: must be in [0, 1)",
                l.dropout
            )));
        }
        if l.target_modules.is_empty() || l.target_modules.iter().any(|m| m.trim().is_empty()) {
            return Err(spec_err(
                "lora.target_modules must list at least one non-empty module name".into(),
            ));
        }
        let t = &self.train;
        match (t.steps, t.epochs) {
            (Some(_), Some(_)) => {
                return Err(spec_err(
                    "train.steps and train.epochs are exclusive: give one".into(),
                ));
            }
            (None, None) => {
                return Err(spec_err("train needs steps or epochs".into()));
            }
            (Some(s), None) if s == 0 || s > MAX_STEPS => {
                return Err(spec_err(format!(
                    "train.steps = {s} is out of range: must be 1..={MAX_STEPS}"
                )));
            }
            (None, Some(e)) if e == 0 || e > MAX_EPOCHS => {
                return Err(spec_err(format!(
                    "train.epochs = {e} is out of range: must be 1..={MAX_EPOCHS}"
                )));
            }
            _ => {}
        }
        if t.batch_size == 0 || t.batch_size > MAX_BATCH {
            return Err(spec_err(format!(
                "train.batch_size = {} is out of range: must be 1..={MAX_BATCH}",
                t.batch_size
            )));
        }
        if let Some(g) = t.grad_accum
            && (g == 0 || g > t.batch_size || !t.batch_size.is_multiple_of(g))
        {
            return Err(spec_err(format!(
                "train.grad_accum = {g} must divide train.batch_size = {} (1..={})",
                t.batch_size, t.batch_size
            )));
        }
        if !(t.lr > 0.0 && t.lr <= MAX_LR) {
            return Err(spec_err(format!(
                "train.lr = {} is out of range: must be in (0, {MAX_LR}]",
                t.lr
            )));
        }
        if let Some(s) = t.steps
            && t.warmup > s
        {
            return Err(spec_err(format!(
                "train.warmup = {} exceeds train.steps = {s}",
                t.warmup
            )));
        }
        if let Some(n) = t.max_grad_norm
            && !(n > 0.0 && n.is_finite())
        {
            return Err(spec_err(format!(
                "train.max_grad_norm = {n} is out of range: must be a positive number"
            )));
        }
        if let Some(p) = &t.precision
            && !PRECISIONS.contains(&p.as_str())
        {
            return Err(spec_err(format!(
                "train.precision = {p:?} is not supported: must be one of {}",
                PRECISIONS.join(", ")
            )));
        }
        if t.checkpoint_every == Some(0) {
            return Err(spec_err(
                "train.checkpoint_every = 0 is out of range: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
base_model = "models/tiny"
data = "data/train.jsonl"
workers = "auto"
[lora]
rank = 16
alpha = 32
dropout = 0.1
target_modules = ["q_proj", "k_proj", "v_proj"]
[train]
steps = 100
batch_size = 8
grad_accum = 4
lr = 1e-4
warmup = 10
seed = 7
max_grad_norm = 1.0
checkpoint_every = 25
precision = "bf16"
"#;

    #[test]
    fn eval_fraction_is_validated_naming_the_field_and_splits_the_tail() {
        let bad = TOML.replace("seed = 7", "seed = 7\neval_fraction = 0.9");
        let e = JobSpec::from_toml_str(&bad).unwrap_err().to_string();
        assert!(e.contains("train.eval_fraction = 0.9"), "{e}");
        let zero = TOML.replace("seed = 7", "seed = 7\neval_fraction = 0.0");
        assert!(JobSpec::from_toml_str(&zero).is_err());
        let ok = TOML.replace("seed = 7", "seed = 7\neval_fraction = 0.25");
        let spec = JobSpec::from_toml_str(&ok).unwrap();
        assert_eq!(spec.eval_split(40), (30, 10));
        assert_eq!(spec.eval_split(2), (1, 1));
        assert_eq!(
            JobSpec::from_toml_str(TOML).unwrap().eval_split(40),
            (40, 0)
        );
    }

    #[test]
    fn recompute_is_optional_and_read_when_given() {
        assert_eq!(JobSpec::from_toml_str(TOML).unwrap().train.recompute, None);
        let on = TOML.replace("seed = 7", "seed = 7\nrecompute = true");
        let spec = JobSpec::from_toml_str(&on).unwrap();
        assert_eq!(spec.train.recompute, Some(true));
        assert!(spec.to_json().unwrap().contains("\"recompute\":true"));
        let bad = TOML.replace("seed = 7", "seed = 7\nrecompute = \"yes\"");
        assert!(JobSpec::from_toml_str(&bad).is_err());
    }

    #[test]
    fn toml_and_json_give_the_same_spec() {
        let spec = JobSpec::from_toml_str(TOML).unwrap();
        assert_eq!(spec.lora.rank, 16);
        assert_eq!(spec.workers, Workers::Auto);
        assert_eq!(spec.micro_batches(), 4);
        assert_eq!(spec.micro_batch_size(), 2);
        assert_eq!(spec.train.precision.as_deref(), Some("bf16"));
        let json = spec.to_json().unwrap();
        assert!(json.contains("\"workers\":\"auto\""), "{json}");
        assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
    }

    #[test]
    fn defaults_fill_lora_and_micro_batches() {
        let spec = JobSpec::from_json_str(
            r#"{"base_model":"m","data":"d","workers":3,"train":{"epochs":2,"batch_size":4}}"#,
        )
        .unwrap();
        assert_eq!(spec.workers, Workers::Count(3));
        assert_eq!(spec.lora, LoraSpec::default());
        assert_eq!(spec.micro_batches(), 4);
        assert_eq!(spec.total_steps(10), 6);
    }

    fn err_of(toml_text: &str) -> String {
        JobSpec::from_toml_str(toml_text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field_and_limit() {
        let base = |lora: &str, train: &str, top: &str| {
            format!("base_model = \"m\"\ndata = \"d\"\n{top}\n[lora]\n{lora}\n[train]\n{train}\n")
        };
        let e = err_of(&base("rank = 0", "steps = 1", ""));
        assert!(e.contains("lora.rank = 0") && e.contains("1..=1024"), "{e}");
        let e = err_of(&base("dropout = 1.5", "steps = 1", ""));
        assert!(e.contains("lora.dropout"), "{e}");
        let e = err_of(&base("", "steps = 1\nepochs = 2", ""));
        assert!(e.contains("exclusive"), "{e}");
        let e = err_of(&base("", "batch_size = 6\ngrad_accum = 4\nsteps = 1", ""));
        assert!(
            e.contains("train.grad_accum = 4 must divide train.batch_size = 6"),
            "{e}"
        );
        let e = err_of(&base("", "steps = 1\nlr = 3.0", ""));
        assert!(e.contains("train.lr = 3"), "{e}");
        let e = err_of(&base("", "steps = 1", "workers = 0"));
        assert!(e.contains("workers = 0"), "{e}");
        let e = err_of(&base("", "steps = 1", "workers = \"many\""));
        assert!(e.contains("\"auto\""), "{e}");
        let e = err_of(&base("", "steps = 5\nwarmup = 6", ""));
        assert!(
            e.contains("train.warmup = 6 exceeds train.steps = 5"),
            "{e}"
        );
        let e = err_of(&base("", "steps = 1\nprecision = \"fp16\"", ""));
        assert!(
            e.contains("train.precision = \"fp16\"") && e.contains("f32, bf16"),
            "{e}"
        );
        let e = err_of(&base("", "stepz = 5", ""));
        assert!(e.contains("stepz"), "{e}");
    }

    #[test]
    fn from_path_picks_the_format_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.toml");
        std::fs::write(&p, TOML).unwrap();
        assert_eq!(JobSpec::from_path(&p).unwrap().train.seed, 7);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        let e = JobSpec::from_path(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json"), "{e}");
        assert_eq!(e.matches("invalid job spec").count(), 1, "said once: {e}");
    }
}
