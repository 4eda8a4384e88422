//! `tributary model finetune`: trains a LoRA adapter on a JSONL file with the base frozen.
//!
//! Wiring only: the data formats, split and batch order live in `tributary_model::data`,
//! the training step in `tributary_model::train`, the plot in `tributary_model::plot`.
//! Writes into `--out`: the PEFT adapter (`adapter_config.json`,
//! `adapter_model.safetensors`), `training_config.json` (the optimizer/schedule config),
//! `finetune.json` (every setting and the results) and `loss_curve.svg`; with
//! `--checkpoint-every N`, resumable checkpoints under `--out/checkpoints/step-N`.

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tributary_model::data::{DataOptions, Example, load_jsonl, split_eval};
use tributary_model::error::ModelError;
use tributary_model::features::{DEFAULT_PROJECTION, IndexRecorder};
use tributary_model::lora::{LoraConfig, TargetModule};
use tributary_model::plot::LossCurve;
use tributary_model::train::driver::{
    Driver, Observer, RunPlan, Session, StepEvent, Steps, run as run_driver,
};
use tributary_model::train::{Schedule, TrainConfig, TrainExample, Trainer};

use super::model_generate::load;

/// Learning-rate decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Args)]
pub struct FinetuneArgs {
    /// Base checkpoint directory (kept frozen).
    #[arg(long)]
    pub model: PathBuf,
    /// Directory with tokenizer.json; default: the model directory.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// JSONL training data: alpaca, prompt/completion or OpenAI messages lines.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory for the adapter, configs and plot.
    #[arg(long)]
    pub out: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    /// Dropout on the LoRA path.
    #[arg(long, default_value_t = 0.05)]
    pub dropout: f64,
    /// Modules to adapt, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub target_modules: Vec<String>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training split (used when --steps is absent).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Decay after warm-up.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Linear)]
    pub schedule: ScheduleArg,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed for adapter init, dropout, split and data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of examples held out for the eval loss.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    /// Longest example in tokens, cut from the right beyond it [default: 512, or the
    /// model's max_position_embeddings when smaller].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Save a resumable checkpoint every N steps under OUT/checkpoints/step-N.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Resume from a checkpoint directory (its training config replaces the flags above).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Store the frozen base's projection weights in 4-bit NormalFloat (QLoRA).
    #[arg(long, value_enum, default_value_t = super::bench_model::Quantize::None)]
    pub quantize: super::bench_model::Quantize,
    /// Store NF4's absmax scales in 8 bits (QLoRA's double quantization; needs --quantize nf4).
    #[arg(long)]
    pub double_quant: bool,
    /// Record the attribution index while training (adapter snapshots at evenly spaced
    /// steps, one per two epochs, up to 4) and write it to OUT/attribution.index with its
    /// size and cost in OUT/attribution.json.
    #[arg(long)]
    pub attribution_index: bool,
    /// Arithmetic of the frozen base's products [default: bf16 where the CPU has AMX-BF16,
    /// else f32: the faster on each (docs/precision.md)]; recorded in
    /// OUT/training_config.json.
    #[arg(long, value_enum)]
    pub precision: Option<super::bench_model::PrecisionArg>,
    /// Recompute each decoder layer's activations in the backward pass instead of keeping
    /// them (gradient checkpointing by layer): the same gradients, far less memory at long
    /// sequences, more arithmetic per step [default: on with --quantize nf4, off otherwise;
    /// docs/benchmarks.md, QLoRA on SmolLM2]; recorded in OUT/training_config.json.
    #[arg(long, value_enum)]
    pub recompute: Option<Switch>,
    /// Where to train (`--quantize nf4` is CPU-only); recorded in OUT/finetune.json.
    #[command(flatten)]
    pub device: super::device_arg::DeviceArg,
}

/// An on/off option whose default depends on other options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// What a fine-tune produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FinetuneReport {
    pub steps: u64,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Line numbers (1-based) of the held-out examples.
    pub eval_lines: Vec<usize>,
    pub eval_loss_before: Option<f32>,
    pub eval_loss_after: Option<f32>,
    pub final_train_loss: Option<f32>,
    pub train_tokens_per_s: f64,
    pub train_seconds: f64,
    /// Bytes the trainer's frozen base holds (projections, embedding, head, norms:
    /// [`tributary_model::decoder::CausalLm::base_resident_bytes`]).
    pub base_resident_bytes: usize,
    /// The process's resident memory (VmRSS, MiB) after loading, once the trainer was set
    /// up, and its peak (VmHWM) at the end; `None` where /proc is not there.
    pub rss_mib: RssMarks,
}

