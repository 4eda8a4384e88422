//! Seeded projections of gradient features, block by block.
//!
//! A feature vector is the concatenation of *blocks* (one per transformer layer: the LoRA
//! A and B gradients of that layer's adapted modules, flattened in canonical order). Each
//! block is projected on its own so that per-layer methods (DataInf's per-layer damping)
//! still see layers after projection.
//!
//! [`Projection::CountSketch`] is a sparse Johnson–Lindenstrauss map (Charikar et al.'s
//! count sketch): coordinate `i` of block `b` is added, with a random sign, to one of `k`
//! buckets, both chosen by a hash of `(seed, b, i)`. The expected dot product of two
//! projected vectors is their exact dot product, with variance at most
//! `2‖x‖²‖y‖²/k`, the same bound as a dense Gaussian projection; it costs one add per
//! gradient coordinate (a dense `k × d` projection would cost `k` multiply-adds per
//! coordinate, more than the backward pass that made the gradient), and its table is
//! rebuilt from the seed instead of stored.

use serde::{Deserialize, Serialize};

use crate::{AttributionError, splitmix64};

/// Named blocks and their lengths, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLayout {
    /// `(name, length)` per block.
    pub blocks: Vec<(String, usize)>,
}

impl BlockLayout {
    /// A layout from block names and lengths.
    pub fn new(blocks: Vec<(String, usize)>) -> Self {
        Self { blocks }
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.blocks.iter().map(|(_, n)| n).sum()
    }

    /// Whether there are no coordinates at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[start, end)` of each block.
    pub fn ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut at = 0;
        self.blocks
            .iter()
            .map(|(_, n)| {
                let r = at..at + n;
                at += n;
                r
            })
            .collect()
    }
}

/// How full gradients become stored features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Projection {
    /// The full gradient, unprojected (small adapters, and the reference for the others).
    Exact,
    /// Count sketch to `k` dims per block (blocks shorter than `k` are kept exact).
    CountSketch { k: usize, seed: u64 },
}

impl Projection {
    /// The output layout for `input`.
    pub fn output_layout(&self, input: &BlockLayout) -> BlockLayout {
        match *self {
            Projection::Exact => input.clone(),
            Projection::CountSketch { k, .. } => BlockLayout::new(
                input
                    .blocks
                    .iter()
                    .map(|(name, n)| (name.clone(), (*n).min(k)))
                    .collect(),
            ),
        }
    }
}

/// A projection made concrete for one input layout (its hash table built once).
#[derive(Debug, Clone)]
pub struct Projector {
    projection: Projection,
    input: BlockLayout,
    output: BlockLayout,
    /// Per input coordinate: output index, with the sign in the top bit (count sketch).
    table: Vec<u32>,
}

const SIGN: u32 = 1 << 31;

impl Projector {
    /// Builds the projector; `k` must be positive and below 2³¹.
    pub fn new(projection: Projection, input: BlockLayout) -> Result<Self, AttributionError> {
        let output = projection.output_layout(&input);
        let mut table = Vec::new();
        if let Projection::CountSketch { k, seed } = projection {
            if k == 0 || k >= SIGN as usize {
                return Err(AttributionError::invalid(
                    "projection.k",
                    format!("{k} must be between 1 and 2^31-1"),
                ));
            }
            if output.len() >= SIGN as usize {
                return Err(AttributionError::invalid(
                    "projection",
                    "output longer than 2^31 coordinates",
                ));
            }
            table.reserve(input.len());
            let out_ranges = output.ranges();
            for (b, (_, n)) in input.blocks.iter().enumerate() {
                let base = out_ranges[b].start as u32;
                let kb = out_ranges[b].len();
                let block_key = splitmix64(seed ^ splitmix64(b as u64 + 1));
                for i in 0..*n {
                    if *n <= k {
                        table.push(base + i as u32);
                        continue;
                    }
                    let h = splitmix64(block_key ^ (i as u64));
                    let bucket = (h % kb as u64) as u32;
                    let sign = if h >> 63 == 1 { SIGN } else { 0 };
                    table.push((base + bucket) | sign);
                }
            }
        }
        Ok(Self {
            projection,
            input,
            output,
            table,
        })
    }

