//! The JSON shapes of answers: whole responses (`chat.completion`, `text_completion`) and
//! stream chunks (`chat.completion.chunk`, `text_completion`), with `usage`, `logprobs` in
//! each endpoint's format and `finish_reason`. Pure functions of what the engine sent.

use serde_json::{Value, json};
use tributary_protocol::inference::{FinishReason, TokenLogprob};

use super::metrics::Usage;
use super::validate::Endpoint;

/// What every answer to one request shares.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created: u64,
    /// `model` as the client gave it.
    pub model: String,
    pub endpoint: Endpoint,
    /// Whether the client asked for logprobs.
    pub logprobs: bool,
}

/// One choice's text so far.
#[derive(Debug, Clone, Default)]
pub struct ChoiceText {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

pub fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

pub fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    let entry =
        |text: &str, lp: f32| json!({ "token": text, "logprob": lp, "bytes": text.as_bytes() });
    let content: Vec<Value> = lps
        .iter()
        .map(|t| {
            let mut e = entry(&t.text, t.logprob);
            crate::json::set(
                &mut e,
                "top_logprobs",
                t.top.iter().map(|(s, lp)| entry(s, *lp)).collect(),
            );
            e
        })
        .collect();
    json!({ "content": content })
}

/// `text_offset` counts from `offset` (the text already sent for this choice).
fn completion_logprobs(lps: &[TokenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::with_capacity(lps.len());
    for t in lps {
        offsets.push(at);
        at += t.text.len();
    }
    json!({
        "tokens": lps.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|t| {
            t.top.iter().map(|(s, lp)| (s.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

impl Head {
    fn logprobs_json(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        match (self.logprobs, self.endpoint) {
            (false, _) => Value::Null,
            (true, Endpoint::Chat) => chat_logprobs(lps),
            (true, Endpoint::Completion) => completion_logprobs(lps, offset),
        }
    }

    /// The whole answer (not streaming).
    pub fn response(&self, choices: &[ChoiceText], usage: Usage) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let finish = c.finish.map(finish_str);
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": i,
                        "message": { "role": "assistant", "content": c.text },
                        "logprobs": self.logprobs_json(&c.logprobs, 0),
                        "finish_reason": finish,
                    }),
                    Endpoint::Completion => json!({
                        "index": i,
                        "text": c.text,
                        "logprobs": self.logprobs_json(&c.logprobs, 0),
                        "finish_reason": finish,
                    }),
                }
            })
            .collect();
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
            "usage": usage_json(usage),
        })
    }

    fn chunk(&self, choices: Vec<Value>, with_usage_null: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion.chunk",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        });
        if with_usage_null {
            crate::json::set(&mut v, "usage", Value::Null);
        }
        v
    }

    /// A stream chunk for one choice: new text (and, for chat, the role on the choice's
    /// first chunk), or its end (`finish`, empty text). `offset`: bytes already sent.
    #[allow(clippy::too_many_arguments)]
    pub fn delta(
        &self,
        choice: u32,
        first: bool,
        text: &str,
        lps: &[TokenLogprob],
        offset: usize,
        finish: Option<FinishReason>,
        usage_null: bool,
    ) -> Value {
        let logprobs = if finish.is_some() && lps.is_empty() {
            Value::Null
        } else {
            self.logprobs_json(lps, offset)
        };
        let c = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = json!({});
                if first {
                    crate::json::set(&mut delta, "role", json!("assistant"));
                }
                if finish.is_none() || !text.is_empty() {
                    crate::json::set(&mut delta, "content", json!(text));
                }
                json!({
                    "index": choice,
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": finish.map(finish_str),
                })
            }
            Endpoint::Completion => json!({
                "index": choice,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": finish.map(finish_str),
            }),
        };
        self.chunk(vec![c], usage_null)
    }

    /// The last chunk when `stream_options.include_usage`: no choices, the usage.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = self.chunk(Vec::new(), false);
        crate::json::set(&mut v, "usage", usage_json(usage));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(endpoint: Endpoint, logprobs: bool) -> Head {
        Head {
            id: "chatcmpl-1".into(),
            created: 5,
            model: "m".into(),
            endpoint,
            logprobs,
        }
    }

    fn lp(text: &str) -> TokenLogprob {
        TokenLogprob {
            text: text.into(),
            logprob: -0.5,
            top: vec![(text.into(), -0.5), ("x".into(), -2.0)],
        }
    }

    #[test]
    fn chat_responses_have_openai_shape() {
        let c = ChoiceText {
            text: "Hello".into(),
            logprobs: vec![lp("Hel"), lp("lo")],
            finish: Some(FinishReason::Length),
        };
        let u = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        };
        let v = head(Endpoint::Chat, true).response(&[c], u);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let lps = &v["choices"][0]["logprobs"]["content"];
        assert_eq!(lps[1]["token"], "lo");
        assert_eq!(lps[1]["top_logprobs"][1]["token"], "x");
        assert_eq!(lps[0]["bytes"], json!([72, 101, 108]));
    }

    #[test]
    fn completion_logprobs_carry_offsets_and_chunks_carry_roles() {
        let h = head(Endpoint::Completion, true);
        let v = h.delta(0, true, "lo", &[lp("lo")], 3, None, false);
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "lo");
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([3]));
        assert_eq!(v["choices"][0]["logprobs"]["top_logprobs"][0]["x"], -2.0);
        assert!(v.get("usage").is_none());
        let h = head(Endpoint::Chat, false);
        let v = h.delta(1, true, "a", &[], 0, None, true);
        assert_eq!(v["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v["choices"][0]["index"], 1);
        assert!(v["usage"].is_null() && v.get("usage").is_some());
        let end = h.delta(1, false, "", &[], 1, Some(FinishReason::Stop), false);
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        let u = h.usage_chunk(Usage {
            prompt_tokens: 1,
            completion_tokens: 1,
        });
        assert_eq!(u["choices"], json!([]));
        assert_eq!(u["usage"]["total_tokens"], 2);
    }
}
