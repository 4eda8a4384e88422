//! The attribution index: every training example's gradient features at K checkpoints,
//! with the learning rate that each checkpoint stands for, and its byte format.
//!
//! Bytes: `TRBATTR1`, the header's length (u64 little-endian), the header as JSON, then the
//! features as f32 little-endian, checkpoint-major (`[checkpoint][example][dim]`). The
//! header names the projection and layout, so a reader can project a new gradient the same
//! way without anything else.

use serde::{Deserialize, Serialize};

use crate::project::{BlockLayout, Projection};
use crate::{AttributionError, dot};

const MAGIC: &[u8; 8] = b"TRBATTR1";

/// One checkpoint of the index: where it was taken and the learning rate that weighs it in
/// TracIn-CP (the sum of the step learning rates it stands for, so that Σ lr × dot
/// approximates the integral of the loss change over training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexCheckpoint {
    /// Optimizer steps completed when it was taken.
    pub step: u64,
    /// Its weight in TracIn-CP and DataInf sums.
    pub lr: f64,
}

/// Everything about an index except the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// How full gradients became features.
    pub projection: Projection,
    /// The layout of the full gradient (what a projector takes).
    pub gradient_layout: BlockLayout,
    /// The layout of one stored feature vector.
    pub feature_layout: BlockLayout,
    /// The checkpoints, in training order.
    pub checkpoints: Vec<IndexCheckpoint>,
    /// Example ids (the datanet's content ids), in stored order.
    pub example_ids: Vec<String>,
    /// Free-form provenance (base and adapter digests, data version, loss normalisation).
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// Each example's mean completion loss under the trained adapter, in stored order, when
    /// recorded: how well training fit it ([`crate::score::suspects`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_losses: Option<Vec<f32>>,
}

/// Training features at every checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributionIndex {
    /// What the numbers mean.
    pub header: IndexHeader,
    /// `[checkpoint][example][dim]`, flattened.
    features: Vec<f32>,
}

impl AttributionIndex {
    /// An index from its header and features (`features[c][i]` for checkpoint `c`, example
    /// `i`, each of the feature layout's length).
    pub fn new(
        header: IndexHeader,
        features: Vec<Vec<Vec<f32>>>,
    ) -> Result<Self, AttributionError> {
        let dims = header.feature_layout.len();
        let n = header.example_ids.len();
        if features.len() != header.checkpoints.len() {
            return Err(AttributionError::shape(
                "index checkpoints",
                header.checkpoints.len(),
                features.len(),
            ));
        }
        let mut flat = Vec::with_capacity(features.len() * n * dims);
        for per in &features {
            if per.len() != n {
                return Err(AttributionError::shape("index examples", n, per.len()));
            }
            for f in per {
                if f.len() != dims {
                    return Err(AttributionError::shape("feature length", dims, f.len()));
                }
                flat.extend_from_slice(f);
            }
        }
        Ok(Self {
            header,
            features: flat,
        })
    }

    /// Examples indexed.
    pub fn len(&self) -> usize {
        self.header.example_ids.len()
    }

    /// Whether no example is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checkpoints stored.
    pub fn checkpoints(&self) -> usize {
        self.header.checkpoints.len()
    }

    /// Length of one feature vector.
    pub fn dims(&self) -> usize {
        self.header.feature_layout.len()
    }

    /// The features of example `i` at checkpoint `c`.
    pub fn feature(&self, c: usize, i: usize) -> &[f32] {
        let d = self.dims();
        let at = (c * self.len() + i) * d;
        &self.features[at..at + d]
    }

    /// Bytes of features per example (all checkpoints).
    pub fn bytes_per_example(&self) -> usize {
        self.checkpoints() * self.dims() * 4
    }

    /// Cosine similarity of examples `i` and `j` over all checkpoints' features together.
    pub fn cosine(&self, i: usize, j: usize) -> f64 {
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for c in 0..self.checkpoints() {
            let (a, b) = (self.feature(c, i), self.feature(c, j));
            ab += dot(a, b);
            aa += dot(a, a);
            bb += dot(b, b);
        }
        if aa <= 0.0 || bb <= 0.0 {
            return 0.0;
        }
        ab / (aa.sqrt() * bb.sqrt())
    }