/// Resident-memory marks of a fine-tune (Linux /proc/self/status; `None` elsewhere).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RssMarks {
    pub after_load: Option<u64>,
    pub trainer_ready: Option<u64>,
    pub peak: Option<u64>,
}

/// A `Vm*` field of /proc/self/status in MiB.
fn proc_status_mib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn targets(names: &[String]) -> anyhow::Result<Vec<TargetModule>> {
    names
        .iter()
        .map(|n| {
            TargetModule::from_name(n.trim()).with_context(|| {
                format!("--target-modules: unknown module `{n}` (known: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
            })
        })
        .collect()
}

fn examples(set: &[Example]) -> Vec<TrainExample> {
    set.iter().map(|e| e.example.clone()).collect()
}

/// Loss log kept beside each checkpoint so a resumed run plots the whole curve.
const LOSS_LOG: &str = "loss_log.json";

fn progress(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(done);
    bar
}

pub fn run(args: &FinetuneArgs) -> anyhow::Result<FinetuneReport> {
    args.quantize.check_trainable("model finetune")?;
    let selected = args.device.select_for(args.quantize.cpu_only())?;
    let loaded = load(
        &args.model,
        args.tokenizer.as_deref(),
        args.quantize,
        args.double_quant,
        &selected,
    )?;
    let mut rss = RssMarks {
        after_load: proc_status_mib("VmRSS:"),
        ..RssMarks::default()
    };
    let mut base = loaded.model;
    let tokenizer = &loaded.tokenizer;
    let model = &base;
    let max_pos = model.config().max_position_embeddings;
    let max_seq_len = args.max_seq_len.unwrap_or(max_pos.min(512));
    anyhow::ensure!(
        max_seq_len <= max_pos,
        "--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings {max_pos}"
    );
    let eos = tokenizer
        .eos_token_id()
        .or_else(|| model.generation_config().eos_token_ids.first().copied());
    let options = DataOptions {
        max_seq_len,
        eos_token_id: eos,
    };
    let data = load_jsonl(&args.data, tokenizer, &options)?;
    let (train, eval) = split_eval(&data.examples, args.eval_fraction, args.seed)?;
    let eval_lines: Vec<usize> = eval.iter().map(|e| e.line).collect();
    let train_rows = if args.attribution_index {
        tributary_worker::attribution_index::row_ids(&args.data, &train)
            .map_err(|e| anyhow::anyhow!("--data: {e}"))?
    } else {
        Vec::new()
    };
    let (train, eval) = (examples(&train), examples(&eval));
    let (total_tokens, trained_tokens) = data.token_counts();
    eprintln!(
        "data: {} examples from {} ({} train, {} held out; {total_tokens} tokens, {trained_tokens} trained; {} cut to --max-seq-len {})",
        data.examples.len(),
        args.data.display(),
        train.len(),
        eval.len(),
        data.truncated(),
        max_seq_len
    );

    let trainer = match &args.resume {
        Some(dir) => Trainer::resume(dir, model)
            .with_context(|| format!("resuming from {}", dir.display()))?,
        None => {
            let mut lora = LoraConfig::new(args.rank, args.alpha, &targets(&args.target_modules)?);
            lora.lora_dropout = args.dropout;
            lora.base_model_name_or_path = Some(args.model.display().to_string());
            let (mb, accum) = (
                to_u32("--batch-size", args.batch_size)?,
                to_u32("--grad-accum", args.grad_accum)?,
            );
            let steps = match args.steps {
                Some(s) => Steps::Fixed(s),
                None => Steps::Epochs(args.epochs as u64),
            };
            let steps = RunPlan::new(train.len() as u64, mb, accum, steps)
                .context("--steps/--epochs/--batch-size/--grad-accum")?
                .total_steps;
            let cfg = TrainConfig {
                lr: args.lr,
                weight_decay: args.weight_decay,
                warmup_steps: args.warmup,
                schedule: match args.schedule {
                    ScheduleArg::Constant => Schedule::Constant,
                    ScheduleArg::Linear => Schedule::Linear,
                    ScheduleArg::Cosine => Schedule::Cosine,
                },
                total_steps: steps,
                grad_accum_steps: args.grad_accum,
                max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
                batch_size: args.batch_size,
                seed: args.seed,
                precision: super::bench_model::resolve_precision(args.precision),
                recompute: match args.recompute {
                    Some(s) => s == Switch::On,
                    None => args.quantize == super::bench_model::Quantize::Nf4,
                },
                ..TrainConfig::default()
            };
            Trainer::new(model, lora, cfg).context("setting up the trainer")?
        }
    };
    let cfg = trainer.config().clone();
    // A bf16 trainer holds its own bf16 copy of the projections: keep that one, so a bf16
    // run does not hold the f32 projections as well.
    if cfg.precision == tributary_model::precision::Precision::Bf16 {
        base = trainer.model().clone();
    }
    let model = &base;
    rss.trainer_ready = proc_status_mib("VmRSS:");
    let base_resident_bytes = trainer.model().base_resident_bytes();
    let mut plan = RunPlan::new(
        train.len() as u64,
        to_u32("batch_size", cfg.batch_size)?,
        to_u32("grad_accum", cfg.grad_accum_steps)?,
        Steps::Fixed(cfg.total_steps),
    )?;
    plan.checkpoint_every = args.checkpoint_every.filter(|&n| n > 0);
    plan.eval = !eval.is_empty();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut curve = LossCurve::new(format!("LoRA fine-tune of {}", args.model.display()));
    if let Some(dir) = &args.resume
        && let Ok(text) = std::fs::read_to_string(dir.join(LOSS_LOG))
    {
        curve.train = serde_json::from_str(&text).unwrap_or_default();
    }
    let start_step = trainer.step();
    let mut session = Session::new(trainer, train.clone(), eval.clone())?
        .with_checkpoint_root(args.out.join("checkpoints"));
    let mut driver = Driver::new(plan, start_step);
    let mut shown = Shown {
        bar: progress(cfg.total_steps, start_step),
        plain: !std::io::stderr().is_terminal(),
        every: (cfg.total_steps / 10).max(1),
        curve,
        index: args.attribution_index.then(IndexRecorder::base_gradient),
    };
    let started = Instant::now();
    let clock = move || started.elapsed().as_secs_f64();
    let summary = run_driver(&mut driver, &mut session, &mut shown, &clock)?;
    shown.bar.finish();
    let (eval_before, eval_after, seconds) =
        (summary.eval_before, summary.eval_after, summary.seconds);
    let tokens = summary.input_tokens;
    let last_loss = summary.final_loss;
    let curve = shown.curve.clone();
    let trainer = session.trainer();
    trainer
        .adapter()
        .save(&args.out)
        .with_context(|| format!("saving the adapter in {}", args.out.display()))?;
    write_json(&args.out.join("training_config.json"), &cfg)?;
    curve.write_svg(&args.out.join("loss_curve.svg"))?;
    if let Some(rec) = &shown.index {
        write_index(args, model, trainer, rec, &train_rows, &train, seconds)?;
    }
    let report = FinetuneReport {
        steps: cfg.total_steps,
        train_examples: train.len(),
        eval_examples: eval.len(),
        eval_lines: eval_lines.clone(),
        eval_loss_before: eval_before,
        eval_loss_after: eval_after,
        final_train_loss: last_loss,
        train_tokens_per_s: tokens as f64 / seconds.max(1e-9),
        train_seconds: seconds,
        base_resident_bytes,
        rss_mib: RssMarks {
            peak: proc_status_mib("VmHWM:"),
            ..rss
        },
    };
    let record = serde_json::json!({
        "model": args.model, "tokenizer": args.tokenizer, "data": args.data,
        "resumed_from": args.resume, "resumed_at_step": start_step,
        "lora": { "rank": args.rank, "alpha": args.alpha, "dropout": args.dropout, "target_modules": args.target_modules },
        "eval_fraction": args.eval_fraction, "max_seq_len": max_seq_len,
        "device": selected.choice.to_string(),
        "train": cfg, "results": report,
    });
    write_json(&args.out.join("finetune.json"), &record)?;
    if let (Some(b), Some(a)) = (eval_before, eval_after) {
        println!("held-out eval loss: before {b:.4}, after {a:.4}");
    }
    eprintln!(
        "trained {} steps in {:.1} s ({:.0} tokens/s); adapter, training_config.json, finetune.json and loss_curve.svg in {}",
        cfg.total_steps - start_step,
        seconds,
        report.train_tokens_per_s,
        args.out.display()
    );
    let mib = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    eprintln!(
        "memory: base holds {:.1} MB; RSS {} MiB after loading, {} MiB with the trainer set up, peak {} MiB",
        report.base_resident_bytes as f64 / 1e6,
        mib(report.rss_mib.after_load),
        mib(report.rss_mib.trainer_ready),
        mib(report.rss_mib.peak)
    );
    Ok(report)
}

/// Builds the attribution index from the recorded snapshots and writes it beside the
/// adapter: `attribution.index` and `attribution.json` (size per example, cost).
fn write_index(
    args: &FinetuneArgs,
    model: &tributary_model::decoder::CausalLm,
    trainer: &Trainer,
    rec: &IndexRecorder,
    rows: &[(String, String)],
    train: &[TrainExample],
    train_seconds: f64,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let pairs: Vec<(String, TrainExample)> = rows
        .iter()
        .map(|(id, _)| id.clone())
        .zip(train.iter().cloned())
        .collect();
    let provenance = serde_json::json!({
        "data": args.data,
        "contributors": rows.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        "loss": "mean over completion tokens",
    });
    let (index, cost) = rec.build(model, trainer, &pairs, DEFAULT_PROJECTION, provenance)?;
    let bytes = index
        .to_bytes()
        .map_err(|e| anyhow::anyhow!("attribution index: {e}"))?;
    let path = args.out.join("attribution.index");
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    let seconds = t0.elapsed().as_secs_f64();
    write_json(
        &args.out.join("attribution.json"),
        &serde_json::json!({
            "examples": index.len(),
            "checkpoints": index.header.checkpoints,
            "bytes_per_example": index.bytes_per_example(),
            "index_bytes": bytes.len(),
            "build_seconds": seconds,
            "gradient_seconds": cost.gradient_seconds,
            "training_seconds": train_seconds,
            "cost_ratio": seconds / train_seconds.max(1e-9),
        }),
    )?;
    eprintln!(
        "attribution index: {} examples x {} checkpoints, {} bytes per example, {seconds:.2} s ({:.2}x the training time) in {}",
        index.len(),
        index.checkpoints(),
        index.bytes_per_example(),
        seconds / train_seconds.max(1e-9),
        path.display()
    );
    Ok(())
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn to_u32(flag: &str, v: usize) -> anyhow::Result<u32> {
    u32::try_from(v).with_context(|| format!("{flag} = {v} is out of range (at most {})", u32::MAX))
}

/// What the CLI shows and keeps while the driver runs: the progress bar (or plain lines
/// when stderr is not a terminal) and the loss curve, written beside each checkpoint.
struct Shown {
    bar: ProgressBar,
    plain: bool,
    every: u64,
    curve: LossCurve,
    /// Adapter snapshots for the attribution index (`--attribution-index`).
    index: Option<IndexRecorder>,
}

impl Observer<Session> for Shown {
    fn after_step(&mut self, s: &mut Session, ev: &StepEvent<'_>) -> Result<(), ModelError> {
        if let Some(rec) = self.index.as_mut() {
            rec.after_step(s, ev)?;
        }
        let p = &ev.progress;
        let out = ev.output;
        self.curve.train.push((p.step as f64, f64::from(out.loss)));
        let msg = format!(
            "loss {:.4} · lr {:.2e} · grad norm {:.3} · {:.0} tokens/s",
            out.loss,
            out.lr.unwrap_or(0.0),
            out.grad_norm.unwrap_or(0.0),
            p.tokens_per_sec
        );
        self.bar.set_message(msg.clone());
        self.bar.set_position(p.step);
        if self.plain && (p.step.is_multiple_of(self.every) || p.step == p.total_steps) {
            eprintln!("step {}/{}: {msg}", p.step, p.total_steps);
        }
        Ok(())
    }

    fn after_eval(
        &mut self,
        _: &mut Session,
        at_step: u64,
        loss: Option<f32>,
    ) -> Result<(), ModelError> {
        if let Some(loss) = loss {
            if self.curve.eval.is_empty() {
                eprintln!("held-out eval loss before: {loss:.4}");
            }
            self.curve.eval.push((at_step as f64, f64::from(loss)));
        }
        Ok(())
    }

    fn after_checkpoint(&mut self, s: &mut Session, done: u64) -> Result<(), ModelError> {
        let Some(dir) = s.checkpoint_dir(done) else {
            return Ok(());
        };
        let log = serde_json::to_string(&self.curve.train).map_err(|e| ModelError::Json {
            path: dir.join(LOSS_LOG),
            source: e,
        })?;
        std::fs::write(dir.join(LOSS_LOG), log).map_err(|e| ModelError::io(dir.join(LOSS_LOG), e))
    }
}
