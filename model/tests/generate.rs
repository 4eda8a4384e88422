//! The generation loop: against a scripted fake model (batching, left padding, per-row
//! stopping, stop strings, streaming), and greedy decoding of the fixture models against
//! the reference implementation's tokens, base and with the adapter.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use common::{MODELS, device, model_dir, reference_json};
use std::collections::HashMap;
use tributary_model::decoder::CausalLm;
use tributary_model::generate::{
    Completion, FinishReason, GenerateError, GenerationParams, LogitsSource, ModelSource, generate,
};
use tributary_model::lora::LoraAdapter;
use tributary_model::sampling::SamplingConfig;
use tributary_model::tokenizer::Tokenizer;

const VOCAB: usize = 512;
const PAD: u32 = 0;
const EOS: u32 = 2;
const FILLER: u32 = 300;

/// A fake model: after prompt `p` it emits `script[p]` token by token, then `FILLER`.
struct Scripted {
    script: HashMap<Vec<u32>, Vec<u32>>,
}

/// Per row: the prompt and the tokens seen after it.
struct FakeCache {
    prompts: Vec<Vec<u32>>,
    seen: Vec<usize>,
}

impl LogitsSource for Scripted {
    type Cache = Option<FakeCache>;

    fn new_cache(&self, _batch: usize) -> Self::Cache {
        None
    }

    fn next_logits(
        &self,
        rows: &[Vec<u32>],
        left_pad: &[usize],
        cache: &mut Self::Cache,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let width = rows[0].len();
        assert!(
            rows.iter().all(|r| r.len() == width),
            "rows must be aligned"
        );
        let c = match cache {
            None => {
                // Prefill: rows are left-padded with PAD.
                let prompts: Vec<Vec<u32>> = rows
                    .iter()
                    .zip(left_pad)
                    .map(|(r, &p)| {
                        assert!(r[..p].iter().all(|&t| t == PAD), "padding is on the left");
                        r[p..].to_vec()
                    })
                    .collect();
                cache.insert(FakeCache {
                    seen: vec![0; rows.len()],
                    prompts,
                })
            }
            Some(c) => {
                assert!(
                    left_pad.is_empty() && width == 1,
                    "decode feeds one token, no padding"
                );
                for s in &mut c.seen {
                    *s += 1;
                }
                c
            }
        };
        Ok(c.prompts
            .iter()
            .zip(&c.seen)
            .map(|(p, &k)| {
                let next = self
                    .script
                    .get(p)
                    .and_then(|s| s.get(k))
                    .copied()
                    .unwrap_or(FILLER);
                let mut logits = vec![0.0; VOCAB];
                logits[next as usize] = 10.0;
                logits
            })
            .collect())
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&model_dir("tiny-llama")).expect("fixture tokenizer")
}

fn params(max_new_tokens: usize, stop: &[&str]) -> GenerationParams {
    GenerationParams {
        max_new_tokens,
        sampling: SamplingConfig::greedy(),
        eos_token_ids: vec![EOS],
        stop: stop.iter().map(|s| s.to_string()).collect(),
        pad_token_id: PAD,
    }
}

fn run(
    source: &Scripted,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    p: &GenerationParams,
) -> (Vec<Completion>, Vec<String>) {
    let mut streamed = vec![String::new(); prompts.len()];
    let out = generate(source, tok, prompts, p, &mut |e| {
        streamed[e.row].push_str(e.text)
    })
    .expect("generate");
    (out, streamed)
}

