//! `tributary bench attribution`: attribution against planted ground truth and attacks
//! (the logic is `tributary_model::attribution_bench`); one JSON line on stdout and a
//! table on stderr.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tributary_attribution::{Method, Projection, ShareParams};
use tributary_model::attribution_bench::planted::{self, PlantedSet};
use tributary_model::attribution_bench::run::{Setup, run};
use tributary_model::attribution_bench::{BenchOptions, BenchReport};
use tributary_model::decoder::CausalLm;
use tributary_model::tokenizer::Tokenizer;

const TOKENIZER_JSON: &str = include_str!("../../assets/demo/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../assets/demo/tokenizer_config.json");

#[derive(Debug, Clone, Args)]
pub struct BenchAttributionArgs {
    /// Where to train, index and attribute.
    #[command(flatten)]
    pub device: super::device_arg::DeviceArg,
    /// Base checkpoint directory (e.g. from `tributary model init --config
    /// ../shared/bench/bench-llama-30m.json`).
    #[arg(long)]
    pub model: PathBuf,
    /// Directory with tokenizer.json [default: the model's, else the built-in demo tokenizer].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Planted training rows (`{contributor, prompt, completion}` JSONL) instead of the
    /// built-in skills; needs --queries.
    #[arg(long, requires = "queries")]
    pub data: Option<PathBuf>,
    /// Held-out queries (`{prompt, completion?, owner}` JSONL).
    #[arg(long, requires = "data")]
    pub queries: Option<PathBuf>,
    /// Built-in data: examples of the first skill (skill i gets this + 4·i, at most 90).
    #[arg(long, default_value_t = 60)]
    pub per_skill: usize,
    /// Built-in data: at most this many examples per skill (`--per-skill 10
    /// --max-per-skill 10`: ten rows for every contributor, the small-data case).
    #[arg(long, default_value_t = 90)]
    pub max_per_skill: usize,
    /// Messy data: this fraction of the training rows (0 to 1) gets a near-duplicate from
    /// the same contributor right after it (the prompt reworded slightly, the completion
    /// kept), as a datanet whose near-duplicate check let them through would hold.
    #[arg(long, default_value_t = 0.0)]
    pub near_duplicates: f64,
    /// Built-in data: held-out queries per skill.
    #[arg(long, default_value_t = 8)]
    pub queries_per_skill: usize,
    /// Passes over the data.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// LoRA rank (alpha = 2·rank).
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Trained snapshots also indexed (TracIn-CP over evenly spaced steps).
    #[arg(long, default_value_t = 0)]
    pub checkpoints: usize,
    /// Projected dims per layer (0: exact gradients).
    #[arg(long, default_value_t = 2048)]
    pub k: usize,
    /// Score the shares and attacks use: tracin, tracin-cos, tracin-ccos or datainf.
    #[arg(long, default_value = "tracin-ccos")]
    pub method: String,
    /// Clusters kept per answer.
    #[arg(long, default_value_t = 32)]
    pub top_k: usize,
    /// Gradient cosine that merges two examples into one cluster (0: off).
    #[arg(long, default_value_t = tributary_attribution::shares::COSINE_THRESHOLD)]
    pub cosine_threshold: f64,
    /// Only the final adapter's gradient for answers (one backward pass per answer).
    #[arg(long)]
    pub final_checkpoint_query: bool,
    /// Skip the attacks (three more fine-tunes).
    #[arg(long)]
    pub no_attacks: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the index's and the answers' gradient features and every method's scores to
    /// this directory (for `scripts/attribution/methods.py`).
    #[arg(long)]
    pub dump_features: Option<PathBuf>,
    /// Random halves of the data to retrain on for the linear datamodeling score (0: none;
    /// 50 or more for a figure).
    #[arg(long, default_value_t = 0)]
    pub lds: usize,
    /// Retrain once without each contributor and compare the loss changes with the shares.
    #[arg(long)]
    pub loo: bool,
    /// Also index the adapter before the first training step (the base model's gradients
    /// seen through LoRA's random A), as one more checkpoint.
    #[arg(long)]
    pub initial_checkpoint: bool,
    /// Do not index the base-gradient features (the final adapter with every B zeroed: the
    /// base model's gradients seen through the trained A), which production indexes use;
    /// then --checkpoints or --initial-checkpoint must give something to index.
    #[arg(long)]
    pub no_base_gradient: bool,
}

fn method(name: &str) -> anyhow::Result<Method> {
    Ok(match name {
        "tracin" => Method::Tracin,
        "tracin-cos" | "tracin_cos" => Method::TracinCos,
        "tracin-ccos" | "tracin_ccos" => Method::TracinCcos,
        "datainf" => Method::Datainf { damping: 0.1 },
        other => {
            anyhow::bail!("--method: unknown `{other}` (tracin, tracin-cos, tracin-ccos, datainf)")
        }
    })
}

fn tokenizer(args: &BenchAttributionArgs) -> anyhow::Result<Tokenizer> {
    let dir = args.tokenizer.clone().unwrap_or_else(|| args.model.clone());
    if dir.join("tokenizer.json").is_file() {
        return Tokenizer::from_dir(&dir)
            .with_context(|| format!("loading the tokenizer from {}", dir.display()));
    }
    anyhow::ensure!(
        args.tokenizer.is_none(),
        "--tokenizer: no tokenizer.json in {}",
        dir.display()
    );
    Ok(Tokenizer::from_parts(
        TOKENIZER_JSON,
        Some(TOKENIZER_CONFIG),
        None,
        "built-in demo tokenizer",
    )?)
}

