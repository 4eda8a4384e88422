//! `tributary bench train|generate`, `--quantize nf4` and `--dtype f32-packed|bf16` end to end
//! through the built binary, on the tiny fixture config (shapes only; timings are not asserted).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use common::fixtures;
use serde_json::Value;
use std::process::Command;

fn json_line(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(text.trim()).expect("JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn bench_train_and_generate_print_one_json_line_each() {
    let config = fixtures().join("tiny-llama/config.json");
    let config = config.to_str().expect("utf-8 path");
    let train = json_line(&[
        "bench", "train", "--config", config, "--batch", "2", "--seq", "8", "--rank", "4",
        "--steps", "2",
    ]);
    assert_eq!(train["bench"], "train");
    assert_eq!(train["batch"], 2);
    for key in [
        "tokens_per_s",
        "achieved_gflops",
        "gemm_peak_gflops",
        "mfu",
        "peak_rss_mib",
    ] {
        assert!(num(&train, key) > 0.0, "{key}: {train}");
    }
    assert!(
        num(&train, "last_loss") < num(&train, "first_loss"),
        "{train}"
    );

    let f32_run = json_line(&[
        "bench",
        "generate",
        "--config",
        config,
        "--batch",
        "3",
        "--adapters",
        "2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
    ]);
    let nf4_run = json_line(&[
        "bench",
        "generate",
        "--config",
        config,
        "--batch",
        "3",
        "--adapters",
        "2",
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
        "--quantize",
        "nf4",
    ]);
    for run in [&f32_run, &nf4_run] {
        assert_eq!(run["bench"], "generate");
        assert!(
            run["adapter_mode"]
                .as_str()
                .unwrap_or("")
                .starts_with("mixed")
        );
        assert!(num(run, "tokens_per_s") > 0.0 && num(run, "gflop") > 0.0);
    }
    assert_eq!(nf4_run["quantize"], "nf4");
    // bench generate measures what `model generate` does by default.
    assert_eq!(f32_run["dtype"], "f32-packed", "{f32_run}");
    // bench train defaults to the precision that measured fastest (docs/precision.md): bf16
    // where its GEMM runs on AMX tiles, f32 elsewhere; the JSON names the kernel.
    let amx = train["bf16_kernel"] == "amx";
    assert_eq!(
        train["precision"],
        if amx { "bf16" } else { "f32" },
        "{train}"
    );
    assert_eq!(
        amx,
        tributary_model::kernels::bf16_gemm::Bf16Kernel::Amx.available(),
        "{train}"
    );
    let ratio = num(&nf4_run, "base_linear_mib") / num(&f32_run, "base_linear_mib");
    assert!(ratio <= 0.3, "NF4 base takes {ratio}× the f32 bytes");
}

#[test]
fn model_generate_accepts_quantize_nf4() {
    let model = fixtures().join("tiny-llama");
    let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args([
            "model",
            "generate",
            "--json",
            "--max-new-tokens",
            "4",
            "--ignore-eos",
        ])
        .args(["--prompt", "hello", "--quantize", "nf4", "--model"])
        .arg(&model)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["completion_ids"].as_array().map(Vec::len), Some(4), "{v}");
}

