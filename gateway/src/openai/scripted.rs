//! A test-only inference engine whose answers follow the prompt: `hold` keeps a request
//! open until its client leaves (then notifies `cancelled`), `fail` fails after the first
//! token, `overload` is refused at submit; everything else answers "Hel" "lo" per choice,
//! cut at `max_tokens`. Every request is recorded.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tributary_protocol::inference::{FinishReason, TokenLogprob};
use tributary_protocol::{
    BoxFuture, Digest, EngineInfo, EventStream, InferenceError, InferenceEvent, InferenceRequest,
    InferenceService, Prompt,
};

/// A test-only engine: scripted answers, every request recorded.
#[derive(Default)]
pub struct ScriptedEngine {
    pub requests: Mutex<Vec<InferenceRequest>>,
    /// Set when a held request's client went away (its stream was dropped).
    pub cancelled: Arc<tokio::sync::Notify>,
}

fn prompt_text(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|m| m.content.as_str()).collect(),
    }
}

impl InferenceService for ScriptedEngine {
    fn submit(
        &self,
        request: InferenceRequest,
    ) -> BoxFuture<'_, Result<EventStream, InferenceError>> {
        let text = prompt_text(&request.prompt);
        self.requests.lock().unwrap().push(request.clone());
        let cancelled = self.cancelled.clone();
        Box::pin(async move {
            if text.contains("overload") {
                return Err(InferenceError::Overloaded {
                    retry_after_ms: 2500,
                });
            }
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                let _ = tx.send(InferenceEvent::Started { prompt_tokens: 3 }).await;
                let p = &request.params;
                for choice in 0..p.n {
                    let toks = ["Hel", "lo"];
                    let take = (p.max_tokens as usize).min(toks.len());
                    for t in &toks[..take] {
                        let logprobs = p
                            .logprobs
                            .map(|k| {
                                vec![TokenLogprob {
                                    text: t.to_string(),
                                    logprob: -0.25,
                                    top: (0..k).map(|i| (format!("alt{i}"), -1.0)).collect(),
                                }]
                            })
                            .unwrap_or_default();
                        let ev = InferenceEvent::Text {
                            choice,
                            text: t.to_string(),
                            logprobs,
                        };
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                        if text.contains("fail") {
                            let _ = tx
                                .send(InferenceEvent::Failed(InferenceError::Internal(
                                    "scripted failure".into(),
                                )))
                                .await;
                            return;
                        }
                        if text.contains("hold") {
                            tx.closed().await;
                            cancelled.notify_one();
                            return;
                        }
                    }
                    let reason = if take < toks.len() {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    };
                    let _ = tx
                        .send(InferenceEvent::Finished {
                            choice,
                            reason,
                            completion_tokens: take as u32,
                        })
                        .await;
                }
            });
            Ok(rx)
        })
    }

    fn info(&self) -> EngineInfo {
        EngineInfo {
            base_name: "tiny".into(),
            base_digest: Digest::of(b"base"),
            context_window: 2048,
            max_lora_rank: 64,
        }
    }
}
