//! Generation loop: KV-cache prefill and decode, stop strings, max tokens, streaming callback, batches of different lengths.
//!
//! [`generate`] runs any [`LogitsSource`] (a [`ModelSource`]: a [`CausalLm`] with an
//! optional LoRA adapter, or a fake in tests). Prompts of different lengths are left-padded
//! into one batch and prefilled in one call; then every step feeds each row its last token
//! through the KV cache. A row stops on its own when it emits an end-of-sequence id (kept in
//! `completion_ids`, left out of `text`), when its decoded text contains a stop string (the
//! text is cut before it; the ids that produced it are kept), or after `max_new_tokens`;
//! finished rows keep being fed the pad id until all are done. The streaming callback gets
//! each new token with the text it adds, holding back text that may still turn into a stop
//! string or is an incomplete UTF-8 sequence, so the streamed pieces concatenate to `text`.

use crate::decoder::{CausalLm, KvCache};
use crate::error::ModelError;
use crate::lora::LoraAdapter;
use crate::sampling::{Sampler, SamplingConfig, SamplingError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use burn::tensor::Tensor;

/// Everything that can stop generation.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model failed.
    #[error("the model failed")]
    Model(#[from] ModelError),
    /// A sampling parameter is invalid or the logits cannot be sampled.
    #[error("sampling failed")]
    Sampling(#[from] SamplingError),
    /// Decoding the completion failed.
    #[error("decoding the completion failed")]
    Tokenizer(#[from] TokenizerError),
    /// The request is invalid.
    #[error("generation parameter `{field}`: {reason}")]
    Input { field: &'static str, reason: String },
}

/// Something that turns token ids into next-token logits, with a cache across calls.
pub trait LogitsSource {
    /// Per-batch state kept between calls (a KV cache).
    type Cache;
    /// A fresh cache for `batch` rows.
    fn new_cache(&self, batch: usize) -> Self::Cache;
    /// Runs `rows` (all the same length; row `i` starts with `left_pad[i]` padding
    /// positions, an empty slice meaning none) after what `cache` holds, appends them to
    /// it, and returns each row's logits at its last position.
    fn next_logits(
        &self,
        rows: &[Vec<u32>],
        left_pad: &[usize],
        cache: &mut Self::Cache,
    ) -> Result<Vec<Vec<f32>>, GenerateError>;
}

/// A model with an optional LoRA adapter, as a [`LogitsSource`].
#[derive(Debug, Clone, Copy)]
pub struct ModelSource<'a> {
    /// The base model.
    pub model: &'a CausalLm,
    /// The adapter applied unmerged, if any.
    pub adapter: Option<&'a LoraAdapter>,
}

impl LogitsSource for ModelSource<'_> {
    type Cache = KvCache;

    fn new_cache(&self, batch: usize) -> KvCache {
        self.model.new_cache(batch)
    }

    fn next_logits(
        &self,
        rows: &[Vec<u32>],
        left_pad: &[usize],
        cache: &mut KvCache,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let ids = self.model.ids_tensor(rows)?;
        let logits: Tensor<3> = self
            .model
            .try_forward(ids, left_pad, self.adapter, Some(cache))?;
        let [b, s, v] = logits.dims();
        let last = logits.slice([0..b, s - 1..s, 0..v]);
        let data = last.try_into_data().map_err(|e| ModelError::Readback {
            name: "logits".to_owned(),
            reason: format!("{e:?}"),
        })?;
        let flat = data
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Readback {
                name: "logits".to_owned(),
                reason: format!("{e:?}"),
            })?;
        Ok(flat.chunks(v).map(<[f32]>::to_vec).collect())
    }
}

/// When to stop and how to choose tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Most tokens generated per row.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingConfig,
    /// A row stops after emitting any of these.
    pub eos_token_ids: Vec<u32>,
    /// A row stops when its text contains any of these (the text is cut before it).
    pub stop: Vec<String>,
    /// Fed to rows that have finished while others go on.
    pub pad_token_id: u32,
}

impl GenerationParams {
    /// Greedy decoding of at most `max_new_tokens`, stopping at `eos_token_ids`.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            sampling: SamplingConfig::greedy(),
            eos_token_ids,
            stop: Vec::new(),
            pad_token_id: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It emitted an end-of-sequence id.
    Eos,
    /// Its text contained a stop string.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Completion {
    /// The prompt as given.
    pub prompt_ids: Vec<u32>,
    /// Every generated id (an end-of-sequence id included).
    pub completion_ids: Vec<u32>,
    /// Decoded completion without special tokens, cut before a stop string.
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// One streamed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEvent<'a> {
    /// The batch row.
    pub row: usize,
    /// The token just generated.
    pub token: u32,
    /// Text that became final with this token (possibly empty).
    pub text: &'a str,
    /// Whether this was the row's last token.
    pub finished: bool,
}

/// Per-row state of a running generation.
struct Row {
    context: Vec<u32>,
    prompt_len: usize,
    sampler: Sampler,
    text: String,
    emitted: usize,
    finish: Option<FinishReason>,
}

impl Row {
    fn completion(&self) -> &[u32] {
        self.context.get(self.prompt_len..).unwrap_or_default()
    }
}