#[test]
fn bench_generate_with_bf16_weights_halves_the_projection_bytes() {
    let config = fixtures().join("tiny-llama/config.json");
    let config = config.to_str().expect("utf-8 path");
    let run = |flag: &str, value: &str| {
        json_line(&[
            "bench",
            "generate",
            "--config",
            config,
            "--batch",
            "2",
            "--prompt-len",
            "4",
            "--new-tokens",
            "3",
            flag,
            value,
        ])
    };
    let (f32_run, packed, bf16) = (
        run("--dtype", "f32"),
        run("--dtype", "f32-packed"),
        run("--dtype", "bf16"),
    );
    assert_eq!(f32_run["dtype"], "f32");
    assert_eq!(packed["dtype"], "f32-packed");
    assert_eq!(bf16["dtype"], "bf16");
    assert!(num(&bf16, "tokens_per_s") > 0.0, "{bf16}");
    let f32_mib = num(&f32_run, "base_linear_mib");
    // Packing pads the last column tile of each matrix, so at least the f32 bytes.
    assert!(num(&packed, "base_linear_mib") >= f32_mib, "{packed}");
    let ratio = num(&bf16, "base_linear_mib") / f32_mib;
    assert!(ratio <= 0.6, "bf16 projections take {ratio}× the f32 bytes");
    // The bytes a decode step streams follow the store (projections and lm_head halve), and
    // the bandwidth they were read at is set against the rate measured in the same process.
    let step_ratio = num(&bf16, "decode_step_mb") / num(&f32_run, "decode_step_mb");
    assert!(
        step_ratio > 0.4 && step_ratio < 0.6,
        "bf16 step bytes {step_ratio}× f32"
    );
    // llama.cpp's Q4_1 (the 176-wide down projection is not whole blocks and stays f32).
    let q4_1 = run("--quantize", "q4_1");
    assert_eq!(q4_1["quantize"], "q4_1", "{q4_1}");
    assert!(num(&q4_1, "tokens_per_s") > 0.0, "{q4_1}");
    assert!(
        num(&q4_1, "base_linear_mib") < 0.6 * f32_mib,
        "q4_1 projections: {q4_1}"
    );
    for run in [&f32_run, &packed, &bf16] {
        for key in [
            "read_gb_per_s",
            "read_gb_per_s_one_thread",
            "decode_gb_per_s",
            "mbu",
        ] {
            assert!(num(run, key) > 0.0, "{key}: {run}");
        }
        let mbu = num(run, "decode_gb_per_s") / num(run, "read_gb_per_s");
        assert!((mbu - num(run, "mbu")).abs() < 1e-9, "{run}");
    }
}

/// `model generate --dtype f32-packed` (host kernels, same f32 values) decodes the reference
/// implementation's greedy tokens; `--dtype bf16` decodes the requested number of tokens.
#[test]
fn model_generate_with_packed_weights_gives_the_reference_tokens() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let dir = fixtures().join(name);
        let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
        let r: Value = serde_json::from_str(&text).expect("reference JSON");
        let prompt = r["prompt"].as_str().expect("prompt");
        for dtype in ["f32-packed", "bf16"] {
            let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
                .args(["model", "generate", "--json", "--max-new-tokens", "16"])
                .args(["--prompt", prompt, "--dtype", dtype, "--model"])
                .arg(&dir)
                .output()
                .expect("the binary runs");
            assert!(
                out.status.success(),
                "{name} {dtype}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if dtype == "f32-packed" {
                assert_eq!(v["completion_ids"], r["greedy_base"], "{name} {dtype}");
            } else {
                let n = v["completion_ids"].as_array().map_or(0, Vec::len);
                assert!(n > 0 && n <= 16, "{name} {dtype}: {v}");
            }
        }
    }
}

#[test]
fn bench_device_flag_is_reported_and_refuses_what_the_build_lacks() {
    let config = fixtures().join("tiny-llama/config.json");
    let config = config.to_str().expect("utf-8 path");
    let base = [
        "bench", "train", "--config", config, "--batch", "1", "--seq", "4", "--rank", "2",
        "--steps", "1",
    ];
    let cpu = json_line(&[&base[..], &["--device", "cpu"][..]].concat());
    assert_eq!(cpu["device"], "cpu (burn-flex)", "{cpu}");
    let run = |device: &str| {
        Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(base)
            .args(["--device", device])
            .output()
            .expect("the binary runs")
    };
    let unknown = run("tpu");
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("device `tpu`: expected one of auto, cpu, wgpu"),
        "{err}"
    );
    // This test binary is built without the `wgpu` feature (CI's `cargo test --workspace`):
    // `auto` is the CPU and an explicit `wgpu` is refused by name.
    let auto = json_line(&[&base[..], &["--device", "auto"][..]].concat());
    assert_eq!(auto["device"], "cpu (burn-flex)", "{auto}");
    let wgpu = run("wgpu");
    assert!(!wgpu.status.success());
    let err = String::from_utf8_lossy(&wgpu.stderr);
    assert!(
        err.contains("built without the `wgpu` cargo feature"),
        "{err}"
    );
}