    /// The projection this applies.
    pub fn projection(&self) -> Projection {
        self.projection
    }

    /// The layout it expects.
    pub fn input_layout(&self) -> &BlockLayout {
        &self.input
    }

    /// The layout it produces.
    pub fn output_layout(&self) -> &BlockLayout {
        &self.output
    }

    /// Projects one full gradient (laid out as [`Projector::input_layout`]).
    pub fn project(&self, full: &[f32]) -> Result<Vec<f32>, AttributionError> {
        if full.len() != self.input.len() {
            return Err(AttributionError::shape(
                "gradient length",
                self.input.len(),
                full.len(),
            ));
        }
        if matches!(self.projection, Projection::Exact) {
            return Ok(full.to_vec());
        }
        let mut out = vec![0.0f32; self.output.len()];
        for (&x, &t) in full.iter().zip(&self.table) {
            let j = (t & !SIGN) as usize;
            if t & SIGN == 0 {
                out[j] += x;
            } else {
                out[j] -= x;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot;

    fn layout() -> BlockLayout {
        BlockLayout::new(vec![("l0".into(), 5000), ("l1".into(), 3)])
    }

    fn vector(seed: u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((splitmix64(seed ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
            .collect()
    }

    #[test]
    fn exact_is_identity_and_short_blocks_stay_exact() {
        let p = Projector::new(Projection::Exact, layout()).unwrap();
        let x = vector(1, 5003);
        assert_eq!(p.project(&x).unwrap(), x);
        let s = Projector::new(Projection::CountSketch { k: 64, seed: 7 }, layout()).unwrap();
        let y = s.project(&x).unwrap();
        assert_eq!(y.len(), 64 + 3);
        assert_eq!(&y[64..], &x[5000..]);
    }

    #[test]
    fn same_seed_same_bits_other_seed_other_bits() {
        let x = vector(2, 5003);
        let a = Projector::new(Projection::CountSketch { k: 64, seed: 7 }, layout()).unwrap();
        let b = Projector::new(Projection::CountSketch { k: 64, seed: 7 }, layout()).unwrap();
        let c = Projector::new(Projection::CountSketch { k: 64, seed: 8 }, layout()).unwrap();
        assert_eq!(a.project(&x).unwrap(), b.project(&x).unwrap());
        assert_ne!(a.project(&x).unwrap(), c.project(&x).unwrap());
    }

    #[test]
    fn count_sketch_preserves_dot_products_within_its_bound() {
        // Correlated vectors: y = x + noise. Averaged over seeds the sketch's dot product
        // is unbiased; each estimate is within 4 standard deviations of the bound.
        let n = 5000;
        let x = vector(3, n);
        let noise = vector(4, n);
        let y: Vec<f32> = x.iter().zip(&noise).map(|(a, b)| a + 0.5 * b).collect();
        let lay = BlockLayout::new(vec![("b".into(), n)]);
        let exact = dot(&x, &y);
        let k = 512;
        let sd = (2.0 * dot(&x, &x) * dot(&y, &y) / k as f64).sqrt();
        let mut mean = 0.0;
        for seed in 0..40 {
            let p = Projector::new(Projection::CountSketch { k, seed }, lay.clone()).unwrap();
            let est = dot(&p.project(&x).unwrap(), &p.project(&y).unwrap());
            assert!((est - exact).abs() < 4.0 * sd, "{est} vs {exact} (sd {sd})");
            mean += est / 40.0;
        }
        assert!((mean - exact).abs() < sd, "mean {mean} vs {exact}");
    }

    #[test]
    fn wrong_length_and_bad_k_are_errors() {
        let p = Projector::new(Projection::CountSketch { k: 8, seed: 0 }, layout()).unwrap();
        assert!(matches!(
            p.project(&[1.0; 3]),
            Err(AttributionError::Shape { .. })
        ));
        assert!(Projector::new(Projection::CountSketch { k: 0, seed: 0 }, layout()).is_err());
    }
}
