//! A paged KV cache and the forward call that serving's continuous batching runs on it.
//!
//! [`KvCache`](super::KvCache) keeps every row of a batch the same length (left padding),
//! which suits one `generate` call but not a server, where requests join and leave the
//! batch at every token. Here the keys and values of all sequences live in one pool of
//! fixed-size blocks ([`PagedKvCache`], allocated once, so its memory is bounded by its
//! configuration); a sequence owns a list of blocks (its block table, kept by the caller's
//! scheduler), and position `j` of the sequence is slot `blocks[j / block_size] ·
//! block_size + j % block_size` of the pool.
//!
//! [`CausalLm::forward_paged`] runs one step for several sequences at once, each with its
//! own number of new tokens (a prompt chunk, or the one token sampled last) after its own
//! number of cached positions, and each with its own adapter: the new tokens of every
//! sequence are flattened into one `[n, hidden]` batch that goes through the host decode
//! step's layer stack (`host_step::run_layers`: the same kernels, LoRA deltas per row as in
//! the mixed-adapter step), attention reading each token's keys through its sequence's
//! slots. A token attends to the same keys in the same order as in an unpaged call, so the
//! logits equal those of [`CausalLm::forward_last`] on that sequence alone.
// Decoder math over tensors whose shapes were checked when the checkpoint loaded
// (`weights::TensorStore::tensor`, `gguf::mapping`), indexed in hot loops. The parsers of
// untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]

use burn::tensor::{Int, Tensor, TensorData};

use super::CausalLm;
use super::host_math::{Head, Heads, attend_head};
use super::host_step::{self, HostAttention};
use super::linear::HOST_KERNEL_MAX_ROWS;
use super::mixed::{LoraSel, MixedLora};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kernels::pool;
use crate::lora::LoraAdapter;

/// Keys and values of many sequences in blocks of `block_size` positions: per layer and
/// key/value head, one key and one value buffer `[blocks · block_size, head_dim]`.
#[derive(Debug, Clone)]
pub struct PagedKvCache {
    block_size: usize,
    blocks: usize,
    heads: usize,
    dim: usize,
    layers: Vec<Vec<(Vec<f32>, Vec<f32>)>>,
}

impl PagedKvCache {
    /// A pool of `blocks` blocks of `block_size` positions for a model with `cfg`. The
    /// buffers are zero-allocated: pages the OS has not handed out yet cost nothing until a
    /// block is first written.
    pub fn new(cfg: &ModelConfig, block_size: usize, blocks: usize) -> Result<Self, ModelError> {
        if block_size == 0 || blocks == 0 {
            return Err(ModelError::Input(format!(
                "paged KV cache: block_size {block_size} and blocks {blocks} must both be at least 1"
            )));
        }
        let size = blocks
            .checked_mul(block_size)
            .and_then(|p| p.checked_mul(cfg.head_dim))
            .ok_or_else(|| {
                ModelError::Input(format!(
                    "paged KV cache: {blocks} blocks of {block_size} positions overflow"
                ))
            })?;
        let heads = cfg.num_key_value_heads;
        Ok(Self {
            block_size,
            blocks,
            heads,
            dim: cfg.head_dim,
            layers: (0..cfg.num_hidden_layers)
                .map(|_| {
                    (0..heads)
                        .map(|_| (vec![0.0; size], vec![0.0; size]))
                        .collect()
                })
                .collect(),
        })
    }

    /// Bytes one block of `block_size` positions takes for a model with `cfg` (keys and
    /// values of every layer and key/value head, f32).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.num_hidden_layers
            * cfg.num_key_value_heads
            * cfg.head_dim
            * block_size
            * std::mem::size_of::<f32>()
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Bytes of the whole pool.
    pub fn bytes(&self) -> usize {
        2 * self.layers.len()
            * self.heads
            * self.dim
            * self.block_size
            * self.blocks
            * std::mem::size_of::<f32>()
    }
}

