//! The engine's scheduler: which sequences run in the next step, and how many of their
//! tokens, under a token budget and the paged KV cache's blocks. A pure state machine
//! (no model, no threads, no clock), tested on its own; the engine's loop calls
//! [`Scheduler::schedule`] once per step and reports back what happened.
//!
//! It follows vLLM v1's scheduler. A sequence has `known` tokens (prompt, then every token
//! sampled) of which `computed` are in the KV cache; a step computes some of the rest for
//! each scheduled sequence: one token for a decoding sequence, a chunk of the prompt for a
//! prefilling one (chunked prefill, so a long prompt never stalls the decoding sequences
//! for more than one step's budget). Running sequences are served first (decoding ones
//! before prefilling ones, each in admission order); then
//! waiting ones are admitted in arrival order while budget, batch slots and blocks remain
//! (a waiting sequence whose adapter is still loading is passed over, not waited for).
//!
//! Blocks are allocated as sequences grow. When a running sequence needs a block and none
//! is free, the newest running sequence is preempted: its blocks are freed and it goes back
//! to the front of the queue with `computed = 0`, to be recomputed from its known tokens
//! later (vLLM's recompute preemption), so the KV memory never exceeds its configured pool
//! and no sequence waits for memory another will never free.

use std::collections::{HashMap, VecDeque};

/// A sequence's id (the engine numbers them).
pub type SeqId = u64;

/// Limits of one scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Most tokens computed in one step (all sequences together).
    pub token_budget: usize,
    /// Most sequences in the running batch.
    pub max_running: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub blocks: usize,
}

impl SchedulerConfig {
    /// Most positions (prompt plus generated tokens) one sequence can ever hold.
    pub fn max_positions(&self) -> usize {
        self.blocks * self.block_size
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: SeqId,
    /// First position computed (= tokens already cached).
    pub start: usize,
    /// Tokens computed.
    pub len: usize,
    /// Whether this chunk reaches the last known token, so a token is sampled after it.
    pub sample: bool,
}

/// What one step runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub chunks: Vec<Chunk>,
    /// Sequences preempted while planning this step (their KV was dropped).
    pub preempted: Vec<SeqId>,
}

impl Step {
    /// Tokens computed in all.
    pub fn tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

/// Why a sequence cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("sequence {0} is already scheduled")]
    Duplicate(SeqId),
    #[error("{needed} positions never fit the KV cache's {capacity}")]
    TooLong { needed: usize, capacity: usize },
}

#[derive(Debug, Clone)]
struct Seq {
    known: usize,
    computed: usize,
    blocks: Vec<u32>,
    /// Content hashes of the prompt's full blocks (see [`block_hashes`]); empty: no
    /// prefix caching for this sequence.
    hashes: Vec<u64>,
    /// How many of its leading blocks have been offered to the prefix cache.
    registered: usize,
}

/// The KV blocks: reference counts (a block of a cached prefix may be shared), the free
/// list (least recently freed first), and the prefix cache (full prompt blocks by content
/// hash; a cached block whose count drops to 0 stays cached until it is allocated anew).
#[derive(Debug, Clone)]
struct Pool {
    free: VecDeque<u32>,
    refs: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    cached: HashMap<u64, u32>,
}

impl Pool {
    fn new(blocks: usize) -> Self {
        Self {
            free: (0..blocks as u32).collect(),
            refs: vec![0; blocks],
            hash_of: vec![None; blocks],
            cached: HashMap::new(),
        }
    }

    /// A free block (evicting its cached prefix, if any).
    fn alloc(&mut self) -> Option<u32> {
        let b = self.free.pop_front()?;
        if let Some(h) = self.hash_of.get_mut(b as usize).and_then(Option::take) {
            self.cached.remove(&h);
        }
        *self.refs.get_mut(b as usize)? = 1;
        Some(b)
    }

    fn release(&mut self, b: u32) {
        let Some(r) = self.refs.get_mut(b as usize) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free.push_back(b);
        }
    }

    /// The cached block with content `h`, now shared with one more sequence.
    fn lookup(&mut self, h: u64) -> Option<u32> {
        let b = *self.cached.get(&h)?;
        let refs = self.refs.get_mut(b as usize)?;
        if *refs == 0
            && let Some(at) = self.free.iter().position(|&f| f == b)
        {
            self.free.remove(at);
        }
        *refs += 1;
        Some(b)
    }

    /// Offers a full block with content `h` to the cache (the first block with a content
    /// keeps it).
    fn register(&mut self, h: u64, b: u32) {
        if let Some(slot @ None) = self.hash_of.get_mut(b as usize)
            && !self.cached.contains_key(&h)
        {
            self.cached.insert(h, b);
            *slot = Some(h);
        }
    }

    /// Forgets every cached prefix (after a step whose writes may not have happened).
    fn forget(&mut self) {
        self.cached.clear();
        self.hash_of.iter_mut().for_each(|h| *h = None);
    }
}

