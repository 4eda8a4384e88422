//! LoRA dropout with masks that depend only on (seed, step, example, call), never on how
//! examples are grouped into micro-batches or workers, nor on padding: a data-parallel run
//! draws exactly the masks a single-worker run draws.

use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mixes two words into a seed (SplitMix64 finaliser).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Inverted dropout on the LoRA path (kept values scaled by `1/(1-p)`, as
/// `torch.nn.Dropout`). Each call (one per adapted module, in forward order) draws, for
/// every example, a mask over that example's real tokens from a generator seeded by
/// (example key, call number).
#[derive(Debug, Clone)]
pub(crate) struct LoraDropout {
    p: f64,
    /// One key per batch row (derived from seed, step and the example's index in the step).
    row_keys: Vec<u64>,
    /// Leading padding positions per row.
    pads: Vec<usize>,
    seq: usize,
    calls: u64,
}

impl LoraDropout {
    pub fn new(p: f64, row_keys: Vec<u64>, pads: Vec<usize>, seq: usize) -> Self {
        Self {
            p,
            row_keys,
            pads,
            seq,
            calls: 0,
        }
    }

    /// Applies dropout to `x` `[rows * seq, d]`.
    pub fn apply(&mut self, x: Tensor<2>) -> Tensor<2> {
        self.calls += 1;
        if self.p <= 0.0 {
            return x;
        }
        let [n, d] = x.dims();
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let mut mask = vec![0.0f32; n * d];
        for (i, (&key, &pad)) in self.row_keys.iter().zip(&self.pads).enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(key, self.calls));
            let start = (i * self.seq + pad) * d;
            let end = ((i + 1) * self.seq * d).min(n * d);
            for m in mask.get_mut(start..end).unwrap_or_default() {
                if rng.random::<f64>() < keep {
                    *m = scale;
                }
            }
        }
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [n, d]), &x.device());
        x.mul(mask)
    }
}
