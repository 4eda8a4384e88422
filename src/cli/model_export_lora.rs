//! `tributary model export-lora --model BASE --adapter DIR --out FILE.gguf`: a PEFT LoRA
//! adapter written as a GGUF LoRA adapter (llama.cpp's `convert_lora_to_gguf.py` layout), so
//! llama.cpp users can run it with `--lora FILE.gguf` on the GGUF base.

use std::path::PathBuf;

use anyhow::Context;
use tributary_model::gguf::lora_export::export_lora;
use tributary_model::lora::LoraAdapter;
use tributary_model::source::open_checkpoint;

/// Arguments of `tributary model export-lora`.
#[derive(Debug, clap::Args)]
pub struct ExportLoraArgs {
    /// The base model the adapter was trained on (a .gguf file or a directory).
    #[arg(long)]
    pub model: PathBuf,
    /// The PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The GGUF adapter file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExportLoraArgs) -> anyhow::Result<()> {
    let cfg = open_checkpoint(&args.model)
        .with_context(|| format!("reading the base model {}", args.model.display()))?
        .config;
    let device = tributary_model::device::cpu_device();
    let adapter = LoraAdapter::load(&args.adapter, &cfg, &device)
        .with_context(|| format!("loading the adapter from {}", args.adapter.display()))?;
    let tensors = export_lora(&adapter, &cfg, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "out": args.out.display().to_string(),
            "tensors": tensors,
            "rank": adapter.config.r,
            "alpha": adapter.config.lora_alpha,
            "architecture": cfg.architecture.model_type(),
        })
    );
    Ok(())
}
