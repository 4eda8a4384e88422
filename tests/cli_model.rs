//! End to end through the built `tributary` binary: `model generate` against the reference
//! fixtures' greedy tokens, `model finetune` on every data format (outputs, eval losses,
//! exact resume, errors), `model init` + `--tokenizer`, and `demo`.
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
use std::path::Path;
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

fn reference(model: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(model).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn generate_json(model: &Path, extra: &[&str]) -> Value {
    let out = run(bin()
        .args(["model", "generate", "--json", "--model"])
        .arg(model)
        .args(extra));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "exactly one line: {text:?}");
    assert!(text.starts_with("{\"prompt_ids\": "), "{text}");
    serde_json::from_str(text.trim()).expect("one JSON object")
}

#[test]
fn generate_json_matches_the_reference_greedy_tokens() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let dir = fixtures().join(name);
        let r = reference(name);
        let prompt = r["prompt"].as_str().unwrap();
        let base = generate_json(&dir, &["--prompt", prompt, "--max-new-tokens", "16"]);
        assert_eq!(base["prompt_ids"], r["prompt_ids"], "{name}");
        assert_eq!(base["completion_ids"], r["greedy_base"], "{name}");
        let adapter = dir.join("adapter");
        let lora = generate_json(
            &dir,
            &[
                "--prompt",
                prompt,
                "--max-new-tokens",
                "16",
                "--adapter",
                adapter.to_str().unwrap(),
            ],
        );
        assert_eq!(lora["completion_ids"], r["greedy_lora"], "{name}");
        // Streaming prints the same text (plus a newline) without --json.
        let out = run(bin()
            .args([
                "model",
                "generate",
                "--max-new-tokens",
                "16",
                "--prompt",
                prompt,
                "--model",
            ])
            .arg(&dir));
        assert_eq!(
            stdout(&out),
            format!("{}\n", base["text"].as_str().unwrap()),
            "{name}"
        );
    }
    // A stop string ends generation and is cut from the text; the ids up to it are kept.
    let dir = fixtures().join("tiny-llama");
    let prompt = reference("tiny-llama")["prompt"]
        .as_str()
        .unwrap()
        .to_owned();
    let full = generate_json(&dir, &["--prompt", &prompt, "--max-new-tokens", "16"]);
    let text = full["text"].as_str().unwrap();
    let at = text
        .find(" contributor")
        .expect("the greedy text holds the stop string");
    let stopped = generate_json(
        &dir,
        &[
            "--prompt",
            &prompt,
            "--max-new-tokens",
            "16",
            "--stop",
            " contributor",
        ],
    );
    assert_eq!(stopped["text"].as_str().unwrap(), &text[..at]);
    let n = stopped["completion_ids"].as_array().unwrap().len();
    assert!(n < 16, "stopped early");
    assert_eq!(
        stopped["completion_ids"].as_array().unwrap()[..],
        full["completion_ids"].as_array().unwrap()[..n]
    );
}

