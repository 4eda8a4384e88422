//! `tributary dev --base-model` end to end with the official `openai` Python client (from
//! the cached virtual environment `scripts/setup-test-deps.sh` makes): chat and
//! completions, streaming and not, an adapter trained by a dev job served by the name its
//! spec gives as soon as the job succeeds, and the `tributary adapter` commands (register
//! an upload, list, show, delete) over the same API, with keys found by the CLI itself.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::process::Command;

use common::*;

fn adapter_cli(dev: &Dev, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("adapter")
        .args(args)
        .env("TRIBUTARY_COORDINATOR", dev.url())
        .output()
        .unwrap()
}

fn chat(dev: &Dev, model: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0,
    });
    let (code, text) = dev.request(
        "POST",
        "/v1/chat/completions",
        "application/json",
        &body.to_string(),
    );
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[test]
fn the_openai_client_passes_against_dev_and_a_job_trained_adapter_is_served_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let base = fixtures().join("tiny-llama");
    // Jobs train on the fixture, outside the directories dev allows by default.
    let dev = Dev::start_with(
        tmp.path(),
        1,
        &[
            "--base-model",
            base.to_str().unwrap(),
            "--allow-path",
            base.to_str().unwrap(),
        ],
    );
    assert!(dev.logs().contains("admin API key trib_"), "{}", dev.logs());

    // A job names its adapter; the name serves as soon as the job succeeds.
    let spec = tmp.path().join("named.toml");
    std::fs::write(
        &spec,
        format!(
            "base_model = {:?}\ndata = {:?}\nname = \"demo-bot\"\n\
             [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
             [train]\nsteps = 4\nbatch_size = 4\ngrad_accum = 1\nlr = 1e-2\nseed = 7\n",
            base.display().to_string(),
            repo().join("assets/demo/train.jsonl").display().to_string(),
        ),
    )
    .unwrap();
    let v = submit_and_wait(&dev.url(), &spec);
    assert_eq!(v["state"], "succeeded", "{v}\n{}", dev.logs());
    let digest = v["adapter_digest"].as_str().unwrap().to_string();
    let (code, answer) = chat(&dev, "demo-bot");
    assert_eq!(code, 200, "{answer}\n{}", dev.logs());
    let (_, by_digest) = chat(&dev, &digest);
    assert_eq!(
        answer["choices"][0]["message"]["content"], by_digest["choices"][0]["message"]["content"],
        "the name and the digest serve the same weights"
    );

    // The official client: chat and completions, streaming and not, the adapter by name.
    let out = Command::new(openai_python())
        .arg(repo().join("tests/openai_client.py"))
        .args([&dev.url(), &dev.key(), "tiny-llama", "demo-bot"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("\"ok\": true"),
        "{printed}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dev.logs()
    );

    // `tributary adapter`: register an upload under a name, list, show, delete.
    let fixture_adapter = fixtures().join("tiny-llama/adapter");
    let out = adapter_cli(
        &dev,
        &[
            "register",
            fixture_adapter.to_str().unwrap(),
            "--name",
            "fixture-lora",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = adapter_cli(&dev, &["list"]);
    let list = stdout(&out);
    assert!(
        list.contains("fixture-lora") && list.contains("demo-bot"),
        "{list}"
    );
    let out = adapter_cli(&dev, &["show", "fixture-lora"]);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["owner"], "admin");
    assert_eq!(chat(&dev, "fixture-lora").0, 200);
    // Served output equals offline generation: greedy, same prompt, same adapter.
    for (endpoint, body, args) in [
        (
            "/v1/completions",
            serde_json::json!({"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}),
            vec!["--prompt", "Once upon a time"],
        ),
        (
            "/v1/chat/completions",
            serde_json::json!({"model": "fixture-lora", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}),
            vec![
                "--chat",
                r#"[{"role":"user","content":"Say hello."}]"#,
                "--adapter",
                fixture_adapter.to_str().unwrap(),
            ],
        ),
    ] {
        let (code, text) = dev.request("POST", endpoint, "application/json", &body.to_string());
        assert_eq!(code, 200, "{text}");
        let served: serde_json::Value = serde_json::from_str(&text).unwrap();
        let served = served["choices"][0]["text"]
            .as_str()
            .or_else(|| served["choices"][0]["message"]["content"].as_str())
            .unwrap()
            .to_string();
        let out = Command::new(bin())
            .args([
                "model",
                "generate",
                "--model",
                base.to_str().unwrap(),
                "--max-new-tokens",
                "8",
                "--json",
            ])
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let offline: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(
            served,
            offline["text"].as_str().unwrap(),
            "{endpoint}: API vs model generate"
        );
    }
    // Pinned: resident, and not deletable (409) until unpinned.
    let out = adapter_cli(&dev, &["pin", "fixture-lora"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t0 = std::time::Instant::now();
    loop {
        let shown: serde_json::Value =
            serde_json::from_str(&stdout(&adapter_cli(&dev, &["show", "fixture-lora"]))).unwrap();
        if shown["residency"] == "pinned" {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "never pinned: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, body) = dev.request("DELETE", "/v1/adapters/fixture-lora", "text/plain", "");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("pinned"), "{body}");
    let out = adapter_cli(&dev, &["unpin", "fixture-lora"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t0 = std::time::Instant::now();
    loop {
        let shown: serde_json::Value =
            serde_json::from_str(&stdout(&adapter_cli(&dev, &["show", "fixture-lora"]))).unwrap();
        if shown["residency"] != "pinned" {
            break;
        }
        assert!(t0.elapsed().as_secs() < 10, "never unpinned: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = adapter_cli(&dev, &["delete", "fixture-lora"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, v) = chat(&dev, "fixture-lora");
    assert_eq!(code, 404, "{v}");
    assert!(!stdout(&adapter_cli(&dev, &["list"])).contains("fixture-lora"));
    // An upload that is not a LoRA of this base is refused, naming the problem.
    let bad = tmp.path().join("bad-adapter");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(
        fixture_adapter.join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(bad.join("adapter_model.safetensors"), b"not safetensors").unwrap();
    let out = adapter_cli(&dev, &["register", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not fit this base model"),
        "{}",
        stderr(&out)
    );

    // The load generator, at CI size: every request answered, figures reported.
    let out = Command::new(bin())
        .args([
            "bench",
            "serve",
            "--adapters",
            "1",
            "--requests",
            "6",
            "--rate",
            "20",
        ])
        .args(["--output-tokens", "4..8", "--prompt-words", "2..6"])
        .env("TRIBUTARY_COORDINATOR", dev.url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(r["ok"], 6, "{r}");
    assert_eq!(r["models"], 1);
    assert!(r["output_tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["ttft_s"]["p99"].as_f64().unwrap() >= r["ttft_s"]["p50"].as_f64().unwrap());

    // Serving metrics by adapter class, usage per key.
    let (_, metrics) = http_get(dev.port, "/metrics").unwrap();
    for needle in [
        "tributary_request_ttft_seconds_bucket{class=\"adapter\"",
        "tributary_request_tpot_seconds_bucket{class=\"base\"",
        "tributary_request_e2e_seconds_count{class=\"adapter\"}",
        "tributary_usage_tokens_total{direction=\"out\"",
        "tributary_queue_depth",
        "tributary_kv_cache_usage_ratio",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
}