fn planted_set(args: &BenchAttributionArgs) -> anyhow::Result<PlantedSet> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.near_duplicates),
        "--near-duplicates: {} is not a fraction from 0 to 1",
        args.near_duplicates
    );
    let set = planted_rows(args)?;
    Ok(planted::with_near_duplicates(
        set,
        args.near_duplicates,
        args.seed,
    ))
}

fn planted_rows(args: &BenchAttributionArgs) -> anyhow::Result<PlantedSet> {
    match (&args.data, &args.queries) {
        (Some(d), Some(q)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            Ok(PlantedSet {
                data: planted::parse_rows(&read(d)?, &d.display().to_string())?,
                queries: planted::parse_queries(&read(q)?, &q.display().to_string())?,
            })
        }
        _ => Ok(planted::builtin(
            args.per_skill,
            args.max_per_skill,
            args.queries_per_skill,
            args.seed,
        )),
    }
}

pub fn run_bench(args: BenchAttributionArgs) -> anyhow::Result<()> {
    let selected = args.device.select()?;
    let model = CausalLm::load(&args.model, &selected.device)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let tok = tokenizer(&args)?;
    anyhow::ensure!(
        tok.vocab_size() <= model.config().vocab_size,
        "the tokenizer has {} tokens, the model only {}",
        tok.vocab_size(),
        model.config().vocab_size
    );
    let eos = tok
        .eos_token_id()
        .or_else(|| model.generation_config().eos_token_ids.first().copied());
    let set = planted_set(&args)?;
    anyhow::ensure!(
        args.cosine_threshold <= 1.0,
        "--cosine-threshold must be at most 1"
    );
    let opts = BenchOptions {
        epochs: args.epochs,
        lr: args.lr,
        rank: args.rank,
        alpha: 2.0 * args.rank as f64,
        checkpoints: args.checkpoints,
        projection: if args.k == 0 {
            Projection::Exact
        } else {
            Projection::CountSketch {
                k: args.k,
                seed: args.seed,
            }
        },
        shares: ShareParams {
            top_k: args.top_k,
            cosine_threshold: (args.cosine_threshold > 0.0).then_some(args.cosine_threshold),
            ..ShareParams::default()
        },
        share_method: method(&args.method)?,
        seed: args.seed,
        attacks: !args.no_attacks,
        final_checkpoint_query: args.final_checkpoint_query,
        dump_features: args.dump_features.clone(),
        lds_subsets: args.lds,
        leave_one_out: args.loo,
        initial_checkpoint: args.initial_checkpoint,
        base_gradient: !args.no_base_gradient,
        ..BenchOptions::default()
    };
    let setup = Setup {
        model: &model,
        tokenizer: &tok,
        eos,
    };
    let report = run(setup, &set, &opts)?;
    eprint!("{}", table(&report));
    let mut line = serde_json::to_value(&report)?;
    if let Some(obj) = line.as_object_mut() {
        obj.insert("device".into(), selected.choice.to_string().into());
    }
    println!("{line}");
    Ok(())
}

/// The report as a plain-text table.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "{} contributors, {} examples, {} queries; final train loss {:.3}\n\
         method       AUC    min AUC  recall  top-1\n",
        r.contributors, r.examples, r.queries, r.final_train_loss
    );
    for m in &r.methods {
        s += &format!(
            "{:<12} {:.4} {:.4}   {:.4}  {:.3}\n",
            m.method, m.auc, m.auc_min, m.recall, m.top1
        );
    }
    if let Some(cf) = &r.counterfactual {
        s += &format!(
            "counterfactual: {} random halves (LDS), {} contributors left out, {:.0} s\n\
             method       LDS      LOO Spearman\n",
            cf.subsets, cf.left_out, cf.seconds
        );
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:+.4}"));
        for m in &cf.methods {
            s += &format!(
                "{:<12} {:<8} {}\n",
                m.method,
                show(m.lds),
                show(m.loo_spearman)
            );
        }
    }
    s += &format!("attacks (shares by {}):\n", r.share_method);
    for a in &r.attacks {
        s += &format!(
            "{:<18} honest {:.4} attack {:.4} gain {:+.2} pp{}{}\n",
            a.attack,
            a.honest_share,
            a.attack_share,
            a.gain_pct,
            a.detection_auc
                .map(|d| format!(", detection AUC {d:.3}"))
                .unwrap_or_default(),
            a.copy_cosine
                .map(|(lo, med)| format!(", copy cosine min {lo:.3} median {med:.3}"))
                .unwrap_or_default()
        );
    }
    let c = &r.cost;
    s += &format!(
        "cost: train {:.1} s, index {:.1} s ({:.2}× train), {} bytes/example ({} → {} dims); \
         attribution {:.0} ms/answer vs generation {:.0} ms ({:.2}×)\n",
        c.train_seconds,
        c.index_seconds,
        c.index_over_train,
        c.index_bytes_per_example,
        c.gradient_dims,
        c.feature_dims,
        c.attribution_ms_per_answer,
        c.generation_ms_per_answer,
        c.attribution_over_generation
    );
    s
}
