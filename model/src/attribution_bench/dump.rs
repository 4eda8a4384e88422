//! `bench attribution --dump-features DIR`: the index's and the answers' gradient features
//! as raw little-endian f32 files plus a JSON description, so that scoring methods can be
//! tried offline (`scripts/attribution/methods.py`) and checked against the scores the
//! benchmark computed, which are written beside them.
//!
//! Files: `index.f32` (`[checkpoints][examples][dims]`), `queries.f32`
//! (`[queries][query checkpoints][dims]`) and `meta.json` (shapes, learning rates, the
//! feature blocks, each row's contributor, each query's owner and every method's scores).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tributary_attribution::AttributionIndex;

use crate::error::ModelError;

/// One attributed answer, as dumped.
#[derive(Debug, Clone, Serialize)]
struct DumpedQuery {
    owner: String,
    /// `(method, scores)` as the benchmark computed them.
    scores: Vec<(String, Vec<f64>)>,
}

/// Collects the answers' features while the benchmark runs, then writes everything.
#[derive(Debug)]
pub struct FeatureDump {
    dir: PathBuf,
    query_file: std::io::BufWriter<std::fs::File>,
    query_checkpoints: Option<usize>,
    queries: Vec<DumpedQuery>,
}

fn io_err(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Input(format!("--dump-features: {}: {e}", path.display()))
}

fn write_f32s(w: &mut impl std::io::Write, xs: &[f32], path: &Path) -> Result<(), ModelError> {
    for x in xs {
        w.write_all(&x.to_le_bytes()).map_err(|e| io_err(path, e))?;
    }
    Ok(())
}

impl FeatureDump {
    /// Creates `dir` (and its parents) and opens the answers' feature file.
    pub fn create(dir: &Path) -> Result<Self, ModelError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let path = dir.join("queries.f32");
        let file = std::fs::File::create(&path).map_err(|e| io_err(&path, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            query_file: std::io::BufWriter::new(file),
            query_checkpoints: None,
            queries: Vec::new(),
        })
    }

    /// Appends one answer: its features at each checkpoint it was computed for, its owner
    /// and every method's scores.
    pub fn push_query(
        &mut self,
        features: &[Vec<f32>],
        owner: &str,
        scores: &[(String, Vec<f64>)],
    ) -> Result<(), ModelError> {
        if *self.query_checkpoints.get_or_insert(features.len()) != features.len() {
            return Err(ModelError::Input(
                "--dump-features: answers with different checkpoint counts".into(),
            ));
        }
        let path = self.dir.join("queries.f32");
        for f in features {
            write_f32s(&mut self.query_file, f, &path)?;
        }
        self.queries.push(DumpedQuery {
            owner: owner.to_owned(),
            scores: scores.to_vec(),
        });
        Ok(())
    }

    /// Writes `counterfactual.json`: each LDS half's kept rows and the answers' losses
    /// under the adapter retrained on it.
    pub fn counterfactual(
        &mut self,
        report: &super::counterfactual::CounterfactualReport,
    ) -> Result<(), ModelError> {
        let path = self.dir.join("counterfactual.json");
        let body = serde_json::json!({
            "masks": report.masks,
            "losses": report.subset_losses,
        });
        std::fs::write(&path, body.to_string()).map_err(|e| io_err(&path, e))
    }

    /// Writes the index and `meta.json`; `contributors[i]` owns index row `i`.
    pub fn finish(
        mut self,
        index: &AttributionIndex,
        contributors: &[String],
    ) -> Result<PathBuf, ModelError> {
        let qpath = self.dir.join("queries.f32");
        self.query_file.flush().map_err(|e| io_err(&qpath, e))?;
        let ipath = self.dir.join("index.f32");
        let file = std::fs::File::create(&ipath).map_err(|e| io_err(&ipath, e))?;
        let mut w = std::io::BufWriter::new(file);
        for c in 0..index.checkpoints() {
            for i in 0..index.len() {
                write_f32s(&mut w, index.feature(c, i), &ipath)?;
            }
        }
        w.flush().map_err(|e| io_err(&ipath, e))?;
        let meta = serde_json::json!({
            "examples": index.len(),
            "dims": index.dims(),
            "checkpoint_lrs": index.header.checkpoints.iter().map(|c| c.lr).collect::<Vec<_>>(),
            "query_checkpoints": self.query_checkpoints.unwrap_or(0),
            "blocks": index.header.feature_layout.blocks,
            "contributors": contributors,
            "suspects": tributary_attribution::score::suspects(index),
            "fit_losses": index.header.fit_losses,
            "queries": self.queries,
        });
        let mpath = self.dir.join("meta.json");
        std::fs::write(&mpath, meta.to_string()).map_err(|e| io_err(&mpath, e))?;
        Ok(self.dir)
    }
}
