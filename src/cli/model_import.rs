//! `tributary model import FILE.gguf --out DIR [--dtype f32|bf16]`: a GGUF file (llama.cpp,
//! Ollama) written out as a Hugging Face checkpoint directory that transformers and every
//! `--model DIR` command load. Prints one JSON line with what it wrote and the canonical
//! base digest (the same for the file and an f32 import of it).

use std::path::PathBuf;

use anyhow::Context;
use tributary_model::gguf::import::{ImportDtype, import};
use tributary_model::source::{base_model_digest, hex};

/// The dtype of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    /// The dequantized values exactly (the same base digest as the GGUF file).
    F32,
    /// bfloat16: half the bytes, values rounded (a different base digest).
    Bf16,
}

/// Arguments of `tributary model import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The GGUF file (architectures llama and qwen2).
    pub file: PathBuf,
    /// Output directory (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// Dtype of model.safetensors.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
}

pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    let dtype = match args.dtype {
        Dtype::F32 => ImportDtype::F32,
        Dtype::Bf16 => ImportDtype::Bf16,
    };
    let started = std::time::Instant::now();
    let report = import(&args.file, &args.out, dtype)
        .with_context(|| format!("importing {}", args.file.display()))?;
    let digest = base_model_digest(&args.out)
        .with_context(|| format!("digesting {}", args.out.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "out": report.out.display().to_string(),
            "architecture": report.architecture,
            "tensors": report.tensors,
            "parameters": report.parameters,
            "weight_bytes": report.weight_bytes,
            "dtype": match args.dtype { Dtype::F32 => "f32", Dtype::Bf16 => "bf16" },
            "base_model_digest": hex(&digest),
            "seconds": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
