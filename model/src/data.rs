//! Instruction data: JSONL in alpaca, prompt/completion and OpenAI messages formats, tokenized with prompt tokens masked (-100).
//!
//! Each non-blank line of a JSONL file is one example, in any of three formats (detected
//! per line):
//! - **alpaca**: `{"instruction", "input" (optional), "output"}`; the prompt is the
//!   Stanford Alpaca template ([`alpaca_prompt`]), the completion is `output`;
//! - **prompt/completion**: `{"prompt", "completion"}`, used verbatim;
//! - **messages** (OpenAI chat): `{"messages": [{"role", "content"}, …]}`, rendered through
//!   the tokenizer's chat template; only the assistant turns are trained.
//!
//! Plain-text prompts are encoded as for generation ([`Tokenizer::encode_prompt`]: with
//! the post-processor's special tokens, e.g. a Llama BOS), completions without.
//! Prompt tokens are labelled -100 (ignored by the loss); completion tokens carry their
//! own id, followed by the end-of-sequence token when one is given. Labels are not
//! shifted: position `t` predicts itself and the trainer shifts, as transformers does.
//! Examples longer than [`DataOptions::max_seq_len`] are cut from the right; an example
//! left with no trained token is an error naming its line. [`split_eval`] makes a seeded
//! held-out split and [`BatchPlan`] the seeded order of micro-batches.
//!
//! Data files are untrusted: every access is checked (`get`, `checked_mul`), each error
//! naming the line and field (the lint below keeps it so).
#![deny(clippy::indexing_slicing)]

use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::train::TrainExample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The label of a position the loss ignores.
pub const IGNORE_INDEX: i64 = -100;

/// Everything that can be wrong with a data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid JSON.
    #[error("{origin}:{line}: not a JSON object")]
    Json {
        origin: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// A line matches none of the formats.
    #[error(
        "{origin}:{line}: unknown format (keys {keys}): expected `instruction`+`output` (alpaca), `prompt`+`completion`, or `messages`"
    )]
    UnknownFormat {
        origin: String,
        line: usize,
        keys: String,
    },
    /// A field is missing or has the wrong type.
    #[error("{origin}:{line}: field `{field}`: {reason}")]
    Field {
        origin: String,
        line: usize,
        field: String,
        reason: String,
    },
    /// Tokenizing or rendering the chat failed.
    #[error("{origin}:{line}: cannot tokenize")]
    Tokenize {
        origin: String,
        line: usize,
        #[source]
        source: TokenizerError,
    },
    /// After truncation to the limit, no trained token is left.
    #[error(
        "{origin}:{line}: the prompt takes {prompt_tokens} tokens, so nothing of the completion fits in max_seq_len = {max_seq_len}"
    )]
    NothingToTrain {
        origin: String,
        line: usize,
        prompt_tokens: usize,
        max_seq_len: usize,
    },
    /// The file has no example.
    #[error("{origin}: no examples (the file is empty or only blank lines)")]
    Empty { origin: String },
    /// An option is out of range.
    #[error("data option `{field}` = {value}: {limit}")]
    Option {
        field: &'static str,
        value: String,
        limit: &'static str,
    },
}

/// The format of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `instruction` / `input` / `output`.
    Alpaca,
    /// `prompt` / `completion`.
    PromptCompletion,
    /// OpenAI `messages`.
    Messages,
}

/// How lines become token sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOptions {
    /// Longest sequence kept; longer ones are cut from the right.
    pub max_seq_len: usize,
    /// Appended (and trained) after each alpaca or prompt/completion completion.
    pub eos_token_id: Option<u32>,
}

/// One tokenized example and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Line number in the file (1-based).
    pub line: usize,
    /// The line's format.
    pub format: Format,
    /// Whether it was cut to `max_seq_len`.
    pub truncated: bool,
    /// Token ids and labels.
    pub example: TrainExample,
}

/// Every example of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Where the data came from.
    pub origin: String,
    /// The examples, in file order.
    pub examples: Vec<Example>,
}

impl Dataset {
    /// How many examples were cut to `max_seq_len`.
    pub fn truncated(&self) -> usize {
        self.examples.iter().filter(|e| e.truncated).count()
    }

