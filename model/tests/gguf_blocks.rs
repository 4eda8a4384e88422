//! GGUF block weights (Q4_1, Q8_0) multiplied as llama.cpp multiplies them
//! (`kernels::int8`, `quant::blocks`): the stored layout dequantizes to exactly what the
//! GGUF dequantizer gives for the same file bytes, the SIMD path equals the portable one, and
//! both equal llama.cpp's formula evaluated here straight from the file's bytes (an
//! independent reading of the block layout, in f64), on random blocks of both formats, odd
//! block counts and permuted rows.
// Test code fails loudly (unwrap, expect, panic, indexing).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tributary_model::gguf::dequant::{GgmlType, dequantize};
use tributary_model::kernels::Split;
use tributary_model::kernels::int8::{Int8Isa, block_matmul_isa};
use tributary_model::quant::blocks::{BlockFormat, BlockMatrix};

/// Random file bytes of `rows × cols` values in `format` (scales and minimums of realistic
/// size, every code value used).
fn random_file(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut raw = Vec::new();
    for _ in 0..rows * cols / 32 {
        let d = f16::from_f32(rng.random_range(0.001f32..0.05));
        raw.extend_from_slice(&d.to_le_bytes());
        match format {
            BlockFormat::Q4_1 => {
                let m = f16::from_f32(rng.random_range(-0.4f32..0.1));
                raw.extend_from_slice(&m.to_le_bytes());
                for _ in 0..16 {
                    raw.push(rng.random::<u8>());
                }
            }
            BlockFormat::Q8_0 => {
                for _ in 0..32 {
                    raw.push(rng.random_range(-127i8..=127) as u8);
                }
            }
        }
    }
    raw
}

fn ggml_type(format: BlockFormat) -> GgmlType {
    match format {
        BlockFormat::Q4_1 => GgmlType::Q4_1,
        BlockFormat::Q8_0 => GgmlType::Q8_0,
    }
}

/// llama.cpp's product read straight from the file's bytes: activations quantized per block
/// (`d = max/127` stored in f16, codes rounded half to even, Q8_1's `s = f16(d·Σq)`), then
/// `Σ_b f16(d_w)·f16(d_x)·Σ c·q (+ f16(m_w)·s)`, summed here in f64; with the sum of the
/// terms' magnitudes (what f32 rounding scales with).
fn llama_cpp_product(
    format: BlockFormat,
    raw: &[u8],
    cols: usize,
    w_row: usize,
    x: &[f32],
) -> (f64, f64) {
    let bb = match format {
        BlockFormat::Q4_1 => 20,
        BlockFormat::Q8_0 => 34,
    };
    let blocks = cols / 32;
    let row = &raw[w_row * blocks * bb..(w_row + 1) * blocks * bb];
    let (mut total, mut magnitude) = (0f64, 0f64);
    for b in 0..blocks {
        let xb = &x[b * 32..(b + 1) * 32];
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let q: Vec<i32> = xb
            .iter()
            .map(|v| (v * id).round_ties_even() as i32)
            .collect();
        let dx = f16::from_f32(d).to_f32();
        let sx = f16::from_f32(d * q.iter().sum::<i32>() as f32).to_f32();
        let blk = &row[b * bb..(b + 1) * bb];
        let dw = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let sumi: i64 = match format {
            BlockFormat::Q4_1 => (0..16)
                .map(|j| {
                    i64::from(blk[4 + j] & 0x0f) * i64::from(q[j])
                        + i64::from(blk[4 + j] >> 4) * i64::from(q[j + 16])
                })
                .sum(),
            BlockFormat::Q8_0 => (0..32)
                .map(|j| i64::from(blk[2 + j] as i8) * i64::from(q[j]))
                .sum(),
        };
        let term = f64::from(dw * dx) * sumi as f64;
        total += term;
        magnitude += term.abs();
        if format == BlockFormat::Q4_1 {
            let mw = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            let term = f64::from(mw) * f64::from(sx);
            total += term;
            magnitude += term.abs();
        }
    }
    (total, magnitude)
}

