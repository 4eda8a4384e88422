//! The persistent decode pool (`tributary_model::kernels::pool`) and the kernels split over
//! it: every store kind gives bit for bit the values of the serial path (each output column is
//! summed in the same order by one tile kernel call) for 1–20 rows and odd tile counts; the
//! pool runs every part exactly once, on more than one thread when it has helpers, stays
//! correct when many threads call at once or a part calls it again, and survives a part that
//! panics.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tributary_model::kernels::{
    LoraFactors, PackedMatrix, Split, matmul_many_split, nf4_matmul_split, pool, simd_available,
};
use tributary_model::quant::Nf4Matrix;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn simd_modes() -> Vec<bool> {
    if simd_available() {
        vec![true, false]
    } else {
        vec![false]
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `parts` parts that each take a moment, so a spinning or parked helper has time to
/// claim some; returns the thread that ran each part.
fn run_recording(parts: usize) -> Vec<thread::ThreadId> {
    let ran = Mutex::new(vec![None; parts]);
    let count = AtomicUsize::new(0);
    pool::run(parts, &|i| {
        thread::sleep(Duration::from_millis(2));
        count.fetch_add(1, Ordering::Relaxed);
        let mut ran = ran.lock().expect("lock");
        assert!(ran[i].is_none(), "part {i} ran twice");
        ran[i] = Some(thread::current().id());
    });
    assert_eq!(count.load(Ordering::Relaxed), parts);
    let ran = ran.into_inner().expect("lock");
    ran.into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| panic!("part {i} never ran")))
        .collect()
}

#[test]
fn every_part_runs_once_and_the_helper_takes_some() {
    assert!(pool::threads() >= 1);
    let mut helped = false;
    // Other tests may hold the pool at the moment (then this call runs serially): retry.
    for _ in 0..20 {
        let ran = run_recording(24);
        let me = thread::current().id();
        if ran.iter().any(|t| *t != me) {
            helped = true;
            break;
        }
    }
    if pool::threads() > 1 {
        assert!(helped, "no part ran on a helper in 20 tries");
    } else {
        eprintln!("one core: the pool has no helper, every part ran here");
    }
    // 0 and 1 parts run here.
    run_recording(1);
    pool::run(0, &|_| panic!("no part to run"));
}

#[test]
fn packed_matmul_over_the_pool_is_bit_identical_to_serial() {
    // 1, 5, 6 (partial last) and 7 column tiles of 32; k with and without a tail.
    for (k, n) in [(70, 20), (64, 160), (33, 170), (128, 224)] {
        let w = random(k * n, (k * n) as u64);
        for packed in [PackedMatrix::bf16(&w, k, n), PackedMatrix::f32(&w, k, n)] {
            for m in 1..=20 {
                let x = random(m * k, 100 + m as u64);
                for simd in simd_modes() {
                    let serial = packed.matmul_split(&x, m, simd, Split::Serial);
                    let pooled = packed.matmul_split(&x, m, simd, Split::Pool);
                    let auto = packed.matmul_with(&x, m, simd);
                    assert_eq!(
                        bits(&pooled),
                        bits(&serial),
                        "k={k} n={n} m={m} bf16={} simd={simd}",
                        packed.is_bf16()
                    );
                    assert_eq!(bits(&auto), bits(&serial));
                }
            }
        }
    }
}

/// q, k, v (or gate, up) in one dispatch: each product as its own call gives it.
#[test]
fn several_matrices_in_one_dispatch_match_one_call_each() {
    let k = 70;
    let mats = [
        PackedMatrix::f32(&random(k * 160, 90), k, 160),
        PackedMatrix::bf16(&random(k * 70, 91), k, 70),
        PackedMatrix::f32(&random(k * 33, 92), k, 33),
        PackedMatrix::bf16(&random(k * 224, 93), k, 224),
    ];
    let refs: Vec<&PackedMatrix> = mats.iter().collect();
    for m in [1, 3, 8, 9, 20] {
        let x = random(m * k, 95 + m as u64);
        for simd in simd_modes() {
            for split in [Split::Pool, Split::Serial, Split::Auto] {
                let got = matmul_many_split(&refs, &x, m, simd, split);
                assert_eq!(got.len(), mats.len());
                for (i, (g, p)) in got.iter().zip(&mats).enumerate() {
                    let want = p.matmul_split(&x, m, simd, Split::Serial);
                    assert_eq!(
                        bits(g),
                        bits(&want),
                        "matrix {i} m={m} simd={simd} {split:?}"
                    );
                }
            }
        }
    }
    assert!(matmul_many_split(&[], &[], 1, false, Split::Pool).is_empty());
}