/// Content hashes of the full `block_size`-token blocks of `tokens`, each chained on the
/// one before and on `salt` (what else the keys and values depend on: the adapter), so
/// equal hashes mean equal prefixes under the same weights.
pub fn block_hashes(salt: &[u8], tokens: &[u32], block_size: usize) -> Vec<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut prev = {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        h.finish()
    };
    tokens
        .chunks_exact(block_size.max(1))
        .map(|block| {
            let mut h = DefaultHasher::new();
            prev.hash(&mut h);
            block.hash(&mut h);
            prev = h.finish();
            prev
        })
        .collect()
}

/// The scheduler's state: every sequence, the queue, the running batch and free blocks.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: Pool,
    seqs: HashMap<SeqId, Seq>,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    /// Prompt tokens found in the prefix cache at admission, in all.
    hit_tokens: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            pool: Pool::new(cfg.blocks),
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            hit_tokens: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Queues a sequence with `prompt` known tokens that may grow to `limit` positions
    /// (refused when that can never fit the pool).
    pub fn add(&mut self, seq: SeqId, prompt: usize, limit: usize) -> Result<(), AddError> {
        self.add_with_prefix(seq, prompt, limit, Vec::new())
    }

    /// [`Scheduler::add`] with the content hashes of the prompt's full blocks
    /// ([`block_hashes`]): at admission its longest cached prefix is shared instead of
    /// computed (all but its last token), and its own full prompt blocks are cached.
    pub fn add_with_prefix(
        &mut self,
        seq: SeqId,
        prompt: usize,
        limit: usize,
        hashes: Vec<u64>,
    ) -> Result<(), AddError> {
        if self.seqs.contains_key(&seq) {
            return Err(AddError::Duplicate(seq));
        }
        let capacity = self.cfg.max_positions();
        if limit.max(prompt) > capacity {
            return Err(AddError::TooLong {
                needed: limit.max(prompt),
                capacity,
            });
        }
        self.seqs.insert(
            seq,
            Seq {
                known: prompt,
                computed: 0,
                blocks: Vec::new(),
                hashes,
                registered: 0,
            },
        );
        self.waiting.push_back(seq);
        Ok(())
    }

    /// A token was sampled for `seq` after its last chunk: one more known token.
    pub fn append_token(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.known += 1;
        }
    }

    /// `seq` has finished or was cancelled: its blocks are freed.
    pub fn remove(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            for b in s.blocks {
                self.pool.release(b);
            }
        }
        self.running.retain(|&r| r != seq);
        self.waiting.retain(|&w| w != seq);
    }

    /// `seq`'s blocks, in position order.
    pub fn blocks(&self, seq: SeqId) -> &[u32] {
        self.seqs.get(&seq).map_or(&[], |s| s.blocks.as_slice())
    }

    /// Sequences waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences in the running batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Blocks in use.
    pub fn used_blocks(&self) -> usize {
        self.cfg.blocks - self.pool.free.len()
    }

    /// Prompt tokens taken from the prefix cache instead of computed, since the start.
    pub fn prefix_hit_tokens(&self) -> u64 {
        self.hit_tokens
    }

    /// Forgets every cached prefix: after a step that failed, whose blocks may not hold
    /// what their hashes say.
    pub fn forget_prefixes(&mut self) {
        self.pool.forget();
        for s in self.seqs.values_mut() {
            s.registered = s.blocks.len().max(s.registered);
        }
    }

    /// Whether nothing is scheduled.
    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Plans the next step; `ready(seq)` says whether a waiting sequence may start (its
    /// adapter is resident). Chunks are returned running sequences first, then admitted
    /// ones, each in its queue's order.
    pub fn schedule(&mut self, ready: &dyn Fn(SeqId) -> bool) -> Step {
        let mut step = Step::default();
        let mut budget = self.cfg.token_budget;
        // Decoding sequences first (one token each), then prefilling ones (chunks), each in
        // admission order: a long prompt never takes the budget a decode needs.
        let mut order: Vec<SeqId> = self.running.clone();
        order.sort_by_key(|id| self.seqs.get(id).is_none_or(|s| s.known - s.computed > 1));
        let mut scheduled: Vec<SeqId> = Vec::new();
        for id in order {
            if budget == 0 {
                break;
            }
            if !self.running.contains(&id) {
                continue; // preempted earlier in this step
            }
            let Some(s) = self.seqs.get(&id) else {
                self.running.retain(|&r| r != id);
                continue;
            };
            let len = (s.known - s.computed).min(budget);
            if len == 0 {
                continue;
            }
            let needed = self.blocks_for(s.computed + len);
            // Preempt the newest running sequences not yet in this step until this one's
            // blocks fit (itself, if it is the newest).
            let mut preempted_self = false;
            while self.blocks_missing(id, needed) > 0 {
                let Some(&victim) = self.running.iter().rev().find(|v| !scheduled.contains(v))
                else {
                    break;
                };
                self.preempt(victim);
                step.preempted.push(victim);
                if victim == id {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self || self.blocks_missing(id, needed) > 0 {
                continue;
            }
            self.grow(id, needed);
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            step.chunks.push(Chunk {
                seq: id,
                start: s.computed,
                len,
                sample: s.computed + len == s.known,
            });
            s.computed += len;
            budget -= len;
            scheduled.push(id);
            self.register_full(id);
        }
        if !step.preempted.is_empty() {
            return step;
        }
        let mut passed = Vec::new();
        while budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            if !self.seqs.contains_key(&id) {
                continue;
            }
            if !ready(id) {
                passed.push(id);
                continue;
            }
            let hit = self.share_prefix(id);
            let Some(s) = self.seqs.get(&id) else {
                continue;
            };
            let len = (s.known - s.computed).min(budget);
            let needed = self.blocks_for(s.computed + len);
            if self.blocks_missing(id, needed) > 0 {
                // First come, first served: nothing behind it starts before it.
                self.unshare(id);
                self.waiting.push_front(id);
                break;
            }
            self.hit_tokens += hit as u64;
            self.grow(id, needed);
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            step.chunks.push(Chunk {
                seq: id,
                start: s.computed,
                len,
                sample: s.computed + len == s.known,
            });
            s.computed += len;
            budget -= len;
            self.running.push(id);
            self.register_full(id);
        }
        for id in passed.into_iter().rev() {
            self.waiting.push_front(id);
        }
        step
    }

    fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.block_size)
    }

    fn blocks_missing(&self, id: SeqId, needed: usize) -> usize {
        let have = self.seqs.get(&id).map_or(0, |s| s.blocks.len());
        needed
            .saturating_sub(have)
            .saturating_sub(self.pool.free.len())
    }

    fn grow(&mut self, id: SeqId, needed: usize) {
        if let Some(s) = self.seqs.get_mut(&id) {
            while s.blocks.len() < needed {
                match self.pool.alloc() {
                    Some(b) => s.blocks.push(b),
                    None => break,
                }
            }
        }
    }

    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        if let Some(s) = self.seqs.get_mut(&id) {
            for b in s.blocks.drain(..) {
                self.pool.release(b);
            }
            s.computed = 0;
            s.registered = 0;
        }
        self.waiting.push_front(id);
    }

    /// At admission of a sequence with nothing cached: takes the longest run of its
    /// prompt's leading blocks found in the prefix cache (never its last token, whose
    /// logits are needed); returns the positions taken.
    fn share_prefix(&mut self, id: SeqId) -> usize {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&id) else {
            return 0;
        };
        if s.computed > 0 || !s.blocks.is_empty() {
            return 0;
        }
        let most = s.known.saturating_sub(1) / bs;
        for &h in s.hashes.iter().take(most) {
            match self.pool.lookup(h) {
                Some(b) => s.blocks.push(b),
                None => break,
            }
        }
        s.computed = s.blocks.len() * bs;
        s.registered = s.blocks.len();
        s.computed
    }

    /// Gives back what [`Scheduler::share_prefix`] took (the sequence waits after all).
    fn unshare(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.get_mut(&id) {
            for b in s.blocks.drain(..) {
                self.pool.release(b);
            }
            s.computed = 0;
            s.registered = 0;
        }
    }

    /// Offers the sequence's prompt blocks that are now full to the prefix cache. (Its
    /// keys and values are written by the step being planned, before any later step, and
    /// within a step every token's keys are stored before any attention reads them.)
    fn register_full(&mut self, id: SeqId) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        let full = (s.computed / bs).min(s.hashes.len()).min(s.blocks.len());
        while s.registered < full {
            let (Some(&h), Some(&b)) = (s.hashes.get(s.registered), s.blocks.get(s.registered))
            else {
                break;
            };
            self.pool.register(h, b);
            s.registered += 1;
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