fn random_x(m: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..m * cols)
        .map(|i| {
            // Some exact zeros and one all-zero block, as real activations have.
            if i % 97 == 0 || (i / 32) % 7 == 3 && i < 64 {
                0.0
            } else {
                rng.random_range(-3.0f32..3.0)
            }
        })
        .collect()
}

/// The file's rows reversed within each group of 4 (a stand-in for the Q/K permutation).
fn source_row(r: usize, rows: usize) -> usize {
    let g = r / 4 * 4;
    if g + 4 <= rows { g + 3 - r % 4 } else { r }
}

#[test]
fn stored_blocks_dequantize_to_the_gguf_dequantizer_values() {
    for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
        for (rows, cols) in [(8, 64), (5, 96), (12, 576)] {
            let raw = random_file(format, rows, cols, 1);
            let want = dequantize(ggml_type(format), &raw);
            let w = BlockMatrix::from_ggml(format, &raw, rows, cols, |r| r).unwrap();
            assert_eq!(w.dequantize(), want, "{format:?} {rows}x{cols}");
            // Permuted rows: row r holds the file's row source_row(r).
            let p =
                BlockMatrix::from_ggml(format, &raw, rows, cols, |r| source_row(r, rows)).unwrap();
            let got = p.dequantize();
            for r in 0..rows {
                let s = source_row(r, rows);
                assert_eq!(
                    got[r * cols..(r + 1) * cols],
                    want[s * cols..(s + 1) * cols]
                );
            }
        }
    }
}

#[test]
fn block_products_equal_llama_cpp_arithmetic_on_every_path() {
    let paths = [
        (Int8Isa::Portable, Split::Serial),
        (Int8Isa::Avx512Vnni, Split::Serial),
        (Int8Isa::Avx512Vnni, Split::Pool),
    ];
    eprintln!("AVX-512 VNNI here: {}", Int8Isa::Avx512Vnni.runs_here());
    for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
        // Odd block counts (3, 17), a count past one scale group (48), the SmolLM2 widths.
        for (rows, cols) in [(70, 96), (33, 544), (130, 576), (9, 1536)] {
            let raw = random_file(format, rows, cols, rows as u64);
            let w =
                BlockMatrix::from_ggml(format, &raw, rows, cols, |r| source_row(r, rows)).unwrap();
            for m in [1, 2, 3, 4, 5, 9] {
                let x = random_x(m, cols, (m * cols) as u64);
                let mut results = Vec::new();
                for (isa, split) in paths {
                    let y = block_matmul_isa(&w, &x, m, isa, split);
                    assert_eq!(y.len(), m * rows);
                    for r in 0..m {
                        for o in 0..rows {
                            let (want, magnitude) = llama_cpp_product(
                                format,
                                &raw,
                                cols,
                                source_row(o, rows),
                                &x[r * cols..(r + 1) * cols],
                            );
                            let got = f64::from(y[r * rows + o]);
                            // f32 products and sums of up to 2 × 48 terms: at most ~100
                            // roundings of 2⁻²⁴ of the terms' magnitude (a wrong code or
                            // scale is off by a whole term).
                            let tol = 6e-6 * magnitude + 1e-6;
                            assert!(
                                (got - want).abs() <= tol,
                                "{format:?} {rows}x{cols} m={m} {isa:?}/{split:?} row {r} out \
                                 {o}: {got} vs llama.cpp's {want}"
                            );
                        }
                    }
                    results.push(y);
                }
                // The pool splits outputs, not sums: the same values as one thread.
                assert_eq!(results[1], results[2], "{format:?} {rows}x{cols} m={m}");
            }
        }
    }
}

