//! `tributary model merge --model DIR --adapter DIR --out DIR`: folds a PEFT LoRA adapter
//! into its base and writes a full Hugging Face checkpoint (f32), tokenizer files included.

use std::path::PathBuf;

use anyhow::Context;
use tributary_model::decoder::CausalLm;
use tributary_model::lora::LoraAdapter;

/// Arguments of `tributary model merge`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// The base checkpoint directory (or a .gguf file).
    #[arg(long)]
    pub model: PathBuf,
    /// The PEFT adapter directory.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory for the merged checkpoint.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let device = tributary_model::device::cpu_device();
    let mut model = CausalLm::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let adapter = LoraAdapter::load(&args.adapter, model.config(), &device)
        .with_context(|| format!("loading adapter {}", args.adapter.display()))?;
    tributary_model::peft::merge_into(&mut model, &adapter)?;
    model
        .save_pretrained(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let copied = if tributary_model::gguf::is_gguf(&args.model) {
        tributary_model::gguf::import::write_tokenizer_files(&args.model, &args.out)?
    } else {
        super::model_init::copy_tokenizer_files(&args.model, &args.out)?
    };
    println!(
        "{}",
        serde_json::json!({
            "out": args.out.display().to_string(),
            "merged_modules": adapter.iter().count(),
            "tokenizer_files": copied,
        })
    );
    Ok(())
}
