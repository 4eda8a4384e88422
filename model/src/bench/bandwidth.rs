//! The machine's DRAM read bandwidth, measured on the spot: the roofline of a batch-1 decode.
//!
//! At batch 1 a decode step reads every weight once and does two FLOPs per weight, so it is
//! bound by how fast memory can be read, not by arithmetic (the GEMM peak says nothing about
//! it). `tributary bench generate` measures the read rate of a buffer much larger than any
//! cache with one thread and with one thread per core, and reports the weight bytes the decode
//! actually streamed per second next to it, so that the fraction of the bandwidth a run used
//! is a ratio taken in one process, like MFU is for the GEMM peak.

use std::thread;
use std::time::Instant;

/// Bytes read per measurement: four times a 32 MiB L3, so almost every line comes from DRAM.
const BUFFER_BYTES: usize = 128 << 20;

/// Timed passes over the buffer (after one untimed pass that faults the pages in).
const PASSES: usize = 8;

/// Read bandwidths in GB/s (10⁹ bytes per second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadBandwidth {
    /// One thread reading.
    pub one_thread: f64,
    /// `threads` threads, each reading its own contiguous part.
    pub all_threads: f64,
    /// Threads used for `all_threads`: the available parallelism.
    pub threads: usize,
}

/// Measures the best read rate of [`PASSES`] passes over a fresh [`BUFFER_BYTES`] buffer, with
/// one thread and with one per available core. Takes a few hundred milliseconds.
pub fn read_bandwidth() -> ReadBandwidth {
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    // Distinct non-zero contents, so no page is shared with the zero page.
    let words: Vec<u64> = (0..BUFFER_BYTES / 8)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        .collect();
    let one_thread = best_rate(&words, 1);
    let all_threads = if threads > 1 {
        best_rate(&words, threads)
    } else {
        one_thread
    };
    ReadBandwidth {
        one_thread,
        all_threads,
        threads,
    }
}

/// The best of [`PASSES`] timed passes of `threads` threads over `words`, in GB/s.
fn best_rate(words: &[u64], threads: usize) -> f64 {
    let part = words.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for pass in 0..=PASSES {
        let start = Instant::now();
        let sums: Vec<u64> = thread::scope(|s| {
            let handles: Vec<_> = words
                .chunks(part)
                .map(|chunk| s.spawn(move || sum_words(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let seconds = start.elapsed().as_secs_f64();
        checksum = sums.iter().fold(checksum, |a, &b| a.wrapping_add(b));
        if pass > 0 {
            best = best.min(seconds);
        }
    }
    // Keeps the sums observable, so the reads cannot be optimised away.
    std::hint::black_box(checksum);
    (words.len() * 8) as f64 / best / 1e9
}

/// Wrapping sum of `words` with eight independent lanes (vectorised by the compiler).
fn sum_words(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { sum_words_avx2(words) };
        }
    }
    sum_words_portable(words)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_words_avx2(words: &[u64]) -> u64 {
    sum_words_portable(words)
}

#[inline(always)]
fn sum_words_portable(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &w) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(w);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &w| a.wrapping_add(w));
    lanes.iter().fold(tail, |a, &l| a.wrapping_add(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_covers_every_word_including_the_tail() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum_words(&words), 21 * 22 / 2);
        assert_eq!(sum_words_portable(&words), 21 * 22 / 2);
        let wrapping = [u64::MAX, 2];
        assert_eq!(sum_words(&wrapping), 1);
    }

    #[test]
    fn bandwidth_is_positive_and_finite() {
        let bw = read_bandwidth();
        assert!(bw.one_thread.is_finite() && bw.one_thread > 0.0, "{bw:?}");
        assert!(bw.all_threads.is_finite() && bw.all_threads > 0.0, "{bw:?}");
        assert!(bw.threads >= 1);
    }
}