#[test]
fn batch_of_different_lengths_stops_each_row_on_its_own() {
    let tok = tokenizer();
    let a = tok.encode("The clinic").unwrap();
    let b = tok.encode("A contributor rewards every example").unwrap();
    let c = tok.encode("Who").unwrap();
    let hello = tok.encode(" hello there").unwrap();
    let mut with_eos = hello.clone();
    with_eos.push(EOS);
    with_eos.push(FILLER); // never reached: the row stopped at EOS
    let words = tok.encode(" one two ### three").unwrap();
    let source = Scripted {
        script: HashMap::from([
            (a.clone(), with_eos),
            (b.clone(), words),
            (c.clone(), hello.clone()),
        ]),
    };
    let prompts = vec![a.clone(), b.clone(), c.clone()];
    let (out, streamed) = run(&source, &tok, &prompts, &params(12, &["###"]));

    // Row 0: EOS ends it; the EOS id is kept, the text leaves it out.
    let mut want0 = hello.clone();
    want0.push(EOS);
    assert_eq!(out[0].completion_ids, want0);
    assert_eq!(out[0].text, " hello there");
    assert_eq!(out[0].finish_reason, FinishReason::Eos);
    // Row 1: the stop string cuts the text.
    assert_eq!(out[1].text, " one two ");
    assert_eq!(out[1].finish_reason, FinishReason::Stop);
    assert!(
        tok.decode(&out[1].completion_ids, true)
            .unwrap()
            .contains("###")
    );
    // Row 2: runs to the token limit.
    assert_eq!(out[2].completion_ids.len(), 12);
    assert_eq!(out[2].finish_reason, FinishReason::Length);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.prompt_ids, prompts[i]);
        assert_eq!(
            streamed[i], o.text,
            "row {i}: streamed pieces concatenate to the text"
        );
    }
    // Each row alone gives what it gave in the batch.
    for (i, p) in prompts.iter().enumerate() {
        let (alone, _) = run(
            &source,
            &tok,
            std::slice::from_ref(p),
            &params(12, &["###"]),
        );
        assert_eq!(alone[0], out[i], "row {i}");
    }
}

#[test]
fn streaming_never_shows_part_of_a_stop_string() {
    let tok = tokenizer();
    let prompt = tok.encode("Q").unwrap();
    let cont = tok.encode("ab#c#").unwrap();
    let source = Scripted {
        script: HashMap::from([(prompt.clone(), cont)]),
    };
    let mut pieces = Vec::new();
    let out = generate(&source, &tok, &[prompt], &params(64, &["#d"]), &mut |e| {
        pieces.push(e.text.to_owned())
    })
    .unwrap();
    assert!(
        pieces.iter().all(|p| !p.ends_with('#') || p.contains("#c")),
        "{pieces:?}"
    );
    assert_eq!(pieces.concat(), out[0].text);
    assert!(out[0].text.starts_with("ab#c#"));
}

#[test]
fn zero_tokens_and_bad_requests() {
    let tok = tokenizer();
    let source = Scripted {
        script: HashMap::new(),
    };
    let (out, _) = run(&source, &tok, &[vec![5, 6]], &params(0, &[]));
    assert!(out[0].completion_ids.is_empty());
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    let err = generate(&source, &tok, &[vec![]], &params(4, &[]), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("prompts"), "{err}");
    let err = generate(&source, &tok, &[vec![1]], &params(4, &[""]), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("stop"), "{err}");
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn greedy_matches_the_reference_base_and_lora() {
    let dev = device();
    for name in MODELS {
        let dir = model_dir(name);
        let reference = reference_json(name);
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let model = CausalLm::load(&dir, &dev).unwrap();
        let adapter = LoraAdapter::load(&dir.join("adapter"), model.config(), &dev).unwrap();
        let prompt = tok.encode(reference["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt, ids(&reference["prompt_ids"]));
        let mut p = GenerationParams::greedy(16, model.generation_config().eos_token_ids.clone());
        p.pad_token_id = model.generation_config().pad_token_id.unwrap_or(0);
        for (adapter, key) in [(None, "greedy_base"), (Some(&adapter), "greedy_lora")] {
            let source = ModelSource {
                model: &model,
                adapter,
            };
            let out = generate(
                &source,
                &tok,
                std::slice::from_ref(&prompt),
                &p,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(out[0].completion_ids, ids(&reference[key]), "{name} {key}");
            // In a batch beside a longer prompt (so this row is left-padded): the same tokens.
            let longer = tok
                .encode("A contributor rewards every example. The clinic")
                .unwrap();
            let batch = vec![longer, prompt.clone()];
            let out = generate(&source, &tok, &batch, &p, &mut |_| {}).unwrap();
            assert_eq!(
                out[1].completion_ids,
                ids(&reference[key]),
                "{name} {key} batched"
            );
        }
    }
}
