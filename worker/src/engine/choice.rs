//! One choice of a request as it is generated: its tokens, its sampler, and the text it
//! streams. Text is streamed only once it is final: never cut inside a UTF-8 character
//! (the tokenizer's decode ends in U+FFFD while a character's bytes are incomplete) nor
//! inside what may still become a stop string, exactly as `tributary_model::generate`
//! streams it, so the concatenated events equal the offline completion's text.

use tributary_model::generate::{find_stop, stable_len};
use tributary_model::sampling::{Sampler, SamplingConfig};
use tributary_model::tokenizer::Tokenizer;
use tributary_protocol::inference::{FinishReason, InferenceEvent, TokenLogprob};

use super::scheduler::SeqId;

/// What the engine needs to know from one token's handling.
#[derive(Debug)]
pub(crate) struct Emitted {
    /// The event to stream (text that became final), if any.
    pub text: Option<InferenceEvent>,
    /// The choice has finished (its `Finished` event follows `text`).
    pub finished: Option<InferenceEvent>,
}

/// One choice's state.
#[derive(Debug)]
pub(crate) struct Choice {
    pub index: u32,
    pub seq: SeqId,
    /// Prompt then generated tokens (the scheduler's known tokens).
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    sampler: Sampler,
    max_tokens: usize,
    stop: Vec<String>,
    eos: Vec<u32>,
    logprobs: Option<u32>,
    text: String,
    emitted: usize,
    /// Logprobs of tokens whose text has not been streamed yet.
    pending_logprobs: Vec<TokenLogprob>,
    pub finished: bool,
}

/// A choice's fixed parameters.
#[derive(Debug, Clone)]
pub(crate) struct ChoiceParams {
    pub sampling: SamplingConfig,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub eos: Vec<u32>,
    pub logprobs: Option<u32>,
}

impl Choice {
    pub fn new(
        index: u32,
        seq: SeqId,
        prompt: Vec<u32>,
        params: &ChoiceParams,
    ) -> Result<Self, String> {
        let sampler =
            Sampler::for_row(params.sampling.clone(), index as usize).map_err(|e| e.to_string())?;
        Ok(Self {
            index,
            seq,
            prompt_len: prompt.len(),
            tokens: prompt,
            sampler,
            max_tokens: params.max_tokens,
            stop: params.stop.clone(),
            eos: params.eos.clone(),
            logprobs: params.logprobs,
            text: String::new(),
            emitted: 0,
            pending_logprobs: Vec::new(),
            finished: false,
        })
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Chooses the next token from `logits`, appends it, and says what to stream.
    pub fn on_logits(
        &mut self,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
    ) -> Result<Emitted, String> {
        let lp = self.logprobs.map(|k| log_softmax(logits, k as usize));
        let token = self
            .sampler
            .next_token(logits, &self.tokens)
            .map_err(|e| e.to_string())?;
        self.tokens.push(token);
        if let Some((all, top)) = lp {
            let text = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
            self.pending_logprobs.push(TokenLogprob {
                text: text(token),
                logprob: all
                    .get(token as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY),
                top: top.into_iter().map(|(id, p)| (text(id), p)).collect(),
            });
        }
        let mut reason = None;
        if self.eos.contains(&token) {
            reason = Some(FinishReason::Stop);
        }
        let decoded = tokenizer
            .decode(self.tokens.get(self.prompt_len..).unwrap_or_default(), true)
            .map_err(|e| e.to_string())?;
        let mut safe = stable_len(&decoded, &self.stop);
        match find_stop(&decoded, &self.stop) {
            Some(at) => {
                self.text = decoded[..at].to_owned();
                reason = Some(FinishReason::Stop);
                safe = at;
            }
            None => self.text = decoded,
        }
        if reason.is_none() && self.generated() >= self.max_tokens {
            reason = Some(FinishReason::Length);
        }
        if reason.is_some() {
            safe = self.text.len();
        }
        let mut text = None;
        if safe > self.emitted
            && self.text.is_char_boundary(self.emitted)
            && self.text.is_char_boundary(safe)
        {
            text = Some(InferenceEvent::Text {
                choice: self.index,
                text: self.text[self.emitted..safe].to_owned(),
                logprobs: std::mem::take(&mut self.pending_logprobs),
            });
            self.emitted = safe;
        } else if !self.pending_logprobs.is_empty()
            && (reason.is_some() || (safe == self.text.len() && self.emitted == safe))
        {
            // Tokens that add no text (nothing is held back): their logprobs go out now.
            text = Some(InferenceEvent::Text {
                choice: self.index,
                text: String::new(),
                logprobs: std::mem::take(&mut self.pending_logprobs),
            });
        }
        let finished = reason.map(|reason| {
            self.finished = true;
            InferenceEvent::Finished {
                choice: self.index,
                reason,
                completion_tokens: self.generated() as u32,
            }
        });
        Ok(Emitted { text, finished })
    }
}

/// Log-probabilities of every token (the model's distribution, before temperature and
/// nucleus) and the `k` most likely `(id, logprob)`, most likely first.
fn log_softmax(logits: &[f32], k: usize) -> (Vec<f32>, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let all: Vec<f32> = logits.iter().map(|&x| (x as f64 - log_z) as f32).collect();
    let mut order: Vec<u32> = (0..all.len() as u32).collect();
    let k = k.min(all.len());
    let at = |i: u32| all.get(i as usize).copied().unwrap_or(f32::NEG_INFINITY);
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| at(b).total_cmp(&at(a)));
    }
    let mut top: Vec<(u32, f32)> = order.iter().take(k).map(|&i| (i, at(i))).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    (all, top)
}

#[cfg(test)]
mod tests {
    use super::log_softmax;

    #[test]
    fn log_softmax_normalises_and_orders_the_top() {
        let (all, top) = log_softmax(&[1.0, 3.0, 2.0, 0.0], 2);
        let total: f64 = all.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert!((top[0].1 - all[1]).abs() < 1e-7);
    }
}
