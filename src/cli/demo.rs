//! `tributary demo`: the README's first command, the whole product in one process.
//!
//! It prepares a base model, then runs [`super::demo_loop`] on it: contributors upload to a
//! datanet, a job fine-tunes a LoRA adapter, the platform serves it over the OpenAI API,
//! every answer is attributed to the contributors behind it and paid into the reward log.
//!
//! By default the base model is SmolLM2-135M-Instruct (the GGUF that
//! `scripts/fetch-smollm2.sh` caches, imported once into a checkpoint directory under
//! `--out`). With `--random` it is a small random Llama (config and tokenizer embedded from
//! `assets/demo/`): the loop runs the same, in seconds, on answers that mean nothing.

use anyhow::Context as _;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::demo_loop::{self, Base};

const TOKENIZER_JSON: &str = include_str!("../../assets/demo/tokenizer.json");
const TOKENIZER_CONFIG: &str = include_str!("../../assets/demo/tokenizer_config.json");
const CHAT_TEMPLATE: &str = include_str!("../../assets/demo/chat_template.jinja");
const MODEL_CONFIG: &str = include_str!("../../assets/demo/config.json");

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the base model, the platform's data (store, reward log, admin key), the
    /// datanet files, the downloaded adapter and `demo.json` are written.
    #[arg(long, default_value = "tributary-demo")]
    pub out: PathBuf,
    /// Optimizer steps of the fine-tune.
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
    #[arg(long, default_value_t = 40)]
    pub examples: usize,
    /// Held-out examples per contributor (exact match before and after; each adapter
    /// answer is attributed and paid).
    #[arg(long, default_value_t = 2)]
    pub held_out: usize,
    /// Keep the platform (API and dashboard) running after the loop, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// The platform's HTTP port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// Where SmolLM2 is cached by `scripts/fetch-smollm2.sh`.
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tributary/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.steps == Some(0) {
        anyhow::bail!("--steps must be at least 1");
    }
    if args.held_out == 0 || args.examples == 0 {
        anyhow::bail!("--examples and --held-out must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let base = if args.random {
        random_base(args)?
    } else {
        real_base(args)?
    };
    let mut args = args.clone();
    if args.random && args.steps.is_none() {
        args.steps = Some(100);
    }
    super::cluster::runtime()?.block_on(demo_loop::run(args, base, started))
}

/// A small random Llama with the demo tokenizer, in `<out>/base-model`.
fn random_base(args: &DemoArgs) -> anyhow::Result<Base> {
    let dir = args.out.join("base-model");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = args.out.join("base-model.config.json");
    write(&config, MODEL_CONFIG)?;
    let cfg = tributary_model::init::init_random_checkpoint(&config, args.seed, &dir)
        .context("making the random base model")?;
    write(&dir.join("tokenizer.json"), TOKENIZER_JSON)?;
    write(&dir.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
    write(&dir.join("chat_template.jinja"), CHAT_TEMPLATE)?;
    println!(
        "0/6 base model: random Llama, {} layers, hidden {}, vocab {} in {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        dir.display()
    );
    Ok(Base {
        dir: std::fs::canonicalize(&dir)?,
        name: "random-llama".into(),
    })
}

/// SmolLM2 (or `--model`): a GGUF file is imported once into `<out>/base-model` (f32, the
/// same base digest as the file); a directory is used as it is.
fn real_base(args: &DemoArgs) -> anyhow::Result<Base> {
    let file = args.model.clone().unwrap_or_else(default_model_path);
    anyhow::ensure!(
        file.exists(),
        "{} is missing: run scripts/fetch-smollm2.sh (scripts/demo.sh does), pass --model, or use --random for random weights",
        file.display()
    );
    let t0 = Instant::now();
    let dir = if tributary_model::gguf::is_gguf(&file) {
        let dir = args.out.join("base-model");
        if !dir.join("config.json").is_file() {
            // A half-written import from an interrupted run is redone.
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            tributary_model::gguf::import::import(
                &file,
                &dir,
                tributary_model::gguf::import::ImportDtype::F32,
            )
            .with_context(|| format!("importing {}", file.display()))?;
        }
        dir
    } else {
        file.clone()
    };
    let digest = tributary_model::source::base_model_digest(&dir)?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.split('.').next().unwrap_or(s).to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "base".into());
    println!(
        "0/6 base model: {} as {name}, digest {} ({:.1} s)",
        file.display(),
        tributary_model::source::hex(&digest),
        t0.elapsed().as_secs_f64()
    );
    Ok(Base {
        dir: std::fs::canonicalize(&dir)?,
        name,
    })
}
