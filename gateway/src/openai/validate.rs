//! Validation: a request body's bytes in, a typed [`ValidRequest`] out, or an
//! [`ApiError`] naming the field and the limit. Everything the engine receives has passed
//! through here; the engine only checks what needs the tokenizer (prompt length, roles its
//! chat template refuses).

use serde::de::DeserializeOwned;
use tributary_protocol::{ChatMessage, Prompt, SamplingParams};

use super::wire::{ChatRequest, CompletionRequest, Sampling, Stop, WireMessage, WirePrompt};
use crate::error::ApiError;

/// The gateway's limits on one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body, in bytes (413 beyond it).
    pub max_body_bytes: usize,
    /// Most choices per request (`n`).
    pub max_n: u32,
    /// Most stop strings.
    pub max_stop: usize,
    /// Longest stop string, in bytes.
    pub max_stop_bytes: usize,
    /// Most messages in a chat.
    pub max_messages: usize,
    /// Most alternatives per token (`top_logprobs`; `logprobs` on completions is at most 5).
    pub max_top_logprobs: u32,
    /// `max_tokens` when the request gives none (capped by the context window).
    pub default_max_tokens: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_n: 16,
            max_stop: 4,
            max_stop_bytes: 256,
            max_messages: 2048,
            max_top_logprobs: 20,
            default_max_tokens: 256,
        }
    }
}

/// Which OpenAI endpoint a request came to (it decides the response's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// A request that passed every check; only `model` is still a client's string (resolving it
/// needs the adapter catalog).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub endpoint: Endpoint,
    /// `model` as the client gave it (answers echo it back).
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// `user`, for logs.
    pub user: Option<String>,
}

/// Parses JSON with the failing field's path in the message.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "body",
            "the request body is empty: send a JSON object",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid(
            "body",
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = if inner.is_syntax() || inner.is_eof() {
            "the request body is not valid JSON"
        } else {
            "the request body does not match the schema"
        };
        let field = (path != "." && !path.is_empty()).then_some(path);
        let message = match &field {
            Some(f) => format!("{what}: {f}: {inner}"),
            None => format!("{what}: {inner}"),
        };
        ApiError::BadRequest { field, message }
    })?;
    de.end().map_err(|e| {
        ApiError::invalid("body", format!("trailing characters after the JSON: {e}"))
    })?;
    Ok(value)
}

fn no_nul(field: &str, s: &str) -> Result<(), ApiError> {
    if s.contains('\0') {
        return Err(ApiError::invalid(
            field,
            format!("{field} contains a NUL character (\\u0000), which is not accepted"),
        ));
    }
    Ok(())
}

fn integer(field: &str, n: &serde_json::Number, lo: u64, hi: u64) -> Result<u64, ApiError> {
    let out_of_range = || {
        ApiError::invalid(
            field,
            format!("{field} = {n} is out of range: must be an integer in {lo}..={hi}"),
        )
    };
    let v = n.as_u64().ok_or_else(out_of_range)?;
    if v < lo || v > hi {
        return Err(out_of_range());
    }
    Ok(v)
}

/// Checks the sampling fields both endpoints share. `max_field` names the field the client
/// used for the token limit.
fn sampling(
    s: &Sampling,
    max_field: &str,
    limits: &Limits,
    context_window: u32,
    logprobs: Option<u32>,
) -> Result<(SamplingParams, bool, bool), ApiError> {
    let max_tokens = match &s.max_tokens {
        Some(n) => integer(max_field, n, 1, u64::from(context_window)).map_err(|e| match e {
            ApiError::BadRequest { field, message } => ApiError::BadRequest {
                field,
                message: format!("{message} (the model's context window)"),
            },
            e => e,
        })? as u32,
        None => limits.default_max_tokens.min(context_window).max(1),
    };
    let temperature = s.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature = {temperature} is out of range: must be in 0..=2"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p = {top_p} is out of range: must be in (0, 1]"),
        ));
    }
    let seed = match &s.seed {
        None => None,
        Some(n) => Some(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u,
            // Negative seeds are accepted (OpenAI takes any 64-bit integer): same bits.
            (None, Some(i)) => i as u64,
            _ => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("seed = {n} is not a 64-bit integer"),
                ));
            }
        }),
    };
    let n = match &s.n {
        Some(v) => integer("n", v, 1, u64::from(limits.max_n))? as u32,
        None => 1,
    };
    let stop = match &s.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > limits.max_stop {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop has {} strings; at most {} are accepted",
                stop.len(),
                limits.max_stop
            ),
        ));
    }
    for (i, s) in stop.iter().enumerate() {
        let field = format!("stop[{i}]");
        if s.is_empty() {
            return Err(ApiError::invalid(&field, format!("{field} is empty")));
        }
        if s.len() > limits.max_stop_bytes {
            return Err(ApiError::invalid(
                &field,
                format!(
                    "{field} is {} bytes long; the limit is {} bytes",
                    s.len(),
                    limits.max_stop_bytes
                ),
            ));
        }
        no_nul(&field, s)?;
    }
    for (field, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if let Some(v) = v
            && v != 0.0
        {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{field} = {v} is not supported by this server: only 0 (the default) is accepted"
                ),
            ));
        }
    }
    if let Some(u) = &s.user
        && u.len() > 256
    {
        return Err(ApiError::invalid(
            "user",
            format!("user is {} bytes long; the limit is 256", u.len()),
        ));
    }
    let stream = s.stream.unwrap_or(false);
    let include_usage = match &s.stream_options {
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                "stream_options",
                "stream_options is only allowed when stream is true",
            ));
        }
        Some(o) => o.include_usage.unwrap_or(false),
        None => false,
    };
    let params = SamplingParams {
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed,
        stop,
        n,
        logprobs,
    };
    Ok((params, stream, include_usage))
}

