//! Property tests of the coordinator's pure parts: placement never exceeds a worker's free
//! slots and starves no job; sharding deals every micro-batch exactly once, in order; the
//! reduction is the same bit for bit whatever order contributions arrive in.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use tributary_coordinator::placement::{Demand, place};
use tributary_coordinator::reduce::{Contribution, reduce_in_order};
use tributary_coordinator::sharding::{assign, global_batch};
use tributary_protocol::{JobId, JobSpec, MicroBatch, NodeId};

fn workers(slots: &[u32]) -> BTreeMap<NodeId, u32> {
    slots
        .iter()
        .enumerate()
        .map(|(i, s)| (NodeId::new(format!("w{i}")).unwrap(), *s))
        .collect()
}

fn demand(i: usize, min: u32, extra: u32) -> Demand {
    Demand {
        job: JobId::new(format!("job-{i}")).unwrap(),
        min,
        max: min + extra,
        gpu: false,
    }
}

proptest! {
    #[test]
    fn placement_respects_capacity_and_each_jobs_bounds(
        slots in proptest::collection::vec(0u32..4, 1..8),
        jobs in proptest::collection::vec((1u32..4, 0u32..4), 0..12),
    ) {
        let free = workers(&slots);
        let queue: Vec<Demand> = jobs.iter().enumerate().map(|(i, (m, e))| demand(i, *m, *e)).collect();
        let placed = place(&queue, &free);
        let mut used: BTreeMap<NodeId, u32> = BTreeMap::new();
        for (p, d) in placed.iter().zip(&queue) {
            // Placed in queue order, a prefix of the queue.
            prop_assert_eq!(&p.job, &d.job);
            let n = p.workers.len() as u32;
            prop_assert!(n >= d.min && n <= d.max.max(d.min), "{} workers for {:?}", n, d);
            let mut distinct = p.workers.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), p.workers.len());
            for w in &p.workers {
                *used.entry(w.clone()).or_default() += 1;
            }
        }
        for (w, n) in &used {
            prop_assert!(*n <= free[w], "{} used {} of {} slots", w, n, free[w]);
        }
    }

    /// Jobs run for a few rounds each; every job that fits the cluster is placed within a
    /// bounded number of rounds, whatever arrives.
    #[test]
    fn no_job_starves(
        slots in proptest::collection::vec(1u32..3, 1..6),
        jobs in proptest::collection::vec((1u32..4, 0u32..3, 1u32..4), 1..15),
    ) {
        let total = workers(&slots);
        let n_workers = slots.len() as u32;
        let mut queue: Vec<(Demand, u32)> = jobs
            .iter()
            .enumerate()
            .map(|(i, (m, e, dur))| (demand(i, (*m).min(n_workers), *e), *dur))
            .collect();
        let mut running: Vec<(Vec<NodeId>, u32)> = Vec::new();
        let bound = jobs.iter().map(|j| j.2).sum::<u32>() + jobs.len() as u32 + 1;
        let mut round = 0;
        while !queue.is_empty() {
            round += 1;
            prop_assert!(round <= bound, "{} jobs still queued after {} rounds", queue.len(), round);
            let mut free = total.clone();
            for (ws, _) in &running {
                for w in ws {
                    if let Some(s) = free.get_mut(w) { *s -= 1; }
                }
            }
            let demands: Vec<Demand> = queue.iter().map(|(d, _)| d.clone()).collect();
            let placed = place(&demands, &free);
            let k = placed.len();
            for (p, (_, dur)) in placed.into_iter().zip(queue.drain(..k)) {
                running.push((p.workers, dur));
            }
            for r in &mut running { r.1 -= 1; }
            running.retain(|r| r.1 > 0);
        }
    }

    #[test]
    fn sharding_deals_every_micro_batch_once_in_order(
        n in 1u32..64, workers in 1usize..20, step in 0u64..1000, size in 1u32..16,
    ) {
        let spec = JobSpec::from_toml_str(&format!(
            "base_model = \"m\"\ndata = \"d\"\n[train]\nsteps = 1000\nbatch_size = {}\ngrad_accum = {n}\n",
            n * size
        )).unwrap();
        let batch = global_batch(&spec, step);
        prop_assert_eq!(batch.len(), n as usize);
        // The step's batch is the contiguous run of positions [step*B, (step+1)*B).
        let b = u64::from(n * size);
        let mut pos = step * b;
        for (i, mb) in batch.iter().enumerate() {
            prop_assert_eq!(mb.index as usize, i);
            prop_assert_eq!(mb.start, pos);
            pos += u64::from(mb.len);
        }
        prop_assert_eq!(pos, (step + 1) * b);
        let shards = assign(&batch, workers);
        prop_assert_eq!(shards.len(), workers);
        let flat: Vec<MicroBatch> = shards.iter().flatten().copied().collect();
        prop_assert_eq!(&flat, &batch);
        let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        prop_assert!(hi - lo <= 1, "{:?}", sizes);
    }

    #[test]
    fn reduction_is_bitwise_independent_of_arrival_order(
        vals in proptest::collection::vec(proptest::collection::vec(-1e6f32..1e6, 3), 1..12),
        seed in any::<u64>(),
    ) {
        let parts: Vec<Contribution> = vals.iter().enumerate().map(|(i, g)| Contribution {
            index: i as u32, loss_sum: f64::from(g[0]), tokens: i as u64 + 1, grads: g.clone(),
        }).collect();
        let want = reduce_in_order(parts.clone(), parts.len() as u32).unwrap();
        let mut shuffled = parts.clone();
        let perm = tributary_model::data::permutation(shuffled.len(), seed);
        shuffled = perm.iter().map(|&i| parts[i].clone()).collect();
        let got = reduce_in_order(shuffled, parts.len() as u32).unwrap();
        let bits = |r: &tributary_coordinator::reduce::Reduced| r.grads.iter().map(|g| g.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got), bits(&want));
        prop_assert_eq!(got.tokens, want.tokens);
        // And it is the in-index-order sum.
        let mut acc = [0f32; 3];
        for p in &parts { for (a, g) in acc.iter_mut().zip(&p.grads) { *a += g; } }
        prop_assert_eq!(acc.iter().map(|g| g.to_bits()).collect::<Vec<_>>(), bits(&want));
    }
}
