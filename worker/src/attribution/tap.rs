//! Between the engine and the gateway: forwards every event of an answer as it comes and,
//! once the answer is over, hands it to attribution. The answer is never held back: the
//! forwarding task sends each event on before it looks at it.
//!
//! Billing: each choice is billed for the tokens it generated (the engine's count when it
//! finished; a choice cut short because the client went away is billed for the text it was
//! sent, re-tokenized, and attributed on exactly that text). `n > 1` bills and attributes
//! every choice as its own answer, in one record and one reward entry for the request id.
//! A request that failed before any text is not billed.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tributary_protocol::EventStream;
use tributary_protocol::inference::{FinishReason, InferenceEvent, InferenceRequest, ModelChoice};

use super::compute::{AnswerChoice, AnswerJob};
use super::service::AttributionSink;

/// Wraps `events` of `request`; answers of the base model alone are not attributed.
pub fn tap(
    request: &InferenceRequest,
    mut events: EventStream,
    sink: &AttributionSink,
) -> EventStream {
    let ModelChoice::Adapter(adapter) = request.model else {
        return events;
    };
    let (tx, rx) = mpsc::channel(64);
    let sink = sink.clone();
    let active = sink.answer_started();
    let mut job = AnswerJob {
        request_id: request.request_id.clone(),
        adapter: adapter.to_hex(),
        prompt: request.prompt.clone(),
        choices: Vec::new(),
        requester: request.identity.clone(),
        answered_ms: 0,
        attempts: 0,
        retry_at_ms: 0,
    };
    tokio::spawn(async move {
        let mut texts: BTreeMap<u32, AnswerChoice> = BTreeMap::new();
        let mut client_gone = false;
        let mut failed = false;
        while let Some(ev) = events.recv().await {
            let seen = match &ev {
                InferenceEvent::Text { choice, text, .. } => {
                    Some((*choice, Some(text.clone()), None))
                }
                InferenceEvent::Finished {
                    choice,
                    reason,
                    completion_tokens,
                } => Some((*choice, None, Some((*reason, *completion_tokens)))),
                InferenceEvent::Failed(_) => {
                    failed = true;
                    None
                }
                InferenceEvent::Started { .. } => None,
            };
            if tx.send(ev).await.is_err() {
                // The client went away: what was sent so far is what is billed. Dropping
                // `events` cancels the request in the engine.
                client_gone = true;
            }
            if let Some((choice, text, fin)) = seen {
                let c = texts.entry(choice).or_insert_with(|| AnswerChoice {
                    index: choice,
                    text: String::new(),
                    finish: "cancelled".into(),
                    completion_tokens: 0,
                });
                if !client_gone {
                    if let Some(t) = text {
                        c.text.push_str(&t);
                    }
                    if let Some((reason, n)) = fin {
                        c.finish = match reason {
                            FinishReason::Stop => "stop",
                            FinishReason::Length => "length",
                        }
                        .into();
                        c.completion_tokens = u64::from(n);
                    }
                }
            }
            if client_gone {
                break;
            }
        }
        drop(active);
        if failed && texts.values().all(|c| c.text.is_empty()) {
            return;
        }
        job.choices = texts.into_values().collect();
        if job.choices.is_empty() {
            return;
        }
        job.answered_ms = super::now_ms();
        sink.submit(job);
    });
    rx
}
