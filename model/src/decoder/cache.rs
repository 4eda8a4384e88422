//! The KV cache: per-layer keys and values of every position seen so far, which of them are
//! padding, and where each row's RoPE positions continue.
//!
//! The keys and values live in one of two stores, whichever path last ran on the cache:
//! - burn tensors (the burn decoder path: many rows, dense weights, autodiff), appended
//!   with `Tensor::cat` per call;
//! - host buffers ([`HostKv`], the host decode step of `host_step.rs`), preallocated per
//!   layer and appended in place; the capacity doubles when it runs out, so a step never
//!   copies what is already cached.
//!
//! A call on the other path converts the store once (a prompt of more than 256 rows fills
//! the burn store, the decode steps after it convert it to the host store at their first
//! step and then keep it); the positions' bookkeeping is shared by both.
// Decoder math over tensors whose shapes were checked when the checkpoint loaded
// (`weights::TensorStore::tensor`, `gguf::mapping`), indexed in hot loops. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::ModelError;
use crate::weights::read_f32;

/// Per layer, in the burn store: keys transposed `[batch, kv_heads, head_dim, len]` and values
/// `[batch, kv_heads, len, head_dim]`.
pub(crate) type BurnLayers = Vec<Option<(Tensor<4>, Tensor<4>)>>;

/// Keys and values of earlier positions, for incremental decoding.
///
/// All rows share one length (left padding keeps them aligned); per row the cache remembers
/// which positions are padding (never attended to) and how many real tokens it has seen
/// (the next RoPE position).
#[derive(Debug, Clone)]
pub struct KvCache {
    batch: usize,
    layer_count: usize,
    store: Store,
    /// Per row: whether each cached position is a real token.
    key_valid: Vec<Vec<bool>>,
    /// Per row: the RoPE position of the next real token.
    next_pos: Vec<usize>,
    len: usize,
}

/// Where the cached keys and values are.
#[derive(Debug, Clone)]
enum Store {
    Burn(BurnLayers),
    Host(HostKv),
}

/// Keys and values in host memory: per layer two buffers `[batch, kv_heads, capacity,
/// head_dim]` (row-major), of which the first `len` positions are filled.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    batch: usize,
    heads: usize,
    dim: usize,
    capacity: usize,
    /// Per layer: keys and values.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

/// Smallest capacity a host store starts with (positions).
const MIN_CAPACITY: usize = 16;

impl HostKv {
    fn new(batch: usize, layers: usize, heads: usize, dim: usize, capacity: usize) -> Self {
        let size = batch * heads * capacity * dim;
        Self {
            batch,
            heads,
            dim,
            capacity,
            layers: vec![(vec![0.0; size], vec![0.0; size]); layers],
        }
    }

