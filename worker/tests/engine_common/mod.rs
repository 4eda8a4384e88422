//! Helpers shared by the engine's tests: the tiny-llama fixture, adapters made from it,
//! offline generation (`tributary_model::generate`, what `tributary model generate` runs) to
//! compare with, and collecting an engine's event stream.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::{Distribution, Tensor};
use tributary_model::decoder::CausalLm;
use tributary_model::generate::{GenerationParams, ModelSource, generate};
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};
use tributary_model::sampling::SamplingConfig;
use tributary_model::tokenizer::Tokenizer;
use tributary_protocol::inference::{
    EventStream, FinishReason, InferenceEvent, InferenceRequest, ModelChoice, Prompt,
    SamplingParams,
};
use tributary_worker::engine::EngineConfig;

/// The fixtures folder: `$TRIBUTARY_FIXTURES`, or the workspace's sibling `shared/fixtures`.
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("TRIBUTARY_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

pub fn tiny_llama() -> PathBuf {
    fixtures().join("tiny-llama")
}

/// The fixture's PEFT adapter directory.
pub fn fixture_adapter() -> PathBuf {
    tiny_llama().join("adapter")
}

/// An engine config for the fixture model.
pub fn config() -> EngineConfig {
    EngineConfig::new(tiny_llama(), "tiny-llama")
}

/// The fixture model as `model generate` loads it by default (f32-packed), and its tokenizer.
pub fn offline_model() -> (CausalLm, Tokenizer) {
    let device = tributary_model::device::default_device();
    let mut model = CausalLm::load(&tiny_llama(), &device).expect("load");
    model.to_packed_f32().expect("pack");
    let tok = Tokenizer::from_dir(&tiny_llama()).expect("tokenizer");
    (model, tok)
}

/// A random adapter of rank `r` with non-zero B, saved as PEFT files under `dir`.
pub fn random_adapter(model: &CausalLm, r: usize, seed: u64, dir: &Path) -> PathBuf {
    let cfg = LoraConfig::new(r, 2.0 * r as f64, &TargetModule::ALL);
    let mut a = LoraAdapter::init(cfg, model.config(), seed, model.device()).expect("init");
    for (_, _, m) in a.iter_mut() {
        m.b = Tensor::random(m.b.dims(), Distribution::Normal(0.0, 0.3), model.device());
    }
    let out = dir.join(format!("adapter-{seed}"));
    a.save(&out).expect("save");
    out
}

/// Greedy offline generation of `max_tokens` from `prompt` ids, with the adapter in `dir`.
pub fn offline(
    model: &CausalLm,
    tok: &Tokenizer,
    adapter: Option<&Path>,
    prompt: &[u32],
    max_tokens: usize,
) -> (String, usize, FinishReason) {
    offline_sampled(
        model,
        tok,
        adapter,
        prompt,
        max_tokens,
        SamplingConfig::greedy(),
    )
}

/// Offline generation with `sampling` (as `model generate --temperature --top-p --seed`).
pub fn offline_sampled(
    model: &CausalLm,
    tok: &Tokenizer,
    adapter: Option<&Path>,
    prompt: &[u32],
    max_tokens: usize,
    sampling: SamplingConfig,
) -> (String, usize, FinishReason) {
    let lora =
        adapter.map(|d| LoraAdapter::load(d, model.config(), model.device()).expect("adapter"));
    let source = ModelSource {
        model,
        adapter: lora.as_ref(),
    };
    let mut params =
        GenerationParams::greedy(max_tokens, model.generation_config().eos_token_ids.clone());
    params.sampling = sampling;
    let out = generate(&source, tok, &[prompt.to_vec()], &params, &mut |_| {}).expect("generate");
    let c = &out[0];
    let reason = match c.finish_reason {
        tributary_model::generate::FinishReason::Length => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    (c.text.clone(), c.completion_ids.len(), reason)
}

/// A greedy request.
pub fn request(id: &str, model: ModelChoice, prompt: Prompt, max_tokens: u32) -> InferenceRequest {
    InferenceRequest {
        request_id: id.to_owned(),
        model,
        prompt,
        params: SamplingParams {
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: Some(0),
            stop: Vec::new(),
            n: 1,
            logprobs: None,
        },
        identity: None,
    }
}

/// What one choice of a finished stream said.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub prompt_tokens: u32,
    pub text: String,
    pub completion_tokens: u32,
    pub reason: FinishReason,
}

/// Reads a stream to its end (one choice), checking the event order.
pub async fn collect(mut stream: EventStream) -> Outcome {
    let mut out = Outcome {
        prompt_tokens: 0,
        text: String::new(),
        completion_tokens: 0,
        reason: FinishReason::Stop,
    };
    let mut started = false;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), stream.recv())
            .await
            .expect("an event within 60 s")
            .expect("the stream ended before Finished");
        match ev {
            InferenceEvent::Started { prompt_tokens } => {
                assert!(!started, "two Started events");
                started = true;
                out.prompt_tokens = prompt_tokens;
            }
            InferenceEvent::Text { text, .. } => {
                assert!(started, "Text before Started");
                out.text.push_str(&text);
            }
            InferenceEvent::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                out.reason = reason;
                out.completion_tokens = completion_tokens;
                return out;
            }
            InferenceEvent::Failed(e) => panic!("request failed: {e}"),
        }
    }
}

/// The first event that is not `Started`/`Text` — for streams expected to fail.
pub async fn failure(mut stream: EventStream) -> tributary_protocol::inference::InferenceError {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), stream.recv())
            .await
            .expect("an event within 60 s")
            .expect("the stream ended without Failed");
        match ev {
            InferenceEvent::Failed(e) => return e,
            InferenceEvent::Finished { .. } => panic!("finished instead of failing"),
            _ => {}
        }
    }
}
