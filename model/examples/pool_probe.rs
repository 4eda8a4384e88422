//! Times one host kernel call serially and over the decode pool (`kernels::pool`) for the
//! bench model's projection shapes and the lm_head, f32 and bf16, 1 and 8 rows: 400 calls
//! each, min and median in µs. The matrices stay in cache between calls, so this measures
//! what the second core adds to the arithmetic and what a call's hand-off costs, not DRAM
//! bandwidth. `cargo run --release -p tributary-model --example pool_probe`.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::time::Instant;

use tributary_model::kernels::{PackedMatrix, Split, pool, simd_available};

fn main() {
    let simd = simd_available();
    println!("threads: {}, simd: {simd}", pool::threads());
    let shapes = [
        (512, 256),
        (512, 512),
        (512, 1376),
        (1376, 512),
        (512, 8192),
    ];
    for bf16 in [false, true] {
        for &(k, n) in &shapes {
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
                .collect();
            let p = if bf16 {
                PackedMatrix::bf16(&w, k, n)
            } else {
                PackedMatrix::f32(&w, k, n)
            };
            for m in [1usize, 8] {
                let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
                let mut line = format!("bf16={bf16} {k}x{n} m={m}:");
                for split in [Split::Serial, Split::Pool] {
                    let mut t: Vec<f64> = (0..400)
                        .map(|_| {
                            let s = Instant::now();
                            std::hint::black_box(p.matmul_split(&x, m, simd, split));
                            s.elapsed().as_secs_f64() * 1e6
                        })
                        .collect();
                    t.sort_by(f64::total_cmp);
                    line += &format!(" {split:?} min {:.1} med {:.1} |", t[0], t[t.len() / 2]);
                }
                println!("{line}");
            }
        }
    }
}