    /// Positions each row and head can hold before the buffers grow.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Makes room for `needed` positions, keeping the first `len`: doubles the capacity (or
    /// more, when `needed` asks for more) and copies the filled part once.
    fn reserve(&mut self, needed: usize, len: usize) {
        if needed <= self.capacity {
            return;
        }
        let cap = needed.max(self.capacity * 2);
        let (old, d) = (self.capacity, self.dim);
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                let mut grown = vec![0.0f32; self.batch * self.heads * cap * d];
                for (src, dst) in buf.chunks(old * d).zip(grown.chunks_mut(cap * d)) {
                    dst[..len * d].copy_from_slice(&src[..len * d]);
                }
                *buf = grown;
            }
        }
        self.capacity = cap;
    }

    /// Writes key and value vectors (`head_dim` each) of `row`, `head` at position `pos`.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        row: usize,
        head: usize,
        pos: usize,
        key: &[f32],
        value: &[f32],
    ) {
        let d = self.dim;
        let at = ((row * self.heads + head) * self.capacity + pos) * d;
        let (k, v) = &mut self.layers[layer];
        k[at..at + d].copy_from_slice(key);
        v[at..at + d].copy_from_slice(value);
    }

    /// The key and value buffers of `row`, `head` in `layer`: `[capacity, head_dim]` each.
    pub(crate) fn head(&self, layer: usize, row: usize, head: usize) -> (&[f32], &[f32]) {
        let span = self.capacity * self.dim;
        let at = (row * self.heads + head) * span;
        let (k, v) = &self.layers[layer];
        (&k[at..at + span], &v[at..at + span])
    }

    /// Reads a burn store of `len` positions.
    fn from_burn(
        layers: &BurnLayers,
        batch: usize,
        heads: usize,
        dim: usize,
        len: usize,
    ) -> Result<Self, ModelError> {
        let mut host = Self::new(
            batch,
            layers.len(),
            heads,
            dim,
            len.next_power_of_two().max(MIN_CAPACITY),
        );
        let cap = host.capacity;
        for (l, slot) in layers.iter().enumerate() {
            let Some((kt, v)) = slot else { continue };
            let [kb, kh, kd, kl] = kt.dims();
            if [kb, kh, kd, kl] != [batch, heads, dim, len] || v.dims() != [batch, heads, len, dim]
            {
                return Err(ModelError::Input(format!(
                    "KV cache layer {l} holds keys {:?}, expected [{batch}, {heads}, {dim}, {len}]",
                    kt.dims()
                )));
            }
            let kt = read_f32(kt, "cached keys")?;
            let v = read_f32(v, "cached values")?;
            let (hk, hv) = &mut host.layers[l];
            for bh in 0..batch * heads {
                for p in 0..len {
                    let dst = (bh * cap + p) * dim;
                    hv[dst..dst + dim].copy_from_slice(&v[(bh * len + p) * dim..][..dim]);
                    for i in 0..dim {
                        hk[dst + i] = kt[(bh * dim + i) * len + p];
                    }
                }
            }
        }
        Ok(host)
    }

    /// The first `len` positions as a burn store on `device`.
    fn to_burn(&self, len: usize, device: &Device) -> BurnLayers {
        let (b, h, d, cap) = (self.batch, self.heads, self.dim, self.capacity);
        self.layers
            .iter()
            .map(|(k, v)| {
                if len == 0 {
                    return None;
                }
                let mut kt = vec![0.0f32; b * h * d * len];
                let mut vv = vec![0.0f32; b * h * len * d];
                for bh in 0..b * h {
                    for p in 0..len {
                        let src = (bh * cap + p) * d;
                        vv[(bh * len + p) * d..][..d].copy_from_slice(&v[src..src + d]);
                        for i in 0..d {
                            kt[(bh * d + i) * len + p] = k[src + i];
                        }
                    }
                }
                Some((
                    Tensor::from_data(TensorData::new(kt, [b, h, d, len]), device),
                    Tensor::from_data(TensorData::new(vv, [b, h, len, d]), device),
                ))
            })
            .collect()
    }
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
            layer_count: layers,
            store: Store::Burn(vec![None; layers]),
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

    /// Layers in the cache.
    pub(crate) fn layer_count(&self) -> usize {
        self.layer_count
    }

    /// Whether the keys and values are in the host store (the host decode step ran last).
    pub fn is_on_host(&self) -> bool {
        matches!(self.store, Store::Host(_))
    }

    /// Positions the host store holds before it grows (0 in the burn store).
    pub fn host_capacity(&self) -> usize {
        match &self.store {
            Store::Host(h) => h.capacity(),
            Store::Burn(_) => 0,
        }
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

    /// The burn store's layers (converting a host store once, onto `device`).
    pub(crate) fn burn_layers(&mut self, device: &Device) -> Result<&mut BurnLayers, ModelError> {
        if let Store::Host(h) = &self.store {
            self.store = Store::Burn(h.to_burn(self.len, device));
        }
        match &mut self.store {
            Store::Burn(layers) => Ok(layers),
            Store::Host(_) => Err(ModelError::Input(
                "KV cache: the host store was not converted".into(),
            )),
        }
    }

    /// The host store with room for `added` more positions, for `heads` key/value heads of
    /// `dim` values (converting a burn store once).
    pub(crate) fn host_store(
        &mut self,
        heads: usize,
        dim: usize,
        added: usize,
    ) -> Result<&mut HostKv, ModelError> {
        let needed = self.len + added;
        if let Store::Burn(layers) = &self.store {
            let host = if self.len == 0 {
                HostKv::new(
                    self.batch,
                    self.layer_count,
                    heads,
                    dim,
                    needed.next_power_of_two().max(MIN_CAPACITY),
                )
            } else {
                HostKv::from_burn(layers, self.batch, heads, dim, self.len)?
            };
            self.store = Store::Host(host);
        }
        match &mut self.store {
            Store::Host(h) if h.heads == heads && h.dim == dim => {
                h.reserve(needed, self.len);
                Ok(h)
            }
            _ => Err(ModelError::Input(format!(
                "KV cache does not hold {heads} heads of {dim} values"
            ))),
        }
    }

    pub(crate) fn commit(&mut self, plan: Plan) {
        let added = plan.key_valid.first().map_or(0, Vec::len) - plan.past;
        self.len += added;
        self.key_valid = plan.key_valid;
        self.next_pos = plan.next_pos;
    }
}

/// A host store for one call without a cache: room for `len` positions.
pub(crate) fn scratch_store(
    batch: usize,
    layers: usize,
    heads: usize,
    dim: usize,
    len: usize,
) -> HostKv {
    HostKv::new(batch, layers, heads, dim, len.max(1))
}
