//! Output buffers for the training step's fused ops and GEMMs.
//!
//! `vec![0.0; n]` zero-fills on the calling thread; for an op's output (attention scores
//! are 16 MiB per layer on the bench model) that was a serial pass on the main thread while
//! rayon's pool waited: with this and the attention products written in place, the main
//! thread's perf samples over a bf16 `bench train` fell from 916 to 352 (docs/benchmarks.md).
//! [`par_zeroed`] fills the same zeros in chunks on the pool, so the pages are touched (and
//! faulted in) by the threads that then write them.

use rayon::prelude::*;

/// Values per rayon task when zero-filling (256 KiB of f32).
const ZERO_CHUNK: usize = 1 << 16;

/// `len` zeros, written in parallel chunks when `len` is large (a small buffer is filled on
/// this thread: splitting it costs more than it saves).
pub fn par_zeroed(len: usize) -> Vec<f32> {
    if len < 2 * ZERO_CHUNK {
        return vec![0.0; len];
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(ZERO_CHUNK)
        .for_each(|chunk| {
            for v in chunk {
                v.write(0.0);
            }
        });
    // SAFETY: the chunks above cover the first `len` slots, each written with 0.0.
    unsafe { out.set_len(len) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_have_the_asked_length_and_only_zeros() {
        for len in [0, 1, 2 * ZERO_CHUNK - 1, 2 * ZERO_CHUNK, 5 * ZERO_CHUNK + 3] {
            let v = par_zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x.to_bits() == 0), "len {len}");
        }
    }
}