#[test]
fn fused_nf4_over_the_pool_is_bit_identical_to_serial() {
    // 1, 5 and 7 tiles of 64 columns, and rows of 2.5 and 21.5 tiles (a half tile at the
    // end, blocks straddling rows); plain and double-quantized scales.
    for (k, n) in [(70, 64), (96, 320), (33, 448), (40, 160), (8, 1376)] {
        let w = random(k * n, 7 + (k * n) as u64);
        let q = Nf4Matrix::quantize(&w, [k, n]).expect("quantize");
        let mut stores = vec![q.clone()];
        if let Ok(dq) = q.double_quantize() {
            stores.push(dq);
        }
        assert!(
            stores.len() == 2 || k * n % 256 != 0,
            "double quantization failed"
        );
        for q in &stores {
            for m in 1..=20 {
                let x = random(m * k, 200 + m as u64);
                for simd in simd_modes() {
                    let serial = nf4_matmul_split(q, &x, m, simd, Split::Serial).expect("fuse");
                    let pooled = nf4_matmul_split(q, &x, m, simd, Split::Pool).expect("fuse");
                    assert_eq!(
                        bits(&pooled),
                        bits(&serial),
                        "k={k} n={n} m={m} dq={} simd={simd}",
                        q.is_double_quantized()
                    );
                }
            }
        }
    }
}

#[test]
fn several_adapters_over_the_pool_add_what_one_at_a_time_adds() {
    let (r, k, n, m) = (16, 70, 100, 20);
    for bf16 in [false, true] {
        let factors: Vec<LoraFactors> = (0..8)
            .map(|a| {
                let (fa, fb) = (random(r * k, 300 + a), random(n * r, 400 + a));
                LoraFactors::new(&fa, &fb, [r, k, n], 2.0, bf16)
            })
            .collect();
        let x = random(m * k, 500);
        let y0 = random(m * n, 501);
        // Rows round-robin over the 8 adapters, an empty group, one adapter with one row.
        let mut rows: Vec<Vec<usize>> = (0..8)
            .map(|a| (0..m).filter(|row| row % 8 == a).collect())
            .collect();
        rows[5].clear();
        rows[6] = vec![19];
        rows[7].retain(|&row| row != 19);
        let groups: Vec<(&LoraFactors, &[usize])> = factors
            .iter()
            .zip(&rows)
            .map(|(f, r)| (f, r.as_slice()))
            .collect();
        for simd in simd_modes() {
            let mut want = y0.clone();
            for (f, rows) in &groups {
                f.add_delta_with(&x, &mut want, rows, simd);
            }
            assert_ne!(want, y0);
            for split in [Split::Pool, Split::Serial, Split::Auto] {
                let mut got = y0.clone();
                LoraFactors::add_deltas_split(&groups, &x, &mut got, simd, split);
                assert_eq!(bits(&got), bits(&want), "bf16={bf16} simd={simd} {split:?}");
            }
        }
        // A row in two groups gets both deltas (the serial fallback), in group order.
        let overlap: Vec<(&LoraFactors, &[usize])> =
            vec![(&factors[0], &[1, 2]), (&factors[1], &[2, 3])];
        let mut want = y0.clone();
        factors[0].add_delta(&x, &mut want, &[1, 2]);
        factors[1].add_delta(&x, &mut want, &[2, 3]);
        let mut got = y0.clone();
        LoraFactors::add_deltas_split(&overlap, &x, &mut got, simd_available(), Split::Pool);
        assert_eq!(bits(&got), bits(&want));
    }
}

#[test]
fn many_threads_calling_at_once_get_the_serial_values() {
    let (k, n) = (96, 330);
    let w = random(k * n, 600);
    let packed = PackedMatrix::f32(&w, k, n);
    let q = Nf4Matrix::quantize(&random(k * 320, 601), [k, 320]).expect("quantize");
    thread::scope(|s| {
        for t in 0..8u64 {
            let (packed, q) = (&packed, &q);
            s.spawn(move || {
                for i in 0..40 {
                    let m = 1 + (t as usize + i) % 9;
                    let x = random(m * k, 700 + t * 100 + i as u64);
                    let serial = packed.matmul_split(&x, m, simd_available(), Split::Serial);
                    let pooled = packed.matmul_split(&x, m, simd_available(), Split::Pool);
                    assert_eq!(bits(&pooled), bits(&serial), "thread {t} call {i}");
                    let serial = nf4_matmul_split(q, &x, m, true, Split::Serial).expect("fuse");
                    let pooled = nf4_matmul_split(q, &x, m, true, Split::Pool).expect("fuse");
                    assert_eq!(bits(&pooled), bits(&serial), "nf4 thread {t} call {i}");
                }
            });
        }
    });
}

#[test]
fn a_part_may_call_the_pool_again() {
    let seen = Mutex::new(HashSet::new());
    pool::run(6, &|i| {
        pool::run(5, &|j| {
            assert!(
                seen.lock().expect("lock").insert((i, j)),
                "({i}, {j}) twice"
            );
        });
    });
    assert_eq!(seen.into_inner().expect("lock").len(), 30);
}

#[test]
fn a_panicking_part_reaches_the_caller_and_the_pool_keeps_working() {
    for bad in [0, 7, 23] {
        let finished = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool::run(24, &|i| {
                thread::sleep(Duration::from_millis(1));
                if i == bad {
                    panic!("part {i} fails");
                }
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        let payload = result.expect_err("the panic reaches the caller");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert_eq!(message, format!("part {bad} fails"));
        assert!(finished.load(Ordering::Relaxed) < 24);
        // The pool (and its helper) still run every part of the next job.
        run_recording(12);
    }
}