#[test]
fn generate_chat_and_sampling_flags() {
    let dir = fixtures().join("tiny-qwen2");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_cases.json")).unwrap())
            .unwrap();
    let chat = cases["chat"]["messages"].to_string();
    let out = generate_json(&dir, &["--chat", &chat, "--max-new-tokens", "4"]);
    assert_eq!(out["prompt_ids"], cases["chat"]["ids"]);
    let sample = |seed: &str| {
        generate_json(
            &dir,
            &[
                "--prompt",
                "The clinic",
                "--max-new-tokens",
                "12",
                "--temperature",
                "1.5",
                "--top-k",
                "50",
                "--top-p",
                "0.95",
                "--repetition-penalty",
                "1.1",
                "--seed",
                seed,
            ],
        )["completion_ids"]
            .clone()
    };
    assert_eq!(sample("1"), sample("1"), "same seed, same tokens");
    assert_ne!(sample("1"), sample("2"));
    let bad = bin()
        .args([
            "model", "generate", "--prompt", "x", "--top-p", "1.5", "--model",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("top_p"));
}

const MIXED_JSONL: &str = r#"{"instruction": "Name the ledger.", "input": "", "output": "The ledger records every reward."}
{"prompt": "Who trains the model?", "completion": " Builders train the model."}
{"messages": [{"role": "user", "content": "What is a datanet?"}, {"role": "assistant", "content": "A datanet is a dataset."}]}
{"prompt": "Who repairs the harbor?", "completion": " The workers repair it."}
{"instruction": "Explain LoRA.", "input": "in a line", "output": "LoRA trains small matrices."}
{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Who pays?"}, {"role": "assistant", "content": "The fee pays contributors."}]}
"#;

fn finetune(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    run(bin()
        .args(["model", "finetune", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--batch-size",
            "2",
            "--lr",
            "5e-3",
            "--eval-fraction",
            "0.34",
            "--seed",
            "3",
        ])
        .args(extra))
}

#[test]
fn finetune_writes_a_peft_adapter_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, MIXED_JSONL).unwrap();
    let model = fixtures().join("tiny-llama");
    let full = tmp.path().join("full");
    let out = finetune(
        &model,
        &data,
        &full,
        &["--steps", "4", "--checkpoint-every", "2"],
    );
    let text = stdout(&out);
    assert!(text.contains("held-out eval loss: before"), "{text}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_config.json",
        "finetune.json",
        "loss_curve.svg",
        "checkpoints/step-2/optimizer.safetensors",
    ] {
        assert!(full.join(f).is_file(), "{f} missing");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["r"], 16);
    assert_eq!(cfg["peft_type"], "LORA");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("finetune.json")).unwrap())
            .unwrap();
    assert_eq!(record["results"]["train_examples"], 4);
    assert_eq!(record["results"]["eval_examples"], 2);
    assert!(record["results"]["eval_loss_after"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(full.join("loss_curve.svg")).unwrap();
    assert!(svg.contains("<polyline") && svg.contains("optimizer step"));

    // Resuming from step 2 reaches the same adapter, byte for byte.
    let resumed = tmp.path().join("resumed");
    let ckpt = full.join("checkpoints/step-2");
    finetune(
        &model,
        &data,
        &resumed,
        &["--steps", "4", "--resume", ckpt.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(resumed.join("adapter_model.safetensors")).unwrap()
    );

    // The trained adapter loads for generation.
    let g = generate_json(
        &model,
        &[
            "--prompt",
            "Who trains",
            "--max-new-tokens",
            "3",
            "--adapter",
            full.to_str().unwrap(),
        ],
    );
    assert_eq!(g["completion_ids"].as_array().unwrap().len(), 3);
}

#[test]
fn finetune_reports_bad_data_with_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n",
    )
    .unwrap();
    let out = bin()
        .args(["model", "finetune", "--model"])
        .arg(fixtures().join("tiny-llama"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("o"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("`completion`"),
        "{err}"
    );
}

#[test]
fn init_model_trains_with_a_fixture_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 640,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    let model = tmp.path().join("m");
    run(bin()
        .args(["model", "init", "--seed", "1", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&model));
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, MIXED_JSONL).unwrap();
    let tok = fixtures().join("tiny-llama");
    let out_dir = tmp.path().join("a");
    run(bin()
        .args([
            "model", "finetune", "--steps", "2", "--rank", "4", "--model",
        ])
        .arg(&model)
        .arg("--tokenizer")
        .arg(&tok)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out_dir));
    assert!(out_dir.join("adapter_model.safetensors").is_file());
    // Without --tokenizer the error says what to do.
    let out = bin()
        .args(["model", "generate", "--prompt", "x", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokenizer"));
}

#[test]
fn demo_runs_the_whole_loop_without_external_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("demo");
    let out = run(bin()
        .args(["demo", "--random", "--steps", "3", "--examples", "10"])
        .args(["--held-out", "1", "--out"])
        .arg(&out_dir)
        .current_dir(tmp.path())
        .env("TRIBUTARY_FIXTURES", "/nonexistent"));
    let text = stdout(&out);
    for want in [
        "1/6 platform",
        "6/6 attribution and rewards",
        "reward log verified: true",
        "dashboard: http://127.0.0.1:",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("demo.json")).unwrap()).unwrap();
    // The copier's rows were all refused: copies of a rival's rows and two broken rows.
    let eve = &record["uploads"]["eve"];
    assert_eq!(eve["accepted"], 0, "{eve}");
    assert_eq!(eve["duplicates"], 10, "{eve}");
    assert_eq!(eve["rejected"].as_array().unwrap().len(), 2, "{eve}");
    assert_eq!(record["uploads"]["ana"]["accepted"], 10, "{record}");
    // Every adapter answer (one per contributor) was attributed and paid, the log
    // verifies, and what was paid out is what the answers cost.
    assert_eq!(record["attributions"], 4, "{record}");
    assert_eq!(record["rewards"]["ok"], true, "{record}");
    let balances = record["rewards"]["balances"].as_object().unwrap();
    let paid: u64 = balances.values().map(|v| v.as_u64().unwrap()).sum();
    assert!(
        paid > 0 && paid == record["fees"].as_u64().unwrap(),
        "{record}"
    );
    assert!(
        balances.get("studio").and_then(Value::as_u64).unwrap_or(0) > 0,
        "{record}"
    );
    assert_eq!(
        balances.get("eve").and_then(Value::as_u64).unwrap_or(0),
        0,
        "{record}"
    );
    for f in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "base-model/model.safetensors",
        "platform/admin.key",
        "datanet/eve.jsonl",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
}