    /// A copy with each checkpoint's mean feature subtracted from every example: what
    /// [`AttributionIndex::cosine`] on it compares is what is specific to each example (the
    /// gradient-cluster rule in [`crate::shares`] uses this).
    pub fn centered(&self) -> Self {
        let (n, d) = (self.len(), self.dims());
        let mut out = self.clone();
        for c in 0..self.checkpoints() {
            let mean = crate::score::mean_feature(self, c);
            for i in 0..n {
                let at = (c * n + i) * d;
                for (x, m) in out.features[at..at + d].iter_mut().zip(&mean) {
                    *x -= m;
                }
            }
        }
        out
    }

    /// The index as bytes (see the module docs).
    pub fn to_bytes(&self) -> Result<Vec<u8>, AttributionError> {
        let header = serde_json::to_vec(&self.header)
            .map_err(|e| AttributionError::Format(format!("header: {e}")))?;
        let mut out = Vec::with_capacity(16 + header.len() + self.features.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for x in &self.features {
            out.extend_from_slice(&x.to_le_bytes());
        }
        Ok(out)
    }

    /// Reads bytes written by [`AttributionIndex::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttributionError> {
        let err = |m: &str| AttributionError::Format(m.to_owned());
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(err("not an attribution index (bad magic)"));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[8..16]);
        let hlen = usize::try_from(u64::from_le_bytes(len)).map_err(|_| err("header length"))?;
        let body = bytes
            .get(16..16usize.saturating_add(hlen))
            .ok_or_else(|| err("truncated header"))?;
        let header: IndexHeader = serde_json::from_slice(body)
            .map_err(|e| AttributionError::Format(format!("header: {e}")))?;
        let rest = &bytes[16 + hlen..];
        let want =
            header.checkpoints.len() * header.example_ids.len() * header.feature_layout.len();
        if rest.len() != want * 4 {
            return Err(AttributionError::Format(format!(
                "expected {} feature bytes, found {}",
                want * 4,
                rest.len()
            )));
        }
        let features = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { header, features })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn small_index() -> AttributionIndex {
        let layout = BlockLayout::new(vec![("l0".into(), 2), ("l1".into(), 1)]);
        let header = IndexHeader {
            projection: Projection::Exact,
            gradient_layout: layout.clone(),
            feature_layout: layout,
            checkpoints: vec![
                IndexCheckpoint { step: 5, lr: 0.5 },
                IndexCheckpoint { step: 10, lr: 0.25 },
            ],
            example_ids: vec!["a".into(), "b".into()],
            provenance: serde_json::json!({"base": "x"}),
            fit_losses: None,
        };
        AttributionIndex::new(
            header,
            vec![
                vec![vec![1.0, 0.0, 2.0], vec![0.0, 1.0, -1.0]],
                vec![vec![2.0, 0.0, 4.0], vec![0.0, 3.0, 0.5]],
            ],
        )
        .unwrap()
    }

    #[test]
    fn bytes_round_trip_and_reject_damage() {
        let idx = small_index();
        let bytes = idx.to_bytes().unwrap();
        assert_eq!(AttributionIndex::from_bytes(&bytes).unwrap(), idx);
        assert_eq!(idx.feature(1, 1), &[0.0, 3.0, 0.5]);
        assert_eq!(idx.bytes_per_example(), 2 * 3 * 4);
        assert!(AttributionIndex::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(AttributionIndex::from_bytes(&bad).is_err());
    }

    #[test]
    fn cosine_spans_checkpoints() {
        let idx = small_index();
        assert!((idx.cosine(0, 0) - 1.0).abs() < 1e-12);
        // a·b = (0 + 0 - 2) + (0 + 0 + 2) = 0
        assert!(idx.cosine(0, 1).abs() < 1e-12);
    }

    #[test]
    fn centering_subtracts_the_mean_per_checkpoint() {
        let c = small_index().centered();
        assert_eq!(c.feature(0, 0), &[0.5, -0.5, 1.5]);
        assert_eq!(c.feature(1, 1), &[-1.0, 1.5, -1.75]);
    }

    #[test]
    fn wrong_shapes_are_refused() {
        let idx = small_index();
        let mut h = idx.header.clone();
        h.example_ids.push("c".into());
        assert!(AttributionIndex::new(h, vec![vec![], vec![]]).is_err());
    }
}
