//! `tributary model …`: init, generate, finetune.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Random weights in the Hugging Face layout, for tests and benchmarks.
    Init(super::model_init::InitArgs),
    /// Fold a PEFT LoRA adapter into its base and write a full checkpoint.
    Merge(super::model_merge::MergeArgs),
    /// Generate text (greedy or sampled), optionally with a LoRA adapter.
    Generate(super::model_generate::GenerateArgs),
    /// Write a GGUF file (llama.cpp, Ollama) as a Hugging Face checkpoint directory.
    Import(super::model_import::ImportArgs),
    /// Write a PEFT LoRA adapter as a GGUF LoRA adapter for llama.cpp (`--lora`).
    ExportLora(super::model_export_lora::ExportLoraArgs),
    /// Fine-tune a LoRA adapter on JSONL data with the base frozen.
    Finetune(super::model_finetune::FinetuneArgs),
}

pub fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Init(args) => super::model_init::run(args),
        ModelCommand::Merge(args) => super::model_merge::run(args),
        ModelCommand::Generate(args) => super::model_generate::run(args),
        ModelCommand::Import(args) => super::model_import::run(args),
        ModelCommand::ExportLora(args) => super::model_export_lora::run(args),
        ModelCommand::Finetune(args) => super::model_finetune::run(&args).map(|_| ()),
    }
}
