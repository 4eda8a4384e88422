//! Inference requests and their streamed answers: the contract between the HTTP edge (the
//! gateway, which validates and authenticates) and an inference engine (a worker, in this
//! process or over QUIC). The gateway hands an engine a validated [`InferenceRequest`]; the
//! engine answers with a bounded stream of [`InferenceEvent`]s, or refuses at once with an
//! [`InferenceError`] (overload, unknown adapter, a prompt that does not fit).
//!
//! Tokenization and the chat template happen on the engine's side: it holds the base
//! model's tokenizer, so the gateway stays free of model code and the same request can be
//! routed to any worker.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ids::Digest;
use crate::link::BoxFuture;

/// One chat message as the OpenAI API gives it (contents already flattened to text).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`, where a template knows it).
    pub role: String,
    pub content: String,
}

/// What to continue: a chat to render with the base model's template, or raw text.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum Prompt {
    /// `/v1/chat/completions`: rendered with the chat template, generation prompt added.
    Chat(Vec<ChatMessage>),
    /// `/v1/completions`: tokenized as it is (the tokenizer's own BOS rule applies).
    Text(String),
}

/// Which weights answer: the base alone, or the base with one adapter (by digest; names
/// are resolved to digests before a request reaches an engine, so a new version under the
/// same name is never answered from the old weights).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum ModelChoice {
    Base,
    Adapter(Digest),
}

/// Token choice and stopping, already checked against the gateway's limits.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct SamplingParams {
    /// Most generated tokens per choice (at least 1).
    pub max_tokens: u32,
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    /// Seed for sampling; `None` draws one (and the engine reports nothing about it).
    pub seed: Option<u64>,
    /// A choice stops when its text contains any of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Independent choices for the same prompt.
    pub n: u32,
    /// `Some(k)`: report each token's log-probability and the `k` most likely alternatives.
    pub logprobs: Option<u32>,
}

/// One request, validated.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct InferenceRequest {
    /// `chatcmpl-…` / `cmpl-…`: unique, and the request's id in every log, attribution and
    /// reward record after.
    pub request_id: String,
    pub model: ModelChoice,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The identity (API key id) that made the request, for metering and rewards.
    pub identity: Option<String>,
}

/// Why a choice stopped.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// A token's log-probability, and the most likely alternatives at its position.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TokenLogprob {
    pub text: String,
    pub logprob: f32,
    /// `(text, logprob)`, most likely first.
    pub top: Vec<(String, f32)>,
}

/// What an engine streams back for one request. Every request's stream starts with one
/// `Started`, then `Text` events, and ends with exactly one `Finished` per choice, or one
/// `Failed`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum InferenceEvent {
    /// Admitted and prefilled; the prompt's length in tokens.
    Started { prompt_tokens: u32 },
    /// Text that became final for one choice (possibly several tokens; never cut inside a
    /// UTF-8 character or a pending stop string).
    Text {
        choice: u32,
        text: String,
        /// One entry per token behind `text`, when logprobs were asked for.
        logprobs: Vec<TokenLogprob>,
    },
    /// One choice ended.
    Finished {
        choice: u32,
        reason: FinishReason,
        completion_tokens: u32,
    },
    /// The request failed after it was admitted.
    Failed(InferenceError),
}

/// Why an engine refused or failed a request. The gateway maps each to one HTTP status.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    thiserror::Error,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum InferenceError {
    /// Too much in flight: 429 with `Retry-After`.
    #[error("overloaded: retry after {retry_after_ms} ms")]
    Overloaded { retry_after_ms: u64 },
    /// The adapter is not known to this engine (or was deleted): 404.
    #[error("unknown adapter {0}")]
    UnknownAdapter(String),
    /// The prompt plus `max_tokens` does not fit the context window: 400.
    #[error(
        "the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: together over the model's context window of {context} tokens"
    )]
    ContextOverflow {
        prompt_tokens: u32,
        max_tokens: u32,
        context: u32,
    },
    /// A field the engine checks (e.g. a role the chat template does not know): 400.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The engine is shutting down or has no model loaded: 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A fault inside the engine: 500 (the engine keeps serving).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The receiving end of one request's events. Dropping it cancels the request: the engine
/// frees its slot at the next token boundary.
pub type EventStream = mpsc::Receiver<InferenceEvent>;

/// What the engine serves: its base model and limits, for `/v1/models` and validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The base model's name as clients give it in `model`.
    pub base_name: String,
    /// The base model's canonical digest.
    pub base_digest: Digest,
    /// Context window in tokens.
    pub context_window: u32,
    /// Largest LoRA rank it loads.
    pub max_lora_rank: u32,
}

/// One adapter an engine holds in memory (for `/v1/models` and `/v1/adapters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentAdapter {
    pub digest: Digest,
    /// Bytes it takes in the adapter cache.
    pub bytes: u64,
    /// Pinned adapters are never evicted, and cannot be deleted while pinned.
    pub pinned: bool,
}

/// An adapter's PEFT files as the gateway received them (`adapter_config.json`,
/// `adapter_model.safetensors`), for [`InferenceService::check_adapter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterFiles {
    pub files: Vec<(String, Vec<u8>)>,
}

/// An inference engine as the gateway sees it: in-process, or a client to remote workers.
pub trait InferenceService: Send + Sync + 'static {
    /// Admits a request or refuses it at once (never waits for capacity).
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>>;
    /// [`Self::submit`] for a caller that uses the answer only once it is whole (a
    /// non-streaming response): nothing of it reaches the client before the end, so an
    /// engine may start it again (elsewhere) after a failure in the middle. Default:
    /// [`Self::submit`].
    fn submit_whole(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        self.submit(request)
    }
    /// The base model and limits.
    fn info(&self) -> EngineInfo;
    /// The adapters resident now. Default: none reported.
    fn resident(&self) -> Vec<ResidentAdapter> {
        Vec::new()
    }
    /// Drops an adapter from memory once its running requests have drained (after a
    /// delete). Default: nothing to drop.
    fn unload(&self, _adapter: Digest) -> BoxFuture<'_, Result<(), InferenceError>> {
        Box::pin(async { Ok(()) })
    }
    /// Keeps an adapter resident (loading it now if needed) until unpinned; a pinned adapter
    /// is never evicted and cannot be deleted. Default: this engine does not pin.
    fn set_pinned(
        &self,
        _adapter: Digest,
        _pinned: bool,
    ) -> BoxFuture<'_, Result<(), InferenceError>> {
        Box::pin(async {
            Err(InferenceError::Unavailable(
                "this engine does not pin adapters".into(),
            ))
        })
    }
    /// Checks that an adapter fits this engine's base model (module shapes, rank at most
    /// `max_lora_rank`) before it is registered: `Invalid` names what does not fit.
    /// Default: accepted (the engine then checks when it loads the adapter).
    fn check_adapter(&self, _files: AdapterFiles) -> BoxFuture<'_, Result<(), InferenceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A shared engine.
pub type SharedInference = Arc<dyn InferenceService>;