/// The activation quantization is the only approximation: the product stays within its
/// error bound of the exact product of the dequantized weights.
#[test]
fn block_products_are_close_to_the_exact_product() {
    for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
        let (rows, cols, m) = (64, 576, 3);
        let raw = random_file(format, rows, cols, 7);
        let w = BlockMatrix::from_ggml(format, &raw, rows, cols, |r| r).unwrap();
        let dense = w.dequantize();
        let x = random_x(m, cols, 8);
        let y = block_matmul_isa(&w, &x, m, Int8Isa::Avx512Vnni, Split::Auto);
        for r in 0..m {
            for o in 0..rows {
                let xr = &x[r * cols..(r + 1) * cols];
                let wr = &dense[o * cols..(o + 1) * cols];
                let exact: f64 = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                // Each activation is off by at most half a step (max|x_b|/254) plus the f16
                // rounding of the scale (2⁻¹¹ relative): bound Σ_b |w|·step.
                let bound: f64 = xr
                    .chunks(32)
                    .zip(wr.chunks(32))
                    .map(|(xb, wb)| {
                        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                        let step = f64::from(amax) / 254.0 + f64::from(amax) * 2f64.powi(-11);
                        wb.iter().map(|v| f64::from(v.abs())).sum::<f64>() * step
                    })
                    .sum();
                let got = f64::from(y[r * rows + o]);
                assert!(
                    (got - exact).abs() <= bound * 1.01 + 1e-4,
                    "{format:?} row {r} out {o}: {got} vs exact {exact} (bound {bound})"
                );
            }
        }
    }
}

#[test]
fn malformed_blocks_are_refused_with_the_reason() {
    let raw = random_file(BlockFormat::Q4_1, 4, 64, 3);
    let err = BlockMatrix::from_ggml(BlockFormat::Q4_1, &raw, 4, 48, |r| r).unwrap_err();
    assert!(err.to_string().contains("not whole blocks of 32"), "{err}");
    let err = BlockMatrix::from_ggml(BlockFormat::Q4_1, &raw[1..], 4, 64, |r| r).unwrap_err();
    assert!(
        err.to_string().contains("bytes for 4 rows of 64 values"),
        "{err}"
    );
    let err = BlockMatrix::from_ggml(BlockFormat::Q4_1, &raw, 4, 64, |r| r + 1).unwrap_err();
    assert!(err.to_string().contains("maps to row 4 of 4"), "{err}");
}

/// ggml itself (its activation quantizer and `vec_dot`, called by
/// `scripts/gguf/ggml_block_dots.py`) on real SmolLM2 rows: Q4_1 projections and the Q8_0
/// embedding/head, activations of three scales. Every path gives ggml's values up to the
/// order of f32 sums.
#[test]
fn block_products_equal_ggml_on_smollm2_rows() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/smollm2/ggml_block_dots.json");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let (rows, cols) = (
            case["rows"].as_u64().unwrap() as usize,
            case["cols"].as_u64().unwrap() as usize,
        );
        let format = match case["ggml_type"].as_u64().unwrap() {
            3 => BlockFormat::Q4_1,
            8 => BlockFormat::Q8_0,
            other => panic!("type {other}"),
        };
        let hex = case["raw_hex"].as_str().unwrap();
        let raw: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let w = BlockMatrix::from_ggml(format, &raw, rows, cols, |r| r).unwrap();
        let dense = w.dequantize();
        let x: Vec<f32> = case["x"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let m = x.len() / cols;
        for isa in [Int8Isa::Portable, Int8Isa::Avx512Vnni] {
            let y = block_matmul_isa(&w, &x, m, isa, Split::Auto);
            for r in 0..m {
                for o in 0..rows {
                    let want = case["y"][r][o].as_f64().unwrap();
                    let magnitude: f64 = (0..cols)
                        .map(|j| f64::from(dense[o * cols + j] * x[r * cols + j]).abs())
                        .sum();
                    let got = f64::from(y[r * rows + o]);
                    assert!(
                        (got - want).abs() <= 2e-6 * magnitude + 1e-6,
                        "{} {isa:?} row {r} out {o}: {got} vs ggml's {want}",
                        case["tensor"]
                    );
                }
            }
        }
    }
}
