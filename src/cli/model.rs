//! `tributary model …`: init, generate, finetune.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Random weights in the Hugging Face layout, for tests and benchmarks.
    Init(super::model_init::InitArgs),
    /// Fold a PEFT LoRA adapter into its base and write a full checkpoint.
    Merge(super::model_merge::MergeArgs),
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init(args) => super::model_init::run(args),
        ModelCommand::Merge(args) => super::model_merge::run(args),
    }
}