/// Length of `text` that is safe to stream: no trailing U+FFFD (a UTF-8 sequence still
/// being completed) and no suffix that is a proper prefix of a stop string.
pub fn stable_len(text: &str, stop: &[String]) -> usize {
    let mut end = text.trim_end_matches('\u{FFFD}').len();
    let mut hold = 0;
    for s in stop {
        for (k, _) in s.char_indices().skip(1) {
            if k > hold && text[..end].ends_with(&s[..k]) {
                hold = k;
            }
        }
    }
    end -= hold;
    end
}

/// The first stop string's position in `text`, if any.
pub fn find_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter_map(|s| text.find(s.as_str())).min()
}

fn validate(prompts: &[Vec<u32>], params: &GenerationParams) -> Result<(), GenerateError> {
    if prompts.is_empty() {
        return Err(GenerateError::Input {
            field: "prompts",
            reason: "no prompt given".to_owned(),
        });
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(GenerateError::Input {
            field: "prompts",
            reason: format!("prompt {i} is empty (it needs at least one token)"),
        });
    }
    if params.stop.iter().any(String::is_empty) {
        return Err(GenerateError::Input {
            field: "stop",
            reason: "a stop string is empty".to_owned(),
        });
    }
    params.sampling.validate()?;
    Ok(())
}

/// Generates a completion for each prompt (token ids); `on_token` sees every token as it
/// is chosen.
pub fn generate<S: LogitsSource>(
    source: &S,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
    on_token: &mut dyn FnMut(StreamEvent<'_>),
) -> Result<Vec<Completion>, GenerateError> {
    validate(prompts, params)?;
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let left_pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let padded: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&left_pad)
        .map(|(p, &pad)| {
            let mut row = vec![params.pad_token_id; pad];
            row.extend_from_slice(p);
            row
        })
        .collect();
    let mut rows = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(Row {
                context: p.clone(),
                prompt_len: p.len(),
                sampler: Sampler::for_row(params.sampling.clone(), i)?,
                text: String::new(),
                emitted: 0,
                finish: None,
            })
        })
        .collect::<Result<Vec<_>, SamplingError>>()?;
    if params.max_new_tokens == 0 {
        return Ok(finish_all(rows, FinishReason::Length));
    }
    let mut cache = source.new_cache(prompts.len());
    let mut logits = source.next_logits(&padded, &left_pad, &mut cache)?;
    for step in 0..params.max_new_tokens {
        let last_step = step + 1 == params.max_new_tokens;
        for (i, row) in rows.iter_mut().enumerate() {
            if row.finish.is_some() {
                continue;
            }
            let row_logits = logits.get_mut(i).ok_or_else(|| GenerateError::Input {
                field: "prompts",
                reason: format!(
                    "the model returned logits for {} rows, expected {}",
                    i,
                    prompts.len()
                ),
            })?;
            let token = row.sampler.next_token(row_logits, &row.context)?;
            row.context.push(token);
            advance(row, token, params, tokenizer, last_step, i, on_token)?;
        }
        if rows.iter().all(|r| r.finish.is_some()) {
            break;
        }
        let feed: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| match r.finish {
                None => vec![r.context.last().copied().unwrap_or(params.pad_token_id)],
                Some(_) => vec![params.pad_token_id],
            })
            .collect();
        logits = source.next_logits(&feed, &[], &mut cache)?;
    }
    Ok(finish_all(rows, FinishReason::Length))
}

/// Updates a row's text and finish state after `token`, and streams what became final.
fn advance(
    row: &mut Row,
    token: u32,
    params: &GenerationParams,
    tokenizer: &Tokenizer,
    last_step: bool,
    index: usize,
    on_token: &mut dyn FnMut(StreamEvent<'_>),
) -> Result<(), GenerateError> {
    if params.eos_token_ids.contains(&token) {
        row.finish = Some(FinishReason::Eos);
    }
    let decoded = tokenizer.decode(row.completion(), true)?;
    let mut safe = stable_len(&decoded, &params.stop);
    match find_stop(&decoded, &params.stop) {
        Some(at) => {
            row.text = decoded[..at].to_owned();
            row.finish = Some(FinishReason::Stop);
            safe = at;
        }
        None => row.text = decoded,
    }
    if row.finish.is_none() && last_step {
        row.finish = Some(FinishReason::Length);
    }
    if row.finish.is_some() {
        safe = row.text.len();
    }
    let mut piece = "";
    if safe > row.emitted
        && row.text.is_char_boundary(row.emitted)
        && row.text.is_char_boundary(safe)
    {
        piece = &row.text[row.emitted..safe];
        row.emitted = safe;
    }
    on_token(StreamEvent {
        row: index,
        token,
        text: piece,
        finished: row.finish.is_some(),
    });
    Ok(())
}

fn finish_all(rows: Vec<Row>, default: FinishReason) -> Vec<Completion> {
    rows.into_iter()
        .map(|r| Completion {
            prompt_ids: r.context.get(..r.prompt_len).unwrap_or_default().to_vec(),
            completion_ids: r.completion().to_vec(),
            text: r.text,
            finish_reason: r.finish.unwrap_or(default),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_len_holds_back_stop_prefixes_and_partial_utf8() {
        let stop = vec!["###".to_owned()];
        assert_eq!(stable_len("abc##", &stop), 3);
        assert_eq!(stable_len("abc#x", &stop), 5);
        assert_eq!(stable_len("ab\u{FFFD}", &[]), 2);
        assert_eq!(find_stop("ab###c", &stop), Some(2));
    }
}
