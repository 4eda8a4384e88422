//! `tributary model generate`: text from a checkpoint, optionally with a LoRA adapter.
//!
//! The prompt is plain text (`--prompt`, encoded as transformers' `tokenizer(text)`) or a
//! chat (`--chat`, a JSON array of `{role, content}` messages, or `@FILE` holding one,
//! rendered through the chat template with the generation prompt). Without `--json` the
//! completion streams to stdout as it is generated; with `--json` stdout gets exactly one
//! line `{"prompt_ids": [...], "completion_ids": [...], "text": "..."}`. A timing line goes
//! to stderr either way.

use anyhow::Context as _;
use clap::Args;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::bench_model::Quantize;
use tributary_model::decoder::CausalLm;
use tributary_model::device::Selected;
use tributary_model::generate::{Completion, GenerationParams, ModelSource, StreamEvent, generate};
use tributary_model::lora::LoraAdapter;
use tributary_model::sampling::SamplingConfig;
use tributary_model::tokenizer::Tokenizer;

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Hugging Face checkpoint directory (config.json, model.safetensors), or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Directory with tokenizer.json (and chat template); default: the model directory.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Plain-text prompt.
    #[arg(long, required_unless_present = "chat", conflicts_with = "chat")]
    pub prompt: Option<String>,
    /// Chat as a JSON array of {"role", "content"} messages, or @FILE containing one.
    #[arg(long)]
    pub chat: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1] (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Repetition penalty over prompt and completion (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable); it is cut from the output.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Never stop at an end-of-sequence id (always generate --max-new-tokens; for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON line instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Store the base's projection weights in 4-bit NormalFloat (QLoRA).
    #[arg(long, value_enum, default_value_t = super::bench_model::Quantize::None)]
    pub quantize: super::bench_model::Quantize,
    /// Store NF4's absmax scales in 8 bits (QLoRA's double quantization; needs --quantize nf4).
    #[arg(long)]
    pub double_quant: bool,
    /// Storage of the dense weights (projections not in NF4, and the lm_head): f32-packed
    /// (the default) holds the same f32 numbers in the decode kernels' layout; bf16 halves the
    /// bytes read per generated token; f32 keeps burn's tensors and GEMM.
    #[arg(long, value_enum, default_value_t = super::bench_model::Dtype::F32Packed)]
    pub dtype: super::bench_model::Dtype,
    /// Where to compute (`--dtype f32-packed|bf16` and `--quantize nf4` are CPU-only).
    #[command(flatten)]
    pub device: super::device_arg::DeviceArg,
}

/// A model and its tokenizer, loaded and checked against each other.
pub struct Loaded {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
}

/// Loads the checkpoint in `model_dir` onto `device` and the tokenizer in `tokenizer_dir`
/// (default: the model directory); the tokenizer's vocabulary must fit in the model's. With
/// `--quantize nf4` the projections are quantized as they are read ([`CausalLm::load_nf4`]:
/// no f32 copy of them), and with `double_quant` their block scales are then stored in 8 bits
/// (refused without NF4).
pub fn load(
    model_dir: &Path,
    tokenizer_dir: Option<&Path>,
    quantize: Quantize,
    double_quant: bool,
    selected: &Selected,
) -> anyhow::Result<Loaded> {
    quantize.check_double_quant(double_quant)?;
    if let Some(path) = quantize.cpu_only() {
        super::device_arg::require(selected, path)?;
    }
    let device = selected.device.clone();
    let model = if quantize.is_nf4() {
        CausalLm::load_nf4(model_dir, &device)
    } else {
        CausalLm::load(model_dir, &device)
    };
    let mut model =
        model.with_context(|| format!("loading the model from {}", model_dir.display()))?;
    quantize.apply_blocks(&mut model, model_dir)?;
    if double_quant {
        tributary_model::quant_double::double_quantize_model(&mut model)?;
    }
    let tok_dir = tokenizer_dir.unwrap_or(model_dir);
    let tokenizer = Tokenizer::from_dir(tok_dir).with_context(|| {
        format!(
            "loading the tokenizer from {} (a model made by `model init` has none: pass --tokenizer DIR)",
            tok_dir.display()
        )
    })?;
    let (tv, mv) = (tokenizer.vocab_size(), model.config().vocab_size);
    anyhow::ensure!(
        tv <= mv,
        "the tokenizer in {} has {tv} tokens but the model's vocab_size is {mv}: its ids would not fit",
        tok_dir.display()
    );
    Ok(Loaded { model, tokenizer })
}

/// Loads an adapter for `model`.
pub fn load_adapter(dir: &Path, model: &CausalLm) -> anyhow::Result<LoraAdapter> {
    LoraAdapter::load(dir, model.config(), model.device())
        .with_context(|| format!("loading the adapter from {}", dir.display()))
}

/// Prompt ids from `--prompt` or `--chat`.
pub fn prompt_ids(
    tokenizer: &Tokenizer,
    prompt: Option<&str>,
    chat: Option<&str>,
) -> anyhow::Result<Vec<u32>> {
    if let Some(text) = prompt {
        return Ok(tokenizer.encode_prompt(text)?);
    }
    let chat = chat.context("give --prompt or --chat")?;
    let json = match chat.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("--chat: reading {file}"))?
        }
        None => chat.to_owned(),
    };
    let messages: Vec<serde_json::Value> = serde_json::from_str(&json)
        .context("--chat: expected a JSON array of {\"role\", \"content\"} messages")?;
    anyhow::ensure!(!messages.is_empty(), "--chat: the message list is empty");
    tokenizer
        .encode_chat(&messages, true)
        .context("--chat: rendering the chat template")
}

