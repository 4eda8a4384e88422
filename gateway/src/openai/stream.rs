//! Streaming answers: server-sent events, one chunk per engine `Text` event, a chunk with
//! `finish_reason` per choice, the usage chunk when `stream_options.include_usage`, then
//! `data: [DONE]`. A failure after the stream began is sent as an `{"error": …}` event
//! before `[DONE]` (the status line is already gone). When the client disconnects, hyper
//! drops this stream, and with it the [`EventStream`] (which cancels the request in the
//! engine), the admission slot and the tracker (counted as cancelled).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream;
use tributary_protocol::{EventStream, InferenceEvent};

use super::answer::Head;
use super::metrics::Tracker;
use crate::admission::Slot;
use crate::error::ApiError;

struct State {
    head: Head,
    first: Option<InferenceEvent>,
    events: Option<EventStream>,
    tracker: Option<Tracker>,
    slot: Option<Slot>,
    /// Bytes of text sent per choice (completion logprobs' offsets).
    sent: Vec<usize>,
    /// Whether a choice's first chunk (with the role) went out.
    opened: Vec<bool>,
    finished: Vec<bool>,
    include_usage: bool,
    pending: VecDeque<Event>,
}

fn data(v: serde_json::Value) -> Event {
    Event::default().data(v.to_string())
}

impl State {
    /// Ends the stream: the error (if any), the usage chunk, `[DONE]`; releases the engine
    /// stream and the slot.
    fn close(&mut self, error: Option<ApiError>) {
        let ok = error.is_none();
        if let Some(e) = error {
            tracing::warn!(request_id = %self.head.id, error = %e, "stream failed");
            self.pending.push_back(data(e.body()));
        }
        self.events = None;
        self.slot = None;
        if let Some(t) = self.tracker.take() {
            let usage = t.finish(ok);
            if ok {
                tracing::info!(
                    request_id = %self.head.id,
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    "streamed"
                );
                if self.include_usage {
                    self.pending.push_back(data(self.head.usage_chunk(usage)));
                }
            }
        }
        self.pending.push_back(Event::default().data("[DONE]"));
    }

    fn on_event(&mut self, ev: InferenceEvent) {
        if let Some(t) = &mut self.tracker {
            t.on_event(&ev);
        }
        match ev {
            InferenceEvent::Started { .. } => {}
            InferenceEvent::Text {
                choice,
                text,
                logprobs,
            } => {
                let i = choice as usize;
                let (Some(opened), Some(sent)) = (self.opened.get_mut(i), self.sent.get_mut(i))
                else {
                    return self.close(Some(ApiError::Internal(format!(
                        "the engine sent text for choice {choice}"
                    ))));
                };
                let first = !std::mem::replace(opened, true);
                let offset = *sent;
                *sent += text.len();
                let v = self.head.delta(
                    choice,
                    first,
                    &text,
                    &logprobs,
                    offset,
                    None,
                    self.include_usage,
                );
                self.pending.push_back(data(v));
            }
            InferenceEvent::Finished { choice, reason, .. } => {
                let i = choice as usize;
                let (Some(finished), Some(opened), Some(&offset)) = (
                    self.finished.get_mut(i),
                    self.opened.get_mut(i),
                    self.sent.get(i),
                ) else {
                    return self.close(Some(ApiError::Internal(format!(
                        "the engine finished choice {choice}"
                    ))));
                };
                if std::mem::replace(finished, true) {
                    return;
                }
                let first = !std::mem::replace(opened, true);
                let v = self.head.delta(
                    choice,
                    first,
                    "",
                    &[],
                    offset,
                    Some(reason),
                    self.include_usage,
                );
                self.pending.push_back(data(v));
                if self.finished.iter().all(|f| *f) {
                    self.close(None);
                }
            }
            InferenceEvent::Failed(e) => self.close(Some(e.into())),
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            let ev = match self.first.take() {
                Some(ev) => Some(ev),
                None => match &mut self.events {
                    Some(rx) => rx.recv().await,
                    // Closed and drained.
                    None => return None,
                },
            };
            match ev {
                Some(ev) => self.on_event(ev),
                None => self.close(Some(ApiError::Internal(
                    "the engine ended the request before every choice finished".into(),
                ))),
            }
        }
    }
}

/// The SSE response for an admitted request whose first event is `first`.
pub fn respond(
    head: Head,
    n: u32,
    include_usage: bool,
    first: InferenceEvent,
    events: EventStream,
    tracker: Tracker,
    slot: Slot,
) -> Response {
    let n = n as usize;
    let state = State {
        head,
        first: Some(first),
        events: Some(events),
        tracker: Some(tracker),
        slot: Some(slot),
        sent: vec![0; n],
        opened: vec![false; n],
        finished: vec![false; n],
        include_usage,
        pending: VecDeque::new(),
    };
    let body = stream::unfold(state, State::next);
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}