    /// Total tokens, and trained (labelled) tokens.
    pub fn token_counts(&self) -> (usize, usize) {
        let total = self
            .examples
            .iter()
            .map(|e| e.example.input_ids.len())
            .sum();
        let trained = self
            .examples
            .iter()
            .map(|e| {
                e.example
                    .labels
                    .iter()
                    .filter(|&&l| l != IGNORE_INDEX)
                    .count()
            })
            .sum();
        (total, trained)
    }
}

/// The Stanford Alpaca prompt for an instruction and optional input.
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        )
    } else {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// Reads and tokenizes a JSONL file.
pub fn load_jsonl(
    path: &Path,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_jsonl(&text, &path.display().to_string(), tokenizer, options)
}

/// Tokenizes JSONL text; `origin` names it in errors.
pub fn parse_jsonl(
    text: &str,
    origin: &str,
    tokenizer: &Tokenizer,
    options: &DataOptions,
) -> Result<Dataset, DataError> {
    if options.max_seq_len < 2 {
        return Err(DataError::Option {
            field: "max_seq_len",
            value: options.max_seq_len.to_string(),
            limit: "must be at least 2",
        });
    }
    let mut examples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let ctx = LineCtx {
            origin,
            line: i + 1,
        };
        examples.push(ctx.example(raw, tokenizer, options)?);
    }
    if examples.is_empty() {
        return Err(DataError::Empty {
            origin: origin.to_owned(),
        });
    }
    Ok(Dataset {
        origin: origin.to_owned(),
        examples,
    })
}

struct LineCtx<'a> {
    origin: &'a str,
    line: usize,
}

