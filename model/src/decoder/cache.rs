//! The KV cache: per-layer keys and values of every position seen so far, which of them are
//! padding, and where each row's RoPE positions continue.

use burn::tensor::Tensor;

use crate::error::ModelError;

/// Keys and values of earlier positions, for incremental decoding.
///
/// All rows share one length (left padding keeps them aligned); per row the cache remembers
/// which positions are padding (never attended to) and how many real tokens it has seen
/// (the next RoPE position).
#[derive(Debug, Clone)]
pub struct KvCache {
    batch: usize,
    /// Per layer: keys transposed `[batch, kv_heads, head_dim, len]` and values
    /// `[batch, kv_heads, len, head_dim]`.
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Per row: whether each cached position is a real token.
    key_valid: Vec<Vec<bool>>,
    /// Per row: the RoPE position of the next real token.
    next_pos: Vec<usize>,
    len: usize,
}

/// What one forward call adds: RoPE positions and key validity of its positions.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// RoPE position of every new position, row-major `[batch * seq]`.
    pub positions: Vec<usize>,
    /// Validity of every key position (cached then new), per row.
    pub key_valid: Vec<Vec<bool>>,
    /// Cached length before this call.
    pub past: usize,
    /// Next RoPE position per row after this call.
    pub next_pos: Vec<usize>,
}

impl Plan {
    /// A plan for a call without a cache.
    pub fn fresh(pads: &[usize], s: usize) -> Self {
        let b = pads.len();
        Self::build(pads, s, &vec![Vec::new(); b], &vec![0; b], 0)
    }

    fn build(pads: &[usize], s: usize, valid: &[Vec<bool>], next: &[usize], past: usize) -> Self {
        let mut positions = Vec::with_capacity(pads.len() * s);
        let mut key_valid = Vec::with_capacity(pads.len());
        let mut next_pos = Vec::with_capacity(pads.len());
        for (i, &pad) in pads.iter().enumerate() {
            let mut kv = valid[i].clone();
            for t in 0..s {
                if t < pad {
                    positions.push(0);
                    kv.push(false);
                } else {
                    positions.push(next[i] + t - pad);
                    kv.push(true);
                }
            }
            next_pos.push(next[i] + s - pad);
            key_valid.push(kv);
        }
        Self {
            positions,
            key_valid,
            past,
            next_pos,
        }
    }
}

impl KvCache {
    /// An empty cache for `batch` rows and `layers` layers.
    pub fn new(batch: usize, layers: usize) -> Self {
        Self {
            batch,
            layers: vec![None; layers],
            key_valid: vec![Vec::new(); batch],
            next_pos: vec![0; batch],
            len: 0,
        }
    }

    /// Rows in the cache.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions cached (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Real (non-padding) tokens cached for each row.
    pub fn real_lengths(&self) -> &[usize] {
        &self.next_pos
    }

    pub(crate) fn plan(&self, pads: &[usize], s: usize) -> Result<Plan, ModelError> {
        if pads.len() != self.batch {
            return Err(ModelError::Input(format!(
                "left_pad has {} entries for a cache of {} rows",
                pads.len(),
                self.batch
            )));
        }
        Ok(Plan::build(
            pads,
            s,
            &self.key_valid,
            &self.next_pos,
            self.len,
        ))
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut Option<(Tensor<4>, Tensor<4>)> {
        &mut self.layers[layer]
    }

    pub(crate) fn commit(&mut self, plan: Plan) {
        let added = plan.key_valid.first().map_or(0, Vec::len) - plan.past;
        self.len += added;
        self.key_valid = plan.key_valid;
        self.next_pos = plan.next_pos;
    }
}
