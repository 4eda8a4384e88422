//! `tributary model init --config FILE --seed N --out DIR`: a random checkpoint in the
//! Hugging Face layout (config.json, generation_config.json, model.safetensors), for tests
//! and benchmarks. Tokenizer files found beside the config file are copied too.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Arguments of `tributary model init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// A config.json-style file (architectures, sizes, rope_theta, …).
    #[arg(long)]
    pub config: PathBuf,
    /// Seed of the random weights (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
}

/// Tokenizer-related files copied from the config's folder when present.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// Copies the tokenizer files that exist in `from` into `to`; returns their names.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut copied = Vec::new();
    for f in TOKENIZER_FILES {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
            copied.push(f);
        }
    }
    Ok(copied)
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let cfg = tributary_model::init::init_random_checkpoint(&args.config, args.seed, &args.out)
        .with_context(|| format!("model init from {}", args.config.display()))?;
    let cfg_dir = args.config.parent().unwrap_or_else(|| Path::new("."));
    let copied = copy_tokenizer_files(cfg_dir, &args.out)?;
    let params: usize = tributary_model::init::checkpoint_shapes(&cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "out": args.out.display().to_string(),
            "architecture": cfg.architecture.hf_name(),
            "parameters": params,
            "seed": args.seed,
            "tokenizer_files": copied,
        })
    );
    Ok(())
}