/// One sequence's part of a [`CausalLm::forward_paged`] call.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// The new tokens: a chunk of the prompt, or the token sampled last.
    pub tokens: &'a [u32],
    /// Positions of this sequence already in the cache (the first new token's position).
    pub past: usize,
    /// The sequence's blocks, in order; they must cover `past + tokens.len()` positions.
    pub blocks: &'a [u32],
    /// Index into the call's adapters, or `None` for the base alone.
    pub adapter: Option<usize>,
    /// Whether to return the logits after the chunk's last token.
    pub logits: bool,
}

/// The pool with one call's slots: where each new token's keys go and which slots each
/// token attends to.
struct PagedAttention<'a> {
    cache: &'a mut PagedKvCache,
    /// Per new token: its slot.
    write: Vec<usize>,
    /// Per new token: its sequence's slots `0..=position` (a prefix of `seq_slots`).
    reads: Vec<(usize, usize)>,
    /// Per sequence: the slots of positions `0..past + tokens`.
    seq_slots: Vec<Vec<usize>>,
    heads: Heads,
}

impl HostAttention for PagedAttention<'_> {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let d = self.heads.dim;
        let width = self.heads.kv * d;
        let heads = &mut self.cache.layers[layer];
        for (i, &slot) in self.write.iter().enumerate() {
            for (h, (kb, vb)) in heads.iter_mut().enumerate() {
                let src = i * width + h * d;
                kb[slot * d..][..d].copy_from_slice(&k[src..src + d]);
                vb[slot * d..][..d].copy_from_slice(&v[src..src + d]);
            }
        }
    }

    fn attend(&self, layer: usize, q: &[f32], simd: bool) -> Vec<f32> {
        let Heads { query, kv, dim } = self.heads;
        let group = (query / kv.max(1)).max(1);
        let scale = (dim as f64).powf(-0.5) as f32;
        let width = query * dim;
        let mut out = vec![0.0f32; q.len()];
        let heads = &self.cache.layers[layer];
        let n = self.reads.len();
        // Split the tokens over the decode pool when there is enough to share.
        let keys: usize = self.reads.iter().map(|r| r.1).sum();
        let parts = if keys * width < PARALLEL_ATTENTION {
            1
        } else {
            pool::threads().min(n).max(1)
        };
        let rows = n.div_ceil(parts).max(1);
        pool::for_each_chunk_mut(&mut out, rows * width, &|part, chunk| {
            let mut scores = Vec::new();
            for (r, o) in chunk.chunks_mut(width).enumerate() {
                let i = part * rows + r;
                let (seq, visible) = self.reads[i];
                let keys = &self.seq_slots[seq][..visible];
                for h in 0..query {
                    let (kb, vb) = &heads[h / group];
                    let head = Head {
                        keys: kb,
                        values: vb,
                        dim,
                        scale,
                    };
                    let at = i * width + h * dim;
                    attend_head(
                        &q[at..at + dim],
                        &head,
                        keys,
                        &mut scores,
                        &mut o[h * dim..(h + 1) * dim],
                        simd,
                    );
                }
            }
        });
        out
    }
}

/// Keys × query width of one attention call above which its tokens are split over the
/// decode pool's threads.
const PARALLEL_ATTENTION: usize = 1 << 16;