/// End-of-sequence ids: the generation config's, else the tokenizer's eos token.
pub fn eos_ids(loaded: &Loaded) -> Vec<u32> {
    let from_model = &loaded.model.generation_config().eos_token_ids;
    if from_model.is_empty() {
        loaded.tokenizer.eos_token_id().into_iter().collect()
    } else {
        from_model.clone()
    }
}

/// Generates from `prompt` and, when `stream`, prints text to stdout as it comes; with
/// `timing`, reports prefill and decode speed on stderr.
pub fn complete(
    loaded: &Loaded,
    adapter: Option<&LoraAdapter>,
    prompt: Vec<u32>,
    params: &GenerationParams,
    stream: bool,
    timing: bool,
) -> anyhow::Result<Completion> {
    let source = ModelSource {
        model: &loaded.model,
        adapter,
    };
    let start = Instant::now();
    let mut first_token = None;
    let mut stdout = std::io::stdout().lock();
    let mut on_token = |e: StreamEvent<'_>| {
        first_token.get_or_insert_with(|| start.elapsed());
        if stream && !e.text.is_empty() {
            // A closed stdout (e.g. piped into `head`) must not stop generation with a panic.
            let _ = stdout.write_all(e.text.as_bytes());
            let _ = stdout.flush();
        }
    };
    let out = generate(&source, &loaded.tokenizer, &[prompt], params, &mut on_token)
        .context("generation failed")?;
    let total = start.elapsed();
    if stream {
        let _ = writeln!(stdout);
    }
    let completion = out
        .into_iter()
        .next()
        .context("generation returned no row")?;
    let n = completion.completion_ids.len();
    let prefill = first_token.unwrap_or(total);
    let decode = total.saturating_sub(prefill).as_secs_f64();
    let rate = if n > 1 && decode > 0.0 {
        (n - 1) as f64 / decode
    } else {
        0.0
    };
    if !timing {
        return Ok(completion);
    }
    eprintln!(
        "prompt {} tokens, first token after {:.1} ms; {n} tokens in {:.2} s ({rate:.1} tokens/s after the first); finish: {:?}",
        completion.prompt_ids.len(),
        prefill.as_secs_f64() * 1e3,
        total.as_secs_f64(),
        completion.finish_reason
    );
    Ok(completion)
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let selected = args
        .device
        .select_for(args.quantize.cpu_only().or(args.dtype.cpu_only()))?;
    let mut loaded = load(
        &args.model,
        args.tokenizer.as_deref(),
        args.quantize,
        args.double_quant,
        &selected,
    )?;
    match args.dtype {
        super::bench_model::Dtype::F32 => {}
        super::bench_model::Dtype::F32Packed => loaded.model.to_packed_f32()?,
        super::bench_model::Dtype::Bf16 => loaded.model.to_bf16()?,
    }
    let adapter = args
        .adapter
        .as_deref()
        .map(|dir| load_adapter(dir, &loaded.model))
        .transpose()?;
    let prompt = prompt_ids(
        &loaded.tokenizer,
        args.prompt.as_deref(),
        args.chat.as_deref(),
    )?;
    let params = GenerationParams {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k.filter(|&k| k > 0),
            top_p: args.top_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        },
        eos_token_ids: if args.ignore_eos {
            Vec::new()
        } else {
            eos_ids(&loaded)
        },
        stop: args.stop.clone(),
        pad_token_id: loaded
            .model
            .generation_config()
            .pad_token_id
            .or(loaded.tokenizer.pad_token_id())
            .unwrap_or(0),
    };
    let completion = complete(&loaded, adapter.as_ref(), prompt, &params, !args.json, true)?;
    if args.json {
        // Written by hand to keep the documented key order.
        println!(
            "{{\"prompt_ids\": {}, \"completion_ids\": {}, \"text\": {}}}",
            serde_json::to_string(&completion.prompt_ids)?,
            serde_json::to_string(&completion.completion_ids)?,
            serde_json::to_string(&completion.text)?
        );
    }
    Ok(())
}
