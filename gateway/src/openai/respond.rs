//! Non-streaming answers: gathers the engine's events into one JSON response. If the client
//! goes away, axum drops this future and with it the [`EventStream`], which cancels the
//! request in the engine.

use axum::Json;
use axum::response::{IntoResponse, Response};
use tributary_protocol::{EventStream, InferenceEvent};

use super::answer::{ChoiceText, Head};
use super::metrics::Tracker;
use crate::admission::Slot;
use crate::error::ApiError;

/// Applies one event to the choices; `Ok(true)` once every choice has finished.
pub fn apply(
    choices: &mut [ChoiceText],
    ev: InferenceEvent,
    finished: &mut usize,
) -> Result<bool, ApiError> {
    match ev {
        InferenceEvent::Started { .. } => {}
        InferenceEvent::Text {
            choice,
            text,
            logprobs,
        } => {
            let c = choices.get_mut(choice as usize).ok_or_else(|| {
                ApiError::Internal(format!("the engine sent text for choice {choice}"))
            })?;
            c.text.push_str(&text);
            c.logprobs.extend(logprobs);
        }
        InferenceEvent::Finished { choice, reason, .. } => {
            let c = choices.get_mut(choice as usize).ok_or_else(|| {
                ApiError::Internal(format!("the engine finished choice {choice}"))
            })?;
            if c.finish.is_none() {
                c.finish = Some(reason);
                *finished += 1;
            }
        }
        InferenceEvent::Failed(e) => return Err(e.into()),
    }
    Ok(*finished == choices.len())
}

/// Waits for every choice, then answers with the whole response.
pub async fn respond(
    head: Head,
    n: u32,
    first: InferenceEvent,
    mut events: EventStream,
    mut tracker: Tracker,
    slot: Slot,
) -> Result<Response, ApiError> {
    let mut choices = vec![ChoiceText::default(); n as usize];
    let mut finished = 0;
    let mut done = apply(&mut choices, first, &mut finished);
    while let Ok(false) = done {
        let Some(ev) = events.recv().await else {
            done = Err(ApiError::Internal(
                "the engine ended the request before every choice finished".into(),
            ));
            break;
        };
        tracker.on_event(&ev);
        done = apply(&mut choices, ev, &mut finished);
    }
    drop(events);
    drop(slot);
    if let Err(e) = done {
        tracker.finish(false);
        return Err(e);
    }
    let usage = tracker.finish(true);
    tracing::info!(
        request_id = %head.id,
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        "answered"
    );
    Ok(Json(head.response(&choices, usage)).into_response())
}
