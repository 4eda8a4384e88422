//! The scheduler on its own: budgets, chunked prefill, joining and leaving, adapters not
//! ready, block accounting and preemption.

use std::collections::HashMap;

use super::*;

fn cfg(token_budget: usize, max_running: usize, blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        token_budget,
        max_running,
        block_size: 4,
        blocks,
    }
}

fn always(_: SeqId) -> bool {
    true
}

/// Runs a step and does what the engine does after it: one token per sampled chunk.
fn step(s: &mut Scheduler) -> Step {
    let st = s.schedule(&always);
    for c in &st.chunks {
        if c.sample {
            s.append_token(c.seq);
        }
    }
    st
}

fn chunk(seq: SeqId, start: usize, len: usize, sample: bool) -> Chunk {
    Chunk {
        seq,
        start,
        len,
        sample,
    }
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_beside_running_decodes() {
    let mut s = Scheduler::new(cfg(8, 8, 64));
    s.add(1, 3, 20).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 3, true)]);
    s.add(2, 20, 40).unwrap();
    // Sequence 1 decodes one token each step; 2's prompt fills the rest of the budget.
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(1, 3, 1, true), chunk(2, 0, 7, false)]
    );
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(1, 4, 1, true), chunk(2, 7, 7, false)]
    );
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(1, 5, 1, true), chunk(2, 14, 6, true)]
    );
    assert_eq!(
        step(&mut s).chunks,
        vec![chunk(1, 6, 1, true), chunk(2, 20, 1, true)]
    );
    // Every step stays within the budget.
    for _ in 0..5 {
        assert!(step(&mut s).tokens() <= 8);
    }
}

#[test]
fn sequences_join_and_leave_at_step_boundaries() {
    let mut s = Scheduler::new(cfg(64, 2, 64));
    s.add(1, 2, 10).unwrap();
    s.add(2, 2, 10).unwrap();
    s.add(3, 2, 10).unwrap();
    // Two slots: 3 waits.
    let st = step(&mut s);
    assert_eq!(st.chunks.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.waiting(), 1);
    s.remove(1);
    let st = step(&mut s);
    assert_eq!(
        st.chunks,
        vec![chunk(2, 2, 1, true), chunk(3, 0, 2, true)],
        "3 joins the step after 1 left"
    );
    assert_eq!(s.running(), 2);
}

#[test]
fn a_sequence_whose_adapter_is_loading_is_passed_over_not_waited_for() {
    let mut s = Scheduler::new(cfg(64, 8, 64));
    s.add(1, 4, 10).unwrap();
    s.add(2, 4, 10).unwrap();
    let st = s.schedule(&|id| id != 1);
    assert_eq!(st.chunks, vec![chunk(2, 0, 4, true)]);
    assert_eq!(s.waiting(), 1);
    s.append_token(2);
    let st = s.schedule(&|_| true);
    assert_eq!(st.chunks, vec![chunk(2, 4, 1, true), chunk(1, 0, 4, true)]);
}

#[test]
fn blocks_are_allocated_as_sequences_grow_and_freed_on_removal() {
    let mut s = Scheduler::new(cfg(64, 8, 8));
    s.add(1, 5, 12).unwrap();
    step(&mut s);
    assert_eq!(s.blocks(1).len(), 2, "5 positions in blocks of 4");
    for _ in 0..3 {
        step(&mut s);
    }
    // 8 positions computed (5 + 3 decodes), the 9th needs a third block.
    assert_eq!(s.blocks(1).len(), 2);
    step(&mut s);
    assert_eq!(s.blocks(1).len(), 3);
    assert_eq!(s.used_blocks(), 3);
    s.remove(1);
    assert_eq!(s.used_blocks(), 0);
    assert!(s.is_idle());
}

#[test]
fn a_sequence_that_can_never_fit_is_refused_and_one_that_cannot_fit_now_waits() {
    let mut s = Scheduler::new(cfg(64, 8, 4));
    assert_eq!(
        s.add(1, 10, 17),
        Err(AddError::TooLong {
            needed: 17,
            capacity: 16
        })
    );
    s.add(2, 12, 16).unwrap();
    s.add(3, 6, 8).unwrap();
    let st = step(&mut s);
    assert_eq!(st.chunks, vec![chunk(2, 0, 12, true)]);
    assert_eq!(s.waiting(), 1, "3 needs 2 blocks, 1 is free");
    assert!(s.used_blocks() <= 4);
    s.remove(2);
    assert_eq!(step(&mut s).chunks, vec![chunk(3, 0, 6, true)]);
}

