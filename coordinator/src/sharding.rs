//! Deterministic data-parallel sharding: a step's global batch is cut into the spec's
//! micro-batches (fixed by the spec, not by the number of workers), and the micro-batches
//! are dealt to workers in contiguous, balanced blocks by rank.

use tributary_model::train::driver::micro_ranges;
use tributary_protocol::{JobSpec, MicroBatch};

/// The micro-batches of `step`'s global batch. Example positions run on across steps; the
/// executor maps a position to an example (wrapping over the dataset, shuffled by seed).
pub fn global_batch(spec: &JobSpec, step: u64) -> Vec<MicroBatch> {
    let m = spec.micro_batches().max(1);
    let mb = spec.micro_batch_size().max(1);
    micro_ranges(step, mb, m)
        .into_iter()
        .map(|r| MicroBatch {
            index: r.index,
            start: r.start,
            len: r.len,
        })
        .collect()
}

/// Deals `micro` to `workers` ranks in contiguous blocks whose sizes differ by at most one
/// (the first `len % workers` ranks get one more). Ranks beyond `micro.len()` get nothing.
pub fn assign(micro: &[MicroBatch], workers: usize) -> Vec<Vec<MicroBatch>> {
    if workers == 0 {
        return Vec::new();
    }
    let n = micro.len();
    let (base, extra) = (n / workers, n % workers);
    let mut out = Vec::with_capacity(workers);
    let mut at = 0;
    for rank in 0..workers {
        let take = base + usize::from(rank < extra);
        out.push(micro.get(at..at + take).unwrap_or_default().to_vec());
        at += take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(batch: u32, accum: u32) -> JobSpec {
        JobSpec::from_toml_str(&format!(
            "base_model = \"m\"\ndata = \"d\"\n[train]\nsteps = 10\nbatch_size = {batch}\ngrad_accum = {accum}\n"
        ))
        .unwrap()
    }

    #[test]
    fn global_batches_tile_the_example_order() {
        let s = spec(8, 4);
        let b0 = global_batch(&s, 0);
        let b1 = global_batch(&s, 1);
        assert_eq!(b0.len(), 4);
        assert_eq!(
            b0[3],
            MicroBatch {
                index: 3,
                start: 6,
                len: 2
            }
        );
        assert_eq!(b1[0].start, 8);
    }

    #[test]
    fn assignment_covers_every_micro_batch_once_in_order() {
        let mbs = global_batch(&spec(10, 10), 3);
        for workers in 1..=12 {
            let shards = assign(&mbs, workers);
            assert_eq!(shards.len(), workers);
            let flat: Vec<_> = shards.iter().flatten().copied().collect();
            assert_eq!(flat, mbs, "workers={workers}");
            let sizes: Vec<_> = shards.iter().map(Vec::len).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{sizes:?}");
        }
        assert_eq!(assign(&mbs, 3), assign(&mbs, 3), "deterministic");
        assert!(assign(&mbs, 0).is_empty());
    }
}
