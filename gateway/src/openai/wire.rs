//! The OpenAI request bodies exactly as clients send them (serde types, unknown fields
//! refused as OpenAI refuses them). Nothing here is trusted: [`super::validate`] turns a
//! parsed body into a checked request.

use serde::Deserialize;
use serde_json::Value;

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One chat message. `content` is a string, or a list of `{"type": "text", "text": …}`
/// parts; anything else is refused in validation.
#[derive(Debug, Clone, Deserialize)]
pub struct WireMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
    /// Accepted and ignored (OpenAI allows a participant name).
    #[serde(default)]
    pub name: Option<String>,
}

/// The sampling fields both endpoints share. Numbers are taken as JSON numbers and checked
/// in validation, so `max_tokens: -1` or `2^63` get a message naming the field and its
/// range rather than a type error.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    #[serde(default)]
    pub max_tokens: Option<serde_json::Number>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<serde_json::Number>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<serde_json::Number>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub max_completion_tokens: Option<serde_json::Number>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<serde_json::Number>,
    // Flattened fields cannot be combined with deny_unknown_fields in serde, so the shared
    // ones are repeated here and in `CompletionRequest`.
    #[serde(default)]
    pub max_tokens: Option<serde_json::Number>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<serde_json::Number>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<serde_json::Number>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `prompt`: a string, or a list holding one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WirePrompt {
    One(String),
    Many(Vec<Value>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: WirePrompt,
    /// Legacy logprobs: how many alternatives per token (0..=5).
    #[serde(default)]
    pub logprobs: Option<serde_json::Number>,
    #[serde(default)]
    pub max_tokens: Option<serde_json::Number>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<serde_json::Number>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<serde_json::Number>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

impl ChatRequest {
    /// The shared sampling fields (`max_completion_tokens` wins over `max_tokens`).
    pub fn sampling(&self) -> Sampling {
        Sampling {
            max_tokens: self
                .max_completion_tokens
                .clone()
                .or_else(|| self.max_tokens.clone()),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed.clone(),
            stop: self.stop.clone(),
            n: self.n.clone(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            user: self.user.clone(),
            stream: self.stream,
            stream_options: self.stream_options.clone(),
        }
    }
}

impl CompletionRequest {
    /// The shared sampling fields.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            max_tokens: self.max_tokens.clone(),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed.clone(),
            stop: self.stop.clone(),
            n: self.n.clone(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            user: self.user.clone(),
            stream: self.stream,
            stream_options: self.stream_options.clone(),
        }
    }
}
