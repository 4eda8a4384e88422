//! The paged forward call (`decoder/paged.rs`) against the generation path's KV cache:
//! sequences of different lengths, prefilled in chunks or whole, each with its own adapter,
//! scattered over non-contiguous blocks, decoding side by side, give the same logits as
//! each sequence run alone through `forward_last` with a `KvCache` (attention split over
//! the decode pool or not).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use tributary_model::decoder::{CausalLm, PagedKvCache, SeqChunk};
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};

fn packed() -> CausalLm {
    let mut m = CausalLm::load(&model_dir("tiny-llama"), &device()).expect("load");
    m.to_packed_f32().expect("packed");
    m
}

fn adapters(model: &CausalLm) -> Vec<LoraAdapter> {
    let mut out = vec![
        LoraAdapter::load(
            &model_dir("tiny-llama").join("adapter"),
            model.config(),
            model.device(),
        )
        .expect("adapter"),
    ];
    let cfg = LoraConfig::new(8, 16.0, &TargetModule::ALL);
    let mut a = LoraAdapter::init(cfg, model.config(), 5, model.device()).expect("init");
    for (_, _, m) in a.iter_mut() {
        m.b = Tensor::random(m.b.dims(), Distribution::Normal(0.0, 0.5), model.device());
    }
    out.push(a);
    out
}

/// Logits of `prompt` then of each of `feed`, one sequence alone through a `KvCache`.
fn alone(
    model: &CausalLm,
    adapter: Option<&LoraAdapter>,
    prompt: &[u32],
    feed: &[u32],
) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(1);
    let mut out = Vec::new();
    let mut ids = prompt.to_vec();
    for step in 0..=feed.len() {
        let t = ids_tensor(std::slice::from_ref(&ids), model.device());
        let logits = model
            .forward_last(t, &[], adapter, Some(&mut cache))
            .expect("forward_last");
        out.push(values(&logits));
        if let Some(&next) = feed.get(step) {
            ids = vec![next];
        }
    }
    out
}

struct Seq {
    prompt: Vec<u32>,
    feed: Vec<u32>,
    adapter: Option<usize>,
    blocks: Vec<u32>,
    /// Prompt tokens per step while prefilling.
    chunk: usize,
    /// The step at which it joins.
    joins: usize,
}

#[test]
fn paged_steps_match_each_sequence_alone() {
    let model = packed();
    let adapters = adapters(&model);
    let refs: Vec<&LoraAdapter> = adapters.iter().collect();
    let block = 4;
    let mut cache = PagedKvCache::new(model.config(), block, 64).expect("pool");
    let tokens = |n: usize, k: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i * 7 + k * 13) % 400 + 3) as u32)
            .collect()
    };
    // Blocks handed out interleaved, so no sequence's blocks are contiguous.
    let seqs = [
        Seq {
            prompt: tokens(11, 0),
            feed: tokens(5, 1),
            adapter: Some(0),
            blocks: vec![0, 3, 6, 9, 12],
            chunk: 4,
            joins: 0,
        },
        Seq {
            prompt: tokens(3, 2),
            feed: tokens(7, 3),
            adapter: None,
            blocks: vec![1, 4, 7],
            chunk: 16,
            joins: 0,
        },
        Seq {
            prompt: tokens(9, 4),
            feed: tokens(4, 5),
            adapter: Some(1),
            blocks: vec![2, 5, 8, 10],
            chunk: 5,
            joins: 3,
        },
        // A 120-token prompt in one chunk: enough attention work to split it over the
        // decode pool's threads.
        Seq {
            prompt: tokens(120, 6),
            feed: tokens(3, 7),
            adapter: Some(0),
            blocks: (20..51).rev().collect(),
            chunk: 120,
            joins: 1,
        },
    ];
    let expected: Vec<Vec<Vec<f32>>> = seqs
        .iter()
        .map(|s| alone(&model, s.adapter.map(|a| &adapters[a]), &s.prompt, &s.feed))
        .collect();
    // Per sequence: positions done, logits seen.
    let mut done = vec![0usize; seqs.len()];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); seqs.len()];
    for step in 0..20 {
        let mut chunks = Vec::new();
        let mut which = Vec::new();
        for (k, s) in seqs.iter().enumerate() {
            let total = s.prompt.len() + s.feed.len();
            if step < s.joins || done[k] >= total {
                continue;
            }
            let (tokens, wants) = if done[k] < s.prompt.len() {
                let end = (done[k] + s.chunk).min(s.prompt.len());
                (&s.prompt[done[k]..end], end == s.prompt.len())
            } else {
                let i = done[k] - s.prompt.len();
                (&s.feed[i..i + 1], true)
            };
            chunks.push(SeqChunk {
                tokens,
                past: done[k],
                blocks: &s.blocks,
                adapter: s.adapter,
                logits: wants,
            });
            which.push((k, wants));
        }
        if chunks.is_empty() {
            break;
        }
        let logits = model
            .forward_paged(&chunks, &refs, &mut cache)
            .expect("forward_paged");
        let mut it = logits.into_iter();
        for (c, (k, wants)) in chunks.iter().zip(which) {
            done[k] += c.tokens.len();
            if wants {
                got[k].push(it.next().expect("logits"));
            }
        }
    }
    for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.len(), e.len(), "sequence {k}: logits count");
        for (step, (x, y)) in g.iter().zip(e).enumerate() {
            let d = max_abs_diff(x, y);
            assert!(d < 1e-4, "sequence {k} step {step}: paged differs by {d}");
        }
    }
}

#[test]
fn paged_refuses_blocks_that_do_not_cover_the_sequence() {
    let model = packed();
    let mut cache = PagedKvCache::new(model.config(), 4, 4).expect("pool");
    let tokens = [5u32; 6];
    let chunk = SeqChunk {
        tokens: &tokens,
        past: 0,
        blocks: &[0],
        adapter: None,
        logits: true,
    };
    let err = model
        .forward_paged(&[chunk], &[], &mut cache)
        .expect_err("one block for six positions");
    assert!(err.to_string().contains("needs 6 positions"), "{err}");
    let bad = SeqChunk {
        blocks: &[0, 7],
        ..chunk
    };
    let err = model
        .forward_paged(&[bad], &[], &mut cache)
        .expect_err("block out of range");
    assert!(err.to_string().contains("block 7"), "{err}");
}
