//! `tributary demo`: the README's first command, on the embedded default with nothing to
//! install.
//!
//! By default it runs on SmolLM2-135M-Instruct (`demo_smollm2`). With `--random` it makes
//! a small random Llama (config and tokenizer embedded from `assets/demo/`),
//! fine-tunes a LoRA adapter on a built-in instruction set (progress bar, held-out loss
//! before and after, loss curve), then answers a few questions with and without the
//! adapter. Everything lands in `--out`. Later the cluster path plugs in here.

use anyhow::Context as _;
use clap::Args;
use std::path::{Path, PathBuf};
use tributary_model::generate::GenerationParams;

use super::model_finetune::{self, FinetuneArgs, ScheduleArg};
use super::model_generate::{self, complete, eos_ids, load, load_adapter};

const TOKENIZER_JSON: &str = include_str!("../../assets/demo/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../assets/demo/tokenizer_config.json");
const CHAT_TEMPLATE: &str = include_str!("../../assets/demo/chat_template.jinja");
const MODEL_CONFIG: &str = include_str!("../../assets/demo/config.json");
const TRAIN_JSONL: &str = include_str!("../../assets/demo/train.jsonl");

/// The user question of each line of the built-in data, with whether it was held out.
fn questions(eval_lines: &[usize]) -> anyhow::Result<Vec<(String, bool)>> {
    TRAIN_JSONL
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let q = v["messages"][0]["content"]
                .as_str()
                .context("demo data: no question")?;
            Ok((q.to_owned(), eval_lines.contains(&(i + 1))))
        })
        .collect()
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the base model, data, adapter and loss curve are written.
    #[arg(long, default_value = "tributary-demo")]
    pub out: PathBuf,
    /// Optimizer steps of the fine-tune [default: 30 on SmolLM2, 250 with --random].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seed for the random base model and the fine-tune.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Run on a small random model made on the spot instead of SmolLM2.
    #[arg(long)]
    pub random: bool,
    /// The base model: a .gguf file or a Hugging Face directory [default: SmolLM2 in
    /// ~/.cache/tributary/smollm2, fetched by scripts/fetch-smollm2.sh].
    #[arg(long, conflicts_with = "random")]
    pub model: Option<PathBuf>,
    /// Training examples per contributor of the built-in datanet.
    #[arg(long, default_value_t = 60)]
    pub examples: usize,
    /// Held-out examples per contributor (exact match before and after).
    #[arg(long, default_value_t = 10)]
    pub held_out: usize,
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    if !args.random {
        let args = DemoArgs {
            steps: Some(args.steps.unwrap_or(30)),
            ..args.clone()
        };
        return super::demo_smollm2::run(&args);
    }
    let steps = args.steps.unwrap_or(250);
    let base = args.out.join("base-model");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let config = args.out.join("base-model.config.json");
    write(&config, MODEL_CONFIG)?;
    let cfg = tributary_model::init::init_random_checkpoint(&config, args.seed, &base)
        .context("making the random base model")?;
    write(&base.join("tokenizer.json"), TOKENIZER_JSON)?;
    write(&base.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    write(&base.join("chat_template.jinja"), CHAT_TEMPLATE)?;
    let data = args.out.join("train.jsonl");
    write(&data, TRAIN_JSONL)?;
    println!(
        "1/3 base model: random Llama, {} layers, hidden {}, vocab {} in {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        base.display()
    );

    let adapter_dir = args.out.join("adapter");
    println!(
        "2/3 fine-tuning a LoRA adapter on {} ({} steps)",
        data.display(),
        steps
    );
    let report = model_finetune::run(&FinetuneArgs {
        model: base.clone(),
        tokenizer: None,
        data,
        out: adapter_dir.clone(),
        rank: 32,
        alpha: 64.0,
        dropout: 0.0,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
        steps: Some(steps),
        epochs: 1,
        batch_size: 8,
        grad_accum: 1,
        lr: 3e-3,
        warmup: 5,
        schedule: ScheduleArg::Cosine,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: args.seed,
        eval_fraction: 0.1,
        max_seq_len: Some(256),
        checkpoint_every: None,
        resume: None,
        quantize: super::bench_model::Quantize::None,
        double_quant: false,
        attribution_index: false,
        precision: None,
    })?;
    if let Some(loss) = report.final_train_loss {
        println!("    final train loss {loss:.3}");
    }
    println!(
        "    adapter and loss curve: {}",
        adapter_dir.join("loss_curve.svg").display()
    );

    println!("3/3 answering (greedy, at most 40 tokens), base model vs. with the adapter");
    let loaded = load(&base, None, super::bench_model::Quantize::None, false)?;
    let adapter = load_adapter(&adapter_dir, &loaded.model)?;
    let params = GenerationParams::greedy(40, eos_ids(&loaded));
    let all = questions(&report.eval_lines)?;
    let seen = all.iter().filter(|(_, held_out)| !held_out).take(2);
    let unseen = all.iter().filter(|(_, held_out)| *held_out).take(1);
    for (q, held_out) in seen.chain(unseen) {
        let chat = serde_json::json!([{"role": "user", "content": q}]).to_string();
        let note = if *held_out {
            "held out from training"
        } else {
            "seen in training"
        };
        println!("\nQ ({note}): {q}");
        for (label, a) in [("base   ", None), ("adapter", Some(&adapter))] {
            let prompt = model_generate::prompt_ids(&loaded.tokenizer, None, Some(&chat))?;
            let out = complete(&loaded, a, prompt, &params, false, false)?;
            println!("  {label}: {}", out.text.trim());
        }
    }
    Ok(())
}
