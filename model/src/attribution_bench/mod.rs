//! `tributary bench attribution`: attribution measured against a known answer.
//!
//! Contributors each own one planted skill ([`planted`]); one adapter is trained on the
//! union ([`train`]) with its attribution index ([`crate::features::build_index`]); each
//! held-out query is attributed by TracIn-CP, TracIn-cos, DataInf and BM25 and scored
//! against its rightful owner (per-query AUC, recall at |owner's examples|, contributor
//! top-1) ([`run`]); then the attacks ([`attacks`]): an exact copier, a paraphrasing
//! copier, a sybil split and a spammer with corrupted outputs, each with the attacker's
//! share gain over the honest run. The binary only parses flags and prints.
// Benchmarks time real work.
#![allow(clippy::disallowed_methods)]

pub mod attacks;
pub mod counterfactual;
pub mod dump;
pub mod planted;
pub mod run;
pub mod train;

use serde::Serialize;
use tributary_attribution::{Method, Projection, ShareParams};

/// Everything the benchmark can be told.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchOptions {
    /// Passes over the union.
    pub epochs: usize,
    /// Peak learning rate (linear decay).
    pub lr: f64,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// Examples per step.
    pub batch_size: usize,
    /// Longest example in tokens.
    pub max_seq_len: usize,
    /// Trained snapshots also indexed (TracIn-CP; evenly spaced, the last at the end).
    pub checkpoints: usize,
    /// How gradients are projected.
    pub projection: Projection,
    /// DataInf's damping (λ_l = damping × mean ‖g_l‖²).
    pub damping: f64,
    /// The share rules.
    pub shares: ShareParams,
    /// The score shares are computed from.
    pub share_method: Method,
    /// Seed of data order, adapter initialisation and planted data.
    pub seed: u64,
    /// Run the attacks (three more fine-tunes).
    pub attacks: bool,
    /// Queries whose generation is timed (for the cost ratio).
    pub timed_generations: usize,
    /// Use only the final adapter's gradient for queries (one backward pass per answer
    /// instead of one per checkpoint).
    pub final_checkpoint_query: bool,
    /// Write the index's and the answers' features here ([`dump`]).
    pub dump_features: Option<std::path::PathBuf>,
    /// Random halves retrained for the linear datamodeling score (0: none;
    /// [`counterfactual`]).
    pub lds_subsets: usize,
    /// Retrain once without each contributor and compare with the shares.
    pub leave_one_out: bool,
    /// Also index the adapter before the first step (the base model's gradients).
    pub initial_checkpoint: bool,
    /// Index the base-gradient features (the final adapter with B zeroed; see
    /// [`crate::features`]), as production indexes do.
    pub base_gradient: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            epochs: 3,
            lr: 1e-3,
            rank: 16,
            alpha: 32.0,
            batch_size: 8,
            max_seq_len: 128,
            checkpoints: 0,
            projection: Projection::CountSketch { k: 2048, seed: 0 },
            damping: 0.1,
            shares: ShareParams::default(),
            share_method: Method::TracinCcos,
            seed: 0,
            attacks: true,
            timed_generations: 8,
            final_checkpoint_query: false,
            dump_features: None,
            lds_subsets: 0,
            leave_one_out: false,
            initial_checkpoint: false,
            base_gradient: true,
        }
    }
}

/// Quality of one scoring method over all queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodMetrics {
    /// `tracin`, `tracin_cos`, `datainf` or `bm25`.
    pub method: String,
    /// Mean per-query AUC (owner's examples positive).
    pub auc: f64,
    /// Lowest per-query AUC.
    pub auc_min: f64,
    /// Mean recall at |owner's examples|.
    pub recall: f64,
    /// Fraction of queries whose largest share went to the owner.
    pub top1: f64,
}

/// One attack and what it gained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttackResult {
    /// `exact_copier`, `paraphrase_copier`, `sybil_split`, `spammer_garbage`,
    /// `spammer_swapped`.
    pub attack: String,
    /// The attacker's identities' share (fraction of the whole, mean over the queries it
    /// targets) in the honest run.
    pub honest_share: f64,
    /// The same under the attack.
    pub attack_share: f64,
    /// `attack_share − honest_share`, percentage points.
    pub gain_pct: f64,
    /// For the spammer: AUC of self-influence at finding its corrupted examples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_auc: Option<f64>,
    /// For the paraphrasing copier: gradient cosine of each copy to its original (min,
    /// median).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_cosine: Option<(f64, f64)>,
}

/// Costs, measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    /// Seconds training the adapter.
    pub train_seconds: f64,
    /// Seconds building the index (gradients + projection).
    pub index_seconds: f64,
    /// `index_seconds / train_seconds`.
    pub index_over_train: f64,
    /// Milliseconds per training example per epoch inside training steps.
    pub train_ms_per_example_epoch: f64,
    /// Milliseconds per example per checkpoint for its gradient feature.
    pub gradient_ms_per_example: f64,
    /// Milliseconds projecting one gradient.
    pub projection_ms_per_example: f64,
    /// Index bytes per training example (all checkpoints).
    pub index_bytes_per_example: usize,
    /// Full gradient length (coordinates).
    pub gradient_dims: usize,
    /// Stored feature length per checkpoint.
    pub feature_dims: usize,
    /// Milliseconds to attribute one answer (its gradients, scores, shares).
    pub attribution_ms_per_answer: f64,
    /// Milliseconds to generate one answer of the same length (greedy).
    pub generation_ms_per_answer: f64,
    /// `attribution_ms_per_answer / generation_ms_per_answer`.
    pub attribution_over_generation: f64,
}

/// The benchmark's result (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// Contributors in the honest run.
    pub contributors: usize,
    /// Training examples.
    pub examples: usize,
    /// Held-out queries.
    pub queries: usize,
    /// Final training loss of the honest adapter.
    pub final_train_loss: f32,
    /// Per method.
    pub methods: Vec<MethodMetrics>,
    /// The method shares and attacks use.
    pub share_method: String,
    /// Mean-centred gradient cosine between two distinct honest examples of one contributor
    /// (99th percentile), for the cluster threshold.
    pub same_skill_cosine_p99: f64,
    /// The attacks.
    pub attacks: Vec<AttackResult>,
    /// LDS and contributor leave-one-out, when asked for.
    pub counterfactual: Option<counterfactual::CounterfactualReport>,
    /// Costs.
    pub cost: CostReport,
    /// The options it ran with.
    pub options: BenchOptions,
}