#[test]
fn when_blocks_run_out_the_newest_sequence_is_preempted_and_recomputed_later() {
    let mut s = Scheduler::new(cfg(64, 8, 4));
    s.add(1, 4, 16).unwrap();
    s.add(2, 4, 16).unwrap();
    s.add(3, 4, 16).unwrap();
    s.add(4, 4, 16).unwrap();
    step(&mut s);
    assert_eq!(s.used_blocks(), 4);
    // Every sequence now needs a fifth position: 1 preempts 4, 2 preempts 3.
    let st = s.schedule(&always);
    assert_eq!(st.preempted, vec![4, 3]);
    assert_eq!(st.chunks, vec![chunk(1, 4, 1, true), chunk(2, 4, 1, true)]);
    assert!(s.used_blocks() <= 4);
    assert_eq!(s.waiting(), 2);
    s.append_token(1);
    s.append_token(2);
    s.remove(1);
    // 3 comes back first with its prompt and sampled token recomputed from position 0.
    let st = s.schedule(&always);
    assert_eq!(st.chunks[0], chunk(2, 5, 1, true));
    assert_eq!(st.chunks[1], chunk(3, 0, 5, true));
}

#[test]
fn the_last_running_sequence_preempts_itself_rather_than_overrun_the_pool() {
    let mut s = Scheduler::new(cfg(64, 8, 2));
    s.add(1, 4, 8).unwrap();
    s.add(2, 4, 8).unwrap();
    step(&mut s);
    let st = s.schedule(&always);
    // 1 takes 2's block; 2 has none left and waits.
    assert_eq!(st.preempted, vec![2]);
    assert_eq!(st.chunks, vec![chunk(1, 4, 1, true)]);
    assert_eq!(s.used_blocks(), 2);
}

