//! `tributary model …`: init, generate, finetune.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Random weights in the Hugging Face layout, for tests and benchmarks.
    Init {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init { .. } => anyhow::bail!("model init is not built yet"),
    }
}
