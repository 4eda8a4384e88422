//! A tied lm_head is the embedding itself, with no second (transposed) copy, and an NF4
//! model's embedding/head stays NF4: its lookups, logits and gradients equal those of the
//! same model with the dequantized table in f32 (`decoder/embed.rs`).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use tributary_model::decoder::{CausalLm, HEAD_CHUNK_ROWS, LinearWeight, TokenEmbedding};
use tributary_model::lora::{LoraAdapter, TargetModule};
use tributary_model::quant::Nf4Matrix;
use tributary_model::train::{TrainConfig, TrainExample, Trainer};
use tributary_model::weights::TensorStore;

const TIED: &str = "tiny-qwen2";
const UNTIED: &str = "tiny-llama";

/// f32 bytes of every tensor in the fixture checkpoint (each stored once).
fn checkpoint_f32_bytes(name: &str) -> usize {
    let store = TensorStore::open_checkpoint(&model_dir(name)).expect("open");
    store
        .names()
        .iter()
        .map(|n| store.shape(n).unwrap().iter().product::<usize>() * 4)
        .sum()
}

#[test]
fn a_tied_head_is_the_embedding_not_a_copy() {
    let dev = device();
    let tied = CausalLm::load(&model_dir(TIED), &dev).expect("load");
    assert!(tied.config().tie_word_embeddings);
    assert!(tied.head_t.is_none(), "a tied head was copied");
    // The base holds each checkpoint tensor once: a second vocab × hidden table would add
    // vocab·hidden·4 bytes.
    assert_eq!(tied.base_resident_bytes(), checkpoint_f32_bytes(TIED));
    let untied = CausalLm::load(&model_dir(UNTIED), &dev).expect("load");
    assert!(untied.head_t.is_some());
    assert_eq!(untied.base_resident_bytes(), checkpoint_f32_bytes(UNTIED));

    // Packing for decode adds the packed head only.
    let mut packed = tied.clone();
    packed.to_bf16().expect("bf16");
    assert!(
        packed.head_t.is_none(),
        "packing copied the tied head to f32"
    );
    // ... and its logits for many rows (past the host kernel's row limit) are the
    // packed head's, one chunk of rows at a time: the same as a few rows at a time.
    let rows = input_rows(TIED);
    let all = values(&packed.forward(ids_tensor(&rows, &dev), &[], None, None));
    let one = values(&packed.forward(ids_tensor(&rows[..1], &dev), &[], None, None));
    assert!(max_abs_diff(&all[..one.len()], &one) < 1e-4);
}

/// The f32 model whose embedding and projections are the NF4 model's, dequantized.
fn dequantized_twin(nf4: &CausalLm, f32_model: &CausalLm) -> CausalLm {
    let dev = f32_model.device().clone();
    let mut twin = f32_model.clone();
    twin.embed = TokenEmbedding::Dense(nf4.embed.dense(&dev));
    for (lt, lq) in twin.layers.iter_mut().zip(&nf4.layers) {
        for t in TargetModule::ALL {
            lt.linear_mut(t).weight_t = LinearWeight::Dense(lq.linear(t).weight_t.dense(&dev));
        }
    }
    twin
}

#[test]
fn an_nf4_embedding_gives_the_dequantized_tables_logits() {
    let dev = device();
    let f32_model = CausalLm::load(&model_dir(TIED), &dev).expect("load");
    let nf4 = CausalLm::load_nf4(&model_dir(TIED), &dev).expect("load_nf4");
    let TokenEmbedding::Nf4(q) = &nf4.embed else {
        panic!("the NF4 model's embedding is not NF4");
    };
    assert!(nf4.head_t.is_none());
    // NF4 codes and scales: 4.5 bits a value.
    let [v, h] = q.shape();
    assert_eq!(q.resident_bytes(), v * h / 2 + v * h / 64 * 4);
    let twin = dequantized_twin(&nf4, &f32_model);
    let adapter =
        LoraAdapter::load(&model_dir(TIED).join("adapter"), f32_model.config(), &dev).unwrap();
    let rows = input_rows(TIED);
    for lora in [None, Some(&adapter)] {
        let want = values(&twin.forward(ids_tensor(&rows, &dev), &[], lora, None));
        let got = values(&nf4.forward(ids_tensor(&rows, &dev), &[], lora, None));
        let rel = rel_err(&got, &want);
        assert!(rel < 1e-5, "NF4 head vs its dequantized table: rel {rel}");
        // Against the f32 checkpoint the NF4 table is a real (bounded) change.
        let base = values(&f32_model.forward(ids_tensor(&rows, &dev), &[], lora, None));
        let drift = rel_err(&got, &base);
        assert!(drift > 0.0 && drift < 0.25, "drift {drift}");
    }
    // Double quantization keeps the table NF4 with 8-bit scales.
    let mut dq = nf4.clone();
    tributary_model::quant_double::double_quantize_model(&mut dq).expect("dq");
    match &dq.embed {
        TokenEmbedding::Nf4(d) => {
            assert!(d.is_double_quantized());
            assert!(d.resident_bytes() < q.resident_bytes());
        }
        TokenEmbedding::Dense(_) => panic!("double quantization made the table dense"),
    }
    let twin_dq = dequantized_twin(&dq, &f32_model);
    let want = values(&twin_dq.forward(ids_tensor(&rows, &dev), &[], None, None));
    let got = values(&dq.forward(ids_tensor(&rows, &dev), &[], None, None));
    assert!(rel_err(&got, &want) < 1e-5);
}

