//! Influence math over per-example gradient features (projection, TracIn/DataInf-style
//! scores), verbatim-span evidence, and aggregation to contributor shares with anti-gaming
//! rules. Knows nothing of model internals or storage: the `model` crate computes the
//! gradients, callers store what this crate returns.
//!
//! - [`project`]: seeded, reproducible projections of per-layer gradient blocks to k dims.
//! - [`index`]: the attribution index (training features at K checkpoints) and its bytes.
//! - [`score`]: TracIn-CP and a DataInf-style damped per-layer preconditioned score.
//! - [`bm25`]: the text-retrieval baseline the gradient methods must beat.
//! - [`verbatim`]: a suffix array over tokenized training texts; verbatim spans as evidence.
//! - [`shares`]: scores to integer contributor shares (clipping, top-k, clusters, rounding).
//! - [`fees`]: an answer's fee split between the adapter's builder and the contributors.
//! - [`metrics`]: AUC, recall@n, top-1 accuracy and Spearman for the benchmark.
//!
//! Sign convention everywhere: a positive score means the training example made the
//! answer more likely (its gradient step lowered the answer's loss).
// Indexing stays allowed here: pure math over feature vectors whose lengths the index header
// fixes and checks when features are loaded (issue 12 tracks moving it to checked access).
#![allow(clippy::indexing_slicing)]

pub mod bm25;
pub mod fees;
pub mod index;
pub mod metrics;
pub mod project;
pub mod score;
pub mod shares;
pub mod verbatim;

pub use index::{AttributionIndex, IndexCheckpoint, IndexHeader};
pub use project::{BlockLayout, Projection, Projector};
pub use score::{Method, ScoreParams};
pub use shares::{Candidate, ShareParams, Shares};

/// Errors from attribution math: inputs of the wrong shape or out of range.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// A field is outside its allowed range.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Two things that must have the same length or layout do not.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// Index bytes that cannot be read.
    #[error("attribution index bytes: {0}")]
    Format(String),
}

impl AttributionError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn shape(what: &'static str, expected: usize, found: usize) -> Self {
        Self::Shape {
            what,
            expected,
            found,
        }
    }
}

/// SplitMix64: the one hash behind every seeded choice in this crate (stable across
/// platforms and builds, so a projection made today is the same projection next year).
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Dot product accumulated in f64 in index order (the same bits on every machine).
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut s = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        s += f64::from(*x) * f64::from(*y);
    }
    s
}