impl LineCtx<'_> {
    fn field_err(&self, field: impl Into<String>, reason: impl Into<String>) -> DataError {
        DataError::Field {
            origin: self.origin.to_owned(),
            line: self.line,
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn tok_err(&self, source: TokenizerError) -> DataError {
        DataError::Tokenize {
            origin: self.origin.to_owned(),
            line: self.line,
            source,
        }
    }

    /// A required string field.
    fn string<'v>(
        &self,
        obj: &'v serde_json::Map<String, Value>,
        field: &str,
    ) -> Result<&'v str, DataError> {
        match obj.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => {
                Err(self.field_err(field, format!("expected a string, found {}", kind(other))))
            }
            None => Err(self.field_err(field, "missing")),
        }
    }

    fn example(
        &self,
        raw: &str,
        tokenizer: &Tokenizer,
        options: &DataOptions,
    ) -> Result<Example, DataError> {
        let value: Value = serde_json::from_str(raw).map_err(|source| DataError::Json {
            origin: self.origin.to_owned(),
            line: self.line,
            source,
        })?;
        let Value::Object(obj) = value else {
            return Err(self.field_err(
                "(line)",
                format!("expected a JSON object, found {}", kind(&value)),
            ));
        };
        let (format, ids, labels) = if obj.contains_key("messages") {
            let (ids, labels) = self.messages(&obj, tokenizer)?;
            (Format::Messages, ids, labels)
        } else if obj.contains_key("prompt") || obj.contains_key("completion") {
            let prompt = self.string(&obj, "prompt")?;
            let completion = self.string(&obj, "completion")?;
            let (ids, labels) =
                self.pair(prompt, (completion, "completion"), tokenizer, options)?;
            (Format::PromptCompletion, ids, labels)
        } else if obj.contains_key("instruction") || obj.contains_key("output") {
            let instruction = self.string(&obj, "instruction")?;
            let input = match obj.get("input") {
                None | Some(Value::Null) => "",
                Some(_) => self.string(&obj, "input")?,
            };
            let output = self.string(&obj, "output")?;
            let (ids, labels) = self.pair(
                &alpaca_prompt(instruction, input),
                (output, "output"),
                tokenizer,
                options,
            )?;
            (Format::Alpaca, ids, labels)
        } else {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(DataError::UnknownFormat {
                origin: self.origin.to_owned(),
                line: self.line,
                keys: format!("[{}]", keys.join(", ")),
            });
        };
        self.finish(format, ids, labels, options.max_seq_len)
    }

    /// Prompt tokens masked, completion tokens (and eos) trained.
    fn pair(
        &self,
        prompt: &str,
        (completion, field): (&str, &'static str),
        tokenizer: &Tokenizer,
        options: &DataOptions,
    ) -> Result<(Vec<u32>, Vec<i64>), DataError> {
        if completion.is_empty() {
            return Err(self.field_err(field, "is empty: there is nothing to train on"));
        }
        let mut ids = tokenizer
            .encode_prompt(prompt)
            .map_err(|e| self.tok_err(e))?;
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        let mut completion_ids = tokenizer.encode(completion).map_err(|e| self.tok_err(e))?;
        completion_ids.extend(options.eos_token_id);
        labels.extend(completion_ids.iter().map(|&id| i64::from(id)));
        ids.extend(completion_ids);
        Ok((ids, labels))
    }

    /// The chat rendered once; tokens inside assistant turns trained.
    fn messages(
        &self,
        obj: &serde_json::Map<String, Value>,
        tokenizer: &Tokenizer,
    ) -> Result<(Vec<u32>, Vec<i64>), DataError> {
        let Some(Value::Array(messages)) = obj.get("messages") else {
            return Err(self.field_err("messages", "expected an array of {role, content} objects"));
        };
        let mut assistant_turns = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let Value::Object(m) = m else {
                return Err(self.field_err(
                    format!("messages[{i}]"),
                    "expected an object with `role` and `content`",
                ));
            };
            let role = self.string(m, "role").map_err(|_| {
                self.field_err(format!("messages[{i}].role"), "missing or not a string")
            })?;
            if !matches!(m.get("content"), Some(Value::String(_))) {
                return Err(
                    self.field_err(format!("messages[{i}].content"), "missing or not a string")
                );
            }
            if role == "assistant" {
                assistant_turns.push(i);
            }
        }
        if assistant_turns.is_empty() {
            return Err(self.field_err(
                "messages",
                "no message has role `assistant`: there is nothing to train on",
            ));
        }
        let render = |upto: usize, gen_prompt: bool| {
            let head = messages.get(..upto).unwrap_or(messages);
            tokenizer
                .render_chat(head, gen_prompt)
                .map_err(|e| self.tok_err(e))
        };
        let full = render(messages.len(), false)?;
        let mut spans = Vec::new();
        for &i in &assistant_turns {
            let before = render(i, true)?;
            let through = render(i + 1, false)?;
            // Both renders must be prefixes of the whole chat, the turn between them.
            let turn = (full.starts_with(&before) && full.starts_with(&through))
                .then(|| full.get(before.len()..through.len()))
                .flatten();
            let Some(turn) = turn else {
                return Err(self.field_err(
                    format!("messages[{i}]"),
                    "the chat template does not render this conversation as a growing prefix, so the assistant turn cannot be located",
                ));
            };
            let turn = turn.trim_end();
            spans.push((before.len(), before.len() + turn.len()));
        }
        let (ids, offsets) = tokenizer
            .encode_with_offsets(&full)
            .map_err(|e| self.tok_err(e))?;
        let labels = ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(start, _))| {
                if spans.iter().any(|&(a, b)| start >= a && start < b) {
                    i64::from(id)
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        Ok((ids, labels))
    }

    fn finish(
        &self,
        format: Format,
        mut input_ids: Vec<u32>,
        mut labels: Vec<i64>,
        max_seq_len: usize,
    ) -> Result<Example, DataError> {
        let truncated = input_ids.len() > max_seq_len;
        if truncated {
            input_ids.truncate(max_seq_len);
            labels.truncate(max_seq_len);
        }
        // The first position is never predicted (labels shift by one), so it does not count.
        if labels.iter().skip(1).all(|&l| l == IGNORE_INDEX) {
            let prompt_tokens = labels.iter().take_while(|&&l| l == IGNORE_INDEX).count();
            return Err(DataError::NothingToTrain {
                origin: self.origin.to_owned(),
                line: self.line,
                prompt_tokens,
                max_seq_len,
            });
        }
        Ok(Example {
            line: self.line,
            format,
            truncated,
            example: TrainExample { input_ids, labels },
        })
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A seeded permutation of `0..n` (Fisher–Yates over ChaCha8, stable across rand versions).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// Splits `examples` into (train, held-out eval): `eval_fraction` of them (rounded, at least
/// one when the fraction is positive, never all), chosen by a seeded permutation; both keep
/// file order.
pub fn split_eval<T: Clone>(
    examples: &[T],
    eval_fraction: f64,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>), DataError> {
    if !(0.0..1.0).contains(&eval_fraction) {
        return Err(DataError::Option {
            field: "eval_fraction",
            value: eval_fraction.to_string(),
            limit: "must be in [0, 1)",
        });
    }
    let n = examples.len();
    let mut n_eval = (eval_fraction * n as f64).round() as usize;
    if eval_fraction > 0.0 {
        n_eval = n_eval.max(1);
    }
    if n_eval >= n {
        return Err(DataError::Option {
            field: "eval_fraction",
            value: eval_fraction.to_string(),
            limit: "leaves no training example: use a smaller fraction or more data",
        });
    }
    let order = permutation(n, seed ^ 0x6576_616c); // "eval"
    let mut is_eval = vec![false; n];
    for &i in order.iter().take(n_eval) {
        if let Some(e) = is_eval.get_mut(i) {
            *e = true;
        }
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (e, held_out) in examples.iter().zip(is_eval) {
        if held_out {
            eval.push(e.clone());
        } else {
            train.push(e.clone());
        }
    }
    Ok((train, eval))
}

/// The seeded order in which training examples are visited: each epoch is its own
/// permutation; an optimizer step takes `grad_accum` micro-batches of `batch_size` from
/// the stream of epochs. [`BatchPlan::step`] is a pure function of the step index, so a
/// resumed run sees exactly the batches it would have seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    n: usize,
    batch_size: usize,
    grad_accum: usize,
    seed: u64,
}

impl BatchPlan {
    /// A plan over `n` examples.
    pub fn new(
        n: usize,
        batch_size: usize,
        grad_accum: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        for (field, v) in [
            ("n_examples", n),
            ("batch_size", batch_size),
            ("grad_accum", grad_accum),
        ] {
            if v == 0 {
                return Err(DataError::Option {
                    field,
                    value: "0".to_owned(),
                    limit: "must be at least 1",
                });
            }
        }
        if batch_size.checked_mul(grad_accum).is_none() {
            return Err(DataError::Option {
                field: "grad_accum",
                value: grad_accum.to_string(),
                limit: "batch_size × grad_accum must fit in a usize",
            });
        }
        Ok(Self {
            n,
            batch_size,
            grad_accum,
            seed,
        })
    }

    /// Examples per optimizer step.
    pub fn examples_per_step(&self) -> usize {
        // `new` checked that the product fits.
        self.batch_size.saturating_mul(self.grad_accum)
    }

    /// Optimizer steps in `epochs` passes over the data (the last step of a pass may
    /// run into the next pass); `usize::MAX` examples when the product overflows.
    pub fn steps_for_epochs(&self, epochs: usize) -> usize {
        epochs
            .saturating_mul(self.n)
            .div_ceil(self.examples_per_step())
    }

    /// The micro-batches (indices into the training examples) of step `step` (0-based).
    /// Positions past `usize::MAX` examples stay at the last one.
    pub fn step(&self, step: usize) -> Vec<Vec<usize>> {
        let mut pos = step.saturating_mul(self.examples_per_step());
        let mut epoch = pos / self.n;
        let mut order = permutation(self.n, self.seed.wrapping_add(epoch as u64));
        let mut out = Vec::with_capacity(self.grad_accum);
        for _ in 0..self.grad_accum {
            let mut micro = Vec::with_capacity(self.batch_size);
            for _ in 0..self.batch_size {
                if pos / self.n != epoch {
                    epoch = pos / self.n;
                    order = permutation(self.n, self.seed.wrapping_add(epoch as u64));
                }
                micro.extend(order.get(pos % self.n));
                pos = pos.saturating_add(1);
            }
            out.push(micro);
        }
        out
    }
}

#[cfg(test)]
mod tests;