impl CausalLm {
    /// One serving step: runs every sequence's new tokens after its cached positions in
    /// `cache` (keys and values appended to its blocks), each with its adapter from
    /// `adapters`, and returns the logits after the last token of each sequence that asked
    /// for them, in order. Needs the host step (projections packed, bf16 or NF4, see
    /// [`CausalLm::to_packed_f32`]) and at most 256 new tokens in all.
    pub fn forward_paged(
        &self,
        seqs: &[SeqChunk<'_>],
        adapters: &[&LoraAdapter],
        cache: &mut PagedKvCache,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if n == 0 {
            return Err(ModelError::Input("forward_paged: no tokens".into()));
        }
        if n > HOST_KERNEL_MAX_ROWS || !host_step::eligible(self, n) {
            return Err(ModelError::Input(format!(
                "forward_paged: {n} tokens need the host step (at most {HOST_KERNEL_MAX_ROWS} tokens, projections packed and no autodiff)"
            )));
        }
        let heads = host_step::heads_of(self);
        if cache.layers.len() != self.cfg.num_hidden_layers
            || cache.heads != heads.kv
            || cache.dim != heads.dim
        {
            return Err(ModelError::Input(format!(
                "paged KV cache is for {} layers of {} heads of {}, the model has {} of {} of {}",
                cache.layers.len(),
                cache.heads,
                cache.dim,
                self.cfg.num_hidden_layers,
                heads.kv,
                heads.dim
            )));
        }
        let bs = cache.block_size;
        let mut ids = Vec::with_capacity(n);
        let mut positions = Vec::with_capacity(n);
        let mut write = Vec::with_capacity(n);
        let mut reads = Vec::with_capacity(n);
        let mut seq_slots = Vec::with_capacity(seqs.len());
        let mut row_adapter = Vec::with_capacity(n);
        for (k, s) in seqs.iter().enumerate() {
            let total = s.past + s.tokens.len();
            if s.tokens.is_empty() {
                return Err(ModelError::Input(format!(
                    "forward_paged: sequence {k} has no new tokens"
                )));
            }
            if s.blocks.len() * bs < total {
                return Err(ModelError::Input(format!(
                    "forward_paged: sequence {k} needs {total} positions, its {} blocks hold {}",
                    s.blocks.len(),
                    s.blocks.len() * bs
                )));
            }
            if let Some(&b) = s.blocks.iter().find(|&&b| b as usize >= cache.blocks) {
                return Err(ModelError::Input(format!(
                    "forward_paged: sequence {k} names block {b} of a pool of {}",
                    cache.blocks
                )));
            }
            if let Some(a) = s.adapter.filter(|&a| a >= adapters.len()) {
                return Err(ModelError::Input(format!(
                    "forward_paged: sequence {k} names adapter {a} of {}",
                    adapters.len()
                )));
            }
            let slots: Vec<usize> = (0..total)
                .map(|j| s.blocks[j / bs] as usize * bs + j % bs)
                .collect();
            for (t, &id) in s.tokens.iter().enumerate() {
                let pos = s.past + t;
                ids.push(i64::from(id));
                positions.push(pos);
                write.push(slots[pos]);
                reads.push((k, pos + 1));
                row_adapter.push(s.adapter);
            }
            seq_slots.push(slots);
        }
        let mixed = MixedLora::from_refs(adapters.to_vec(), &row_adapter)?;
        let sel = if adapters.is_empty() {
            LoraSel::None
        } else {
            LoraSel::mixed(&mixed, 1, &self.device)
        };
        sel.check_layers(self.cfg.num_hidden_layers)?;
        let weights = self.host_weights()?;
        let ids: Tensor<1, Int> = Tensor::from_data(TensorData::new(ids, [n]), &self.device);
        let mut attention = PagedAttention {
            cache,
            write,
            reads,
            seq_slots,
            heads,
        };
        let hidden = host_step::run_layers(self, weights, ids, &positions, &sel, &mut attention)?
            .ok_or_else(|| {
            ModelError::Input(
                "forward_paged: an adapter's factors do not fit the base weights".into(),
            )
        })?;
        // The hidden state after each wanted sequence's last token.
        let h = self.cfg.hidden_size;
        let mut last = Vec::new();
        let mut end = 0;
        for s in seqs {
            end += s.tokens.len();
            if s.logits {
                last.extend_from_slice(&hidden[(end - 1) * h..end * h]);
            }
        }
        let m = last.len() / h;
        if m == 0 {
            return Ok(Vec::new());
        }
        let vocab = self.cfg.vocab_size;
        let logits = match &self.head_host {
            Some(p) => p.matmul_with(&last, m, self.host_step == host_step::HostStep::Auto),
            None => {
                let x = Tensor::from_data(TensorData::new(last, [m, 1, h]), &self.device);
                crate::weights::read_f32(&self.lm_head_forward(x), "logits")?
            }
        };
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }
}
