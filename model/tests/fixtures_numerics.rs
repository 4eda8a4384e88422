//! The decoder and LoRA against the reference implementation's numbers in
//! `shared/fixtures` (both tiny-llama and tiny-qwen2): logits, greedy decoding with the
//! KV cache, left padding, cached decoding.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use burn::tensor::Tensor;
use common::*;
use tributary_model::decoder::CausalLm;
use tributary_model::lora::LoraAdapter;

fn load(name: &str) -> (CausalLm, LoraAdapter) {
    let dev = device();
    let model = CausalLm::load(&model_dir(name), &dev).expect("load model");
    let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), &dev)
        .expect("load adapter");
    (model, adapter)
}

#[test]
fn logits_match_reference_base_and_lora() {
    for name in MODELS {
        let (model, adapter) = load(name);
        let reference = reference(name);
        let rows = input_rows(name);
        for (key, lora) in [("base_logits", None), ("lora_logits", Some(&adapter))] {
            let logits = model.forward(ids_tensor(&rows, model.device()), &[], lora, None);
            let (shape, want) = reference.get_f32(key).expect(key);
            assert_eq!(logits.dims().to_vec(), shape, "{name} {key} shape");
            let diff = max_abs_diff(&values(&logits), &want);
            eprintln!("{name} {key}: max abs diff {diff:e}");
            assert!(diff <= 1e-4, "{name} {key}: max abs diff {diff} > 1e-4");
        }
    }
}

/// Greedy decoding of `new` tokens with the KV cache (prefill, then one token per call).
fn greedy(model: &CausalLm, lora: Option<&LoraAdapter>, prompt: &[u32], new: usize) -> Vec<u32> {
    let mut cache = model.new_cache(1);
    let mut out = Vec::new();
    let mut input = vec![prompt.to_vec()];
    for _ in 0..new {
        let logits = model.forward(
            ids_tensor(&input, model.device()),
            &[],
            lora,
            Some(&mut cache),
        );
        let [_, s, v] = logits.dims();
        let last = values(&logits.slice([0..1, s - 1..s, 0..v]));
        let next = argmax(&last) as u32;
        out.push(next);
        input = vec![vec![next]];
    }
    out
}

#[test]
fn greedy_with_kv_cache_matches_reference() {
    for name in MODELS {
        let (model, adapter) = load(name);
        let r = reference_json(name);
        let prompt: Vec<u32> = serde_json::from_value(r["prompt_ids"].clone()).expect("prompt_ids");
        let want_base: Vec<u32> =
            serde_json::from_value(r["greedy_base"].clone()).expect("greedy_base");
        let want_lora: Vec<u32> =
            serde_json::from_value(r["greedy_lora"].clone()).expect("greedy_lora");
        assert_eq!(greedy(&model, None, &prompt, 16), want_base, "{name} base");
        assert_eq!(
            greedy(&model, Some(&adapter), &prompt, 16),
            want_lora,
            "{name} lora"
        );
    }
}

#[test]
fn left_padded_batch_equals_each_row_alone() {
    for name in MODELS {
        let (model, adapter) = load(name);
        let rows = input_rows(name);
        // Row 0 shortened to 7 tokens and left-padded with junk ids to 12.
        let short: Vec<u32> = rows[0][5..].to_vec();
        let mut padded0 = vec![5u32; 5];
        padded0.extend(&short);
        let batch = vec![padded0, rows[1].clone()];
        let logits = model.forward(
            ids_tensor(&batch, model.device()),
            &[5, 0],
            Some(&adapter),
            None,
        );
        let alone0 = model.forward(
            ids_tensor(std::slice::from_ref(&short), model.device()),
            &[],
            Some(&adapter),
            None,
        );
        let alone1 = model.forward(
            ids_tensor(&[rows[1].clone()], model.device()),
            &[],
            Some(&adapter),
            None,
        );
        let v = logits.dims()[2];
        let got0 = values(&logits.clone().slice([0..1, 5..12, 0..v]));
        let got1 = values(&logits.slice([1..2, 0..12, 0..v]));
        let d0 = max_abs_diff(&got0, &values(&alone0));
        let d1 = max_abs_diff(&got1, &values(&alone1));
        assert!(
            d0 < 1e-5 && d1 < 1e-5,
            "{name}: padded vs alone differ by {d0} / {d1}"
        );
    }
}

#[test]
fn cached_decode_equals_full_forward() {
    for name in MODELS {
        let (model, adapter) = load(name);
        let rows = input_rows(name);
        let full = model.forward(ids_tensor(&rows, model.device()), &[], Some(&adapter), None);
        let v = full.dims()[2];
        // Prefill 5 tokens, then 3, then one at a time.
        let mut cache = model.new_cache(2);
        let mut parts: Vec<Tensor<3>> = Vec::new();
        let mut start = 0;
        for len in [5, 3, 1, 1, 1, 1] {
            let chunk: Vec<Vec<u32>> = rows
                .iter()
                .map(|r| r[start..start + len].to_vec())
                .collect();
            parts.push(model.forward(
                ids_tensor(&chunk, model.device()),
                &[],
                Some(&adapter),
                Some(&mut cache),
            ));
            start += len;
        }
        assert_eq!(cache.len(), 12);
        let last = model
            .forward_last(ids_tensor(&rows, model.device()), &[], Some(&adapter), None)
            .expect("forward_last");
        let want_last = values(&full.clone().slice([0..2, 11..12, 0..v]));
        let d = max_abs_diff(&values(&last), &want_last);
        assert!(d < 1e-5, "{name}: forward_last differs by {d}");
        let cached = Tensor::cat(parts, 1);
        let d = max_abs_diff(&values(&cached), &values(&full));
        assert!(
            d < 1e-5,
            "{name}: cached decode differs from the full forward by {d} (vocab {v})"
        );
    }
}

#[test]
fn left_padded_batch_with_cache_matches_each_row() {
    for name in MODELS {
        let (model, _) = load(name);
        let r = reference_json(name);
        let prompt: Vec<u32> = serde_json::from_value(r["prompt_ids"].clone()).expect("prompt_ids");
        let want: Vec<u32> = serde_json::from_value(r["greedy_base"].clone()).expect("greedy_base");
        let rows = input_rows(name);
        // Batch: the 3-token prompt left-padded to 6, and a 6-token row.
        let mut p0 = vec![0u32; 3];
        p0.extend(&prompt);
        let batch = vec![p0, rows[1][..6].to_vec()];
        let mut cache = model.new_cache(2);
        let mut input = batch;
        let mut pads = vec![3usize, 0];
        let mut got = Vec::new();
        for _ in 0..8 {
            let logits = model.forward(
                ids_tensor(&input, model.device()),
                &pads,
                None,
                Some(&mut cache),
            );
            let [_, s, v] = logits.dims();
            let l0 = values(&logits.clone().slice([0..1, s - 1..s, 0..v]));
            let l1 = values(&logits.slice([1..2, s - 1..s, 0..v]));
            let (n0, n1) = (argmax(&l0) as u32, argmax(&l1) as u32);
            got.push(n0);
            input = vec![vec![n0], vec![n1]];
            pads = vec![0, 0];
        }
        assert_eq!(
            got,
            want[..8].to_vec(),
            "{name}: padded batched greedy differs from the reference"
        );
    }
}