/// Deterministic xorshift for the randomized test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Random arrivals, lengths, cancellations and adapters that become ready late, through
/// many steps: every step stays within the token budget, the batch size and the pool; each
/// chunk starts where the sequence's cache ends and covers only known tokens; no block is
/// held twice; and every sequence finishes.
#[test]
fn random_workloads_keep_every_invariant_and_finish() {
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let c = SchedulerConfig {
            token_budget: 1 + rng.below(40),
            max_running: 1 + rng.below(8),
            block_size: 1 + rng.below(8),
            blocks: 16 + rng.below(48),
        };
        let mut s = Scheduler::new(c);
        // Per sequence: (prompt, max new tokens, generated, computed, ready at step).
        let mut seqs: HashMap<SeqId, (usize, usize, usize, usize, usize)> = HashMap::new();
        let mut next = 0;
        let mut finished = 0;
        for step_no in 0..5000 {
            if next < 40 && rng.below(3) == 0 {
                let prompt = 1 + rng.below(30);
                let max_new = 1 + rng.below(20);
                // Prompts from three templates: their prefixes are shared.
                let t = rng.below(3) as u32;
                let tokens: Vec<u32> = (0..prompt as u32).map(|i| t * 1000 + i).collect();
                let hashes = block_hashes(&[t as u8 % 2], &tokens, c.block_size);
                if s.add_with_prefix(next, prompt, prompt + max_new, hashes)
                    .is_ok()
                {
                    seqs.insert(next, (prompt, max_new, 0, 0, step_no + rng.below(10)));
                } else {
                    assert!(prompt + max_new > c.max_positions());
                }
                next += 1;
            }
            if rng.below(50) == 0
                && let Some(&id) = seqs.keys().min()
            {
                s.remove(id);
                seqs.remove(&id);
                finished += 1;
            }
            let st = s.schedule(&|id| seqs.get(&id).is_some_and(|q| q.4 <= step_no));
            assert!(st.tokens() <= c.token_budget, "seed {seed}: budget");
            assert!(st.chunks.len() <= c.max_running, "seed {seed}: batch");
            assert!(s.used_blocks() <= c.blocks, "seed {seed}: pool");
            for id in &st.preempted {
                if let Some(q) = seqs.get_mut(id) {
                    q.3 = 0;
                }
            }
            // Every block's count is the number of sequences holding it; only cached
            // (full prompt) blocks are shared; the pool accounts for each once.
            let mut holders: HashMap<u32, u32> = HashMap::new();
            for &id in seqs.keys() {
                for &b in s.blocks(id) {
                    *holders.entry(b).or_default() += 1;
                }
            }
            for (&b, &n) in &holders {
                assert_eq!(s.pool.refs[b as usize], n, "seed {seed}: block {b} count");
                assert!(
                    n == 1 || s.pool.hash_of[b as usize].is_some(),
                    "seed {seed}"
                );
            }
            assert_eq!(
                holders.len(),
                s.used_blocks(),
                "seed {seed}: blocks accounted"
            );
            for ch in &st.chunks {
                assert!(
                    !st.preempted.contains(&ch.seq),
                    "seed {seed}: a sequence preempted after its chunk was planned"
                );
                let q = seqs.get_mut(&ch.seq).expect("known sequence");
                let known = q.0 + q.2;
                if q.3 == 0 {
                    // Admitted: a shared prefix of whole blocks may be skipped.
                    assert_eq!(ch.start % c.block_size, 0, "seed {seed}");
                    q.3 = ch.start;
                }
                assert_eq!(
                    ch.start, q.3,
                    "seed {seed}: chunk starts at the cache's end"
                );
                assert!(ch.start + ch.len <= known, "seed {seed}: only known tokens");
                assert_eq!(ch.sample, ch.start + ch.len == known);
                assert!(s.blocks(ch.seq).len() * c.block_size >= ch.start + ch.len);
                q.3 += ch.len;
                if ch.sample {
                    q.2 += 1;
                    if q.2 == q.1 {
                        s.remove(ch.seq);
                        seqs.remove(&ch.seq);
                        finished += 1;
                    } else {
                        s.append_token(ch.seq);
                    }
                }
            }
            if next >= 40 && seqs.is_empty() {
                break;
            }
        }
        assert!(
            seqs.is_empty(),
            "seed {seed}: {} sequences never finished",
            seqs.len()
        );
        assert!(s.is_idle() && s.used_blocks() == 0);
        assert!(finished > 0);
    }
}

#[test]
fn a_cached_prompt_prefix_is_shared_instead_of_recomputed() {
    let mut s = Scheduler::new(cfg(64, 8, 16));
    let prompt: Vec<u32> = (0..10).collect();
    let h = |salt: &[u8]| block_hashes(salt, &prompt, 4);
    s.add_with_prefix(1, 10, 20, h(b"a")).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(1, 0, 10, true)]);
    // Same prompt, same adapter: its two full blocks are shared, 2 tokens computed.
    s.add_with_prefix(2, 10, 20, h(b"a")).unwrap();
    let st = step(&mut s);
    assert_eq!(st.chunks[1], chunk(2, 8, 2, true));
    assert_eq!(s.blocks(1)[..2], s.blocks(2)[..2]);
    assert_ne!(s.blocks(1)[2], s.blocks(2)[2]);
    assert_eq!(s.prefix_hit_tokens(), 8);
    // Another adapter: nothing shared.
    s.add_with_prefix(3, 10, 20, h(b"b")).unwrap();
    assert_eq!(step(&mut s).chunks[2], chunk(3, 0, 10, true));
    // The cached blocks outlive their sequences, until the pool needs them.
    s.remove(1);
    s.remove(2);
    s.remove(3);
    assert_eq!(s.used_blocks(), 0);
    s.add_with_prefix(4, 10, 20, h(b"a")).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(4, 8, 2, true)]);
    s.remove(4);
    // A prompt of exactly two blocks still computes its last token.
    let exact: Vec<u32> = (0..8).collect();
    s.add_with_prefix(5, 8, 20, block_hashes(b"a", &exact, 4))
        .unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(5, 4, 4, true)]);
    s.remove(5);
    // Filling the pool evicts them.
    s.add(6, 60, 64).unwrap();
    step(&mut s);
    s.remove(6);
    s.add_with_prefix(7, 10, 20, h(b"a")).unwrap();
    assert_eq!(step(&mut s).chunks, vec![chunk(7, 0, 10, true)]);
}