#[test]
fn training_through_an_nf4_head_gives_the_dense_tables_gradients() {
    let dev = device();
    let f32_model = CausalLm::load(&model_dir(TIED), &dev).expect("load");
    let nf4 = CausalLm::load_nf4(&model_dir(TIED), &dev).expect("load_nf4");
    let twin = dequantized_twin(&nf4, &f32_model);
    let adapter =
        LoraAdapter::load(&model_dir(TIED).join("adapter"), f32_model.config(), &dev).unwrap();
    let examples: Vec<TrainExample> = input_rows(TIED)
        .into_iter()
        .map(TrainExample::causal)
        .collect();
    let cfg = TrainConfig {
        batch_size: examples.len(),
        ..TrainConfig::default()
    };
    let g_nf4 = Trainer::from_adapter(&nf4, adapter.clone(), cfg.clone())
        .unwrap()
        .compute_gradients(&examples, 0)
        .unwrap();
    let g_twin = Trainer::from_adapter(&twin, adapter, cfg)
        .unwrap()
        .compute_gradients(&examples, 0)
        .unwrap();
    assert!((g_nf4.loss_sum - g_twin.loss_sum).abs() < 1e-4 * g_twin.loss_sum.abs());
    let mut nonzero = 0;
    for (a, b) in g_nf4.grads.iter().zip(&g_twin.grads) {
        for (ga, gb) in a.iter().zip(b) {
            let (ga, gb) = (values(ga), values(gb));
            assert!(
                rel_err(&ga, &gb) < 1e-4,
                "gradient rel {}",
                rel_err(&ga, &gb)
            );
            nonzero += usize::from(gb.iter().any(|&x| x != 0.0));
        }
    }
    assert!(nonzero > 0);
}

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn nf4_rows_dequantize_like_the_whole_matrix() {
    // 7 columns: blocks of 64 straddle rows.
    for shape in [[37usize, 7usize], [5, 64], [3, 100]] {
        let n = shape[0] * shape[1];
        let q = Nf4Matrix::quantize(&pseudo_random(n, 3), shape).unwrap();
        let all = q.dequantize();
        for (r0, r1) in [
            (0, 1),
            (1, 2),
            (2, 5),
            (0, shape[0]),
            (shape[0] - 1, shape[0] + 4),
        ] {
            let got = q.dequantize_rows(r0..r1);
            let r1 = r1.min(shape[0]);
            assert_eq!(
                got,
                all[r0 * shape[1]..r1 * shape[1]],
                "{shape:?} rows {r0}..{r1}"
            );
        }
        let dq = q.double_quantize().unwrap();
        assert_eq!(
            dq.dequantize_rows(1..3),
            dq.dequantize()[shape[1]..3 * shape[1]]
        );
    }
}

#[test]
fn a_chunked_nf4_head_equals_the_dense_product_and_its_gradient() {
    // More vocabulary rows than one chunk, and not a multiple of it.
    let (vocab, h, m) = (2 * HEAD_CHUNK_ROWS + 77, 64, 5);
    let table = Nf4Matrix::quantize(&pseudo_random(vocab * h, 1), [vocab, h]).unwrap();
    let dense = table.dequantize();
    let nf4 = TokenEmbedding::Nf4(Arc::new(table));
    let dev = device();
    let xs = pseudo_random(m * h, 2);
    let e = Tensor::<2>::from_data(TensorData::new(dense.clone(), [vocab, h]), &dev);
    let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [m, h]), &dev);
    let want = values(&x.clone().matmul(e.clone().transpose()));
    let got = values(&nf4.head_forward(x));
    assert!(
        max_abs_diff(&got, &want) < 1e-4,
        "{}",
        max_abs_diff(&got, &want)
    );
    // Embedding lookups gather the dequantized rows.
    let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 4100, 2048, 7], [4]), &dev);
    let rows = values(&nf4.gather(ids, &dev).unwrap());
    assert_eq!(rows[h..2 * h], dense[4100 * h..4101 * h]);

    // Under autodiff: the input gradient of Σ y·u through the NF4 step and through burn's
    // matmul on the dense table.
    let ad = dev.autodiff();
    let upstream = Tensor::<2>::from_data(
        TensorData::new(pseudo_random(m * vocab, 4), [m, vocab]),
        &ad,
    );
    let x1 = Tensor::<2>::from_data(TensorData::new(xs.clone(), [m, h]), &ad).require_grad();
    let x2 = Tensor::<2>::from_data(TensorData::new(xs, [m, h]), &ad).require_grad();
    let e_ad = Tensor::<2>::from_data(TensorData::new(dense, [vocab, h]), &ad);
    let y1 = nf4.head_forward(x1.clone());
    let y2 = x2.clone().matmul(e_ad.transpose());
    assert!(max_abs_diff(&values(&y1), &values(&y2)) < 1e-4);
    let g1 = y1.mul(upstream.clone()).sum().backward();
    let g2 = y2.mul(upstream).sum().backward();
    let (d1, d2) = (
        values(&x1.grad(&g1).expect("grad")),
        values(&x2.grad(&g2).expect("grad")),
    );
    assert!(
        rel_err(&d1, &d2) < 1e-5,
        "input gradients: rel {}",
        rel_err(&d1, &d2)
    );
}