fn message_text(i: usize, m: &WireMessage) -> Result<String, ApiError> {
    let field = format!("messages[{i}].content");
    let text = match &m.content {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{field}[{j}]"),
                            format!(
                                "{field}[{j}] is not a text part: only {{\"type\": \"text\", \"text\": …}} parts are supported"
                            ),
                        ));
                    }
                }
            }
            out
        }
        None | Some(serde_json::Value::Null) => {
            return Err(ApiError::invalid(&field, format!("{field} is missing")));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &field,
                format!("{field} must be a string or a list of text parts"),
            ));
        }
    };
    no_nul(&field, &text)?;
    Ok(text)
}

/// Roles a chat may use (`developer` is OpenAI's newer name for `system`).
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Checks a `/v1/chat/completions` body.
pub fn chat(body: &[u8], limits: &Limits, context_window: u32) -> Result<ValidRequest, ApiError> {
    let req: ChatRequest = parse(body)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages is empty: a chat needs at least one message",
        ));
    }
    if req.messages.len() > limits.max_messages {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "messages has {} entries; at most {} are accepted",
                req.messages.len(),
                limits.max_messages
            ),
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role = {:?} is not a known role: one of {}",
                    m.role,
                    ROLES.join(", ")
                ),
            ));
        }
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role.clone()
        };
        messages.push(ChatMessage {
            role,
            content: message_text(i, m)?,
        });
    }
    let top = match &req.top_logprobs {
        Some(n) => Some(integer("top_logprobs", n, 0, u64::from(limits.max_top_logprobs))? as u32),
        None => None,
    };
    let logprobs = match (req.logprobs.unwrap_or(false), top) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        (false, None) => None,
    };
    let max_field = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let s = req.sampling();
    let (params, stream, include_usage) =
        sampling(&s, max_field, limits, context_window, logprobs)?;
    no_nul("model", &req.model)?;
    Ok(ValidRequest {
        endpoint: Endpoint::Chat,
        model: req.model,
        stream,
        include_usage,
        prompt: Prompt::Chat(messages),
        params,
        user: s.user,
    })
}

/// Checks a `/v1/completions` body.
pub fn completion(
    body: &[u8],
    limits: &Limits,
    context_window: u32,
) -> Result<ValidRequest, ApiError> {
    let req: CompletionRequest = parse(body)?;
    let text = match &req.prompt {
        WirePrompt::One(s) => s.clone(),
        WirePrompt::Many(v) => match v.as_slice() {
            [serde_json::Value::String(s)] => s.clone(),
            [] => return Err(ApiError::invalid("prompt", "prompt is an empty list")),
            [_] => {
                return Err(ApiError::invalid(
                    "prompt",
                    "prompt must be text: token-id prompts are not supported",
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!(
                        "prompt is a list of {} prompts; send one prompt per request",
                        v.len()
                    ),
                ));
            }
        },
    };
    no_nul("prompt", &text)?;
    let logprobs = match &req.logprobs {
        Some(n) => Some(integer("logprobs", n, 0, 5)? as u32),
        None => None,
    };
    let s = req.sampling();
    let (params, stream, include_usage) =
        sampling(&s, "max_tokens", limits, context_window, logprobs)?;
    no_nul("model", &req.model)?;
    Ok(ValidRequest {
        endpoint: Endpoint::Completion,
        model: req.model,
        stream,
        include_usage,
        prompt: Prompt::Text(text),
        params,
        user: s.user,
    })
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
