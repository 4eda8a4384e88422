//! GGUF through the built `tributary` binary: `model import` of a fixture converted as
//! llama.cpp's converter does (JSON report, digest, the directory generates the same greedy
//! tokens as the `.gguf` file given straight to `--model`), `model export-lora`, and
//! `demo` on SmolLM2 at a small size (the model from `scripts/fetch-smollm2.sh`).
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
use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tributary"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the binary runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("model/tests/data/gguf")
        .join(name)
}

fn greedy(model: &std::path::Path) -> serde_json::Value {
    let out = run(bin()
        .args([
            "model",
            "generate",
            "--prompt",
            "The clinic records",
            "--max-new-tokens",
            "8",
            "--json",
            "--model",
        ])
        .arg(model));
    let line = stdout(&out);
    serde_json::from_str(line.lines().last().expect("a JSON line")).expect("JSON")
}

#[test]
fn import_and_gguf_model_flag_give_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("imported");
    let gguf = data("tiny-llama.gguf");
    let out = run(bin()
        .args(["model", "import"])
        .arg(&gguf)
        .arg("--out")
        .arg(&dir));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(report["architecture"], "LlamaForCausalLM");
    assert_eq!(report["dtype"], "f32");
    assert_eq!(report["base_model_digest"].as_str().map(str::len), Some(64));
    let from_dir = greedy(&dir);
    let from_file = greedy(&gguf);
    assert_eq!(
        from_dir["completion_ids"], from_file["completion_ids"],
        "{from_dir} {from_file}"
    );
    assert!(
        from_dir["completion_ids"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    // A directory that exists is refused.
    let again = bin()
        .args(["model", "import"])
        .arg(&gguf)
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // A file that is not GGUF is a clear error.
    let bad = tmp.path().join("bad.gguf");
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    let out = bin()
        .args(["model", "import"])
        .arg(&bad)
        .arg("--out")
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("magic"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn export_lora_writes_a_gguf_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("lora.gguf");
    let out = run(bin()
        .args(["model", "export-lora", "--model"])
        .arg(data("tiny-llama.gguf"))
        .arg("--adapter")
        .arg(fixtures().join("tiny-llama/adapter"))
        .arg("--out")
        .arg(&out_file));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(report["tensors"], 28);
    assert_eq!(report["rank"], 4);
    let bytes = std::fs::read(&out_file).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
}

#[test]
fn demo_on_smollm2_at_a_small_size() {
    let model = std::env::var("TRIBUTARY_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/tributary/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-smollm2.sh",
        model.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("demo");
    let out = run(bin()
        .args([
            "demo",
            "--steps",
            "2",
            "--examples",
            "4",
            "--held-out",
            "1",
            "--model",
        ])
        .arg(&model)
        .arg("--out")
        .arg(&out_dir));
    let text = stdout(&out);
    for want in [
        "0/6 base model",
        "exact match",
        "4/6 fine-tune",
        "6/6 attribution and rewards",
        "held-out questions",
        "reward log verified: true",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("demo.json")).unwrap()).unwrap();
    assert_eq!(record["held_out"], 4);
    assert_eq!(record["contributors"].as_array().map(Vec::len), Some(4));
    assert_eq!(record["exact_match_before"]["total"], 4);
    assert_eq!(record["attributions"], 4, "{record}");
    for name in ["ana", "bo", "chen", "dara", "eve"] {
        assert!(out_dir.join(format!("datanet/{name}.jsonl")).is_file());
    }
    assert!(out_dir.join("adapter/adapter_model.safetensors").is_file());
}
