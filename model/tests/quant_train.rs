//! Training on an NF4 base through the autodiff step that keeps no f32 copy of the weights
//! (`quant_train::frozen_matmul`): its input gradient is `dY·W` with `W` dequantized, and the
//! LoRA gradients of a training step equal those of the same base held as dense f32 tensors.
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

use burn::tensor::{Distribution, Tensor, TensorData};
use common::*;
use tributary_model::decoder::{CausalLm, LinearWeight};
use tributary_model::lora::{LoraAdapter, TargetModule};
use tributary_model::quant::Nf4Matrix;
use tributary_model::quant_train::frozen_matmul;
use tributary_model::train::{TrainConfig, TrainExample, Trainer};

/// Row-major `a` `[m, k]` times `b` `[k, n]` in f64, on the host.
fn host_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                .sum();
            out[i * n + j] = s as f32;
        }
    }
    out
}

#[test]
fn frozen_nf4_matmul_gives_the_product_and_the_input_gradient() {
    let dev = device();
    let (rows, inp, out) = (300, 96, 128); // more rows than the host kernels take
    let w_t: Tensor<2> = Tensor::random([inp, out], Distribution::Normal(0.0, 0.5), &dev);
    let q = Nf4Matrix::from_tensor(&w_t, "w").expect("quantize");
    let w_deq = q.dequantize(); // `Wᵀ` [in, out] as the op must see it
    let weight = LinearWeight::Nf4(Arc::new(q));
    for rows in [3, rows] {
        let x_host: Tensor<2> = Tensor::random([rows, inp], Distribution::Normal(0.0, 1.0), &dev);
        let c_host: Tensor<2> = Tensor::random([rows, out], Distribution::Normal(0.0, 1.0), &dev);
        let (x_vals, c_vals) = (values(&x_host), values(&c_host));
        let ad = dev.clone().autodiff();
        let x = Tensor::<2>::from_data(TensorData::new(x_vals.clone(), [rows, inp]), &ad)
            .require_grad();
        let c = Tensor::<2>::from_data(TensorData::new(c_vals.clone(), [rows, out]), &ad);
        let y = frozen_matmul(&weight, &x, |x| {
            let w = weight.dense(&x.device());
            x.matmul(w)
        })
        .expect("an autodiff flex input takes the frozen path");
        assert!(y.is_autodiff());
        let want_y = host_matmul(&x_vals, &w_deq, rows, inp, out);
        let got_y = values(&y);
        assert!(rel_err(&got_y, &want_y) < 1e-5, "rows {rows}: product");

        // loss = Σ y∘c, so dL/dx = c·W = c·(Wᵀ)ᵀ.
        let grads = y.mul(c).sum().backward();
        let gx = x.grad(&grads).expect("x has a gradient");
        let mut w = vec![0.0f32; inp * out]; // W [out, in]
        for i in 0..inp {
            for j in 0..out {
                w[j * inp + i] = w_deq[i * out + j];
            }
        }
        let want_gx = host_matmul(&c_vals, &w, rows, out, inp);
        let e = rel_err(&values(&gx), &want_gx);
        assert!(e < 1e-5, "rows {rows}: input gradient rel err {e}");
    }
    // Dense weights and untracked inputs are left to burn's matmul.
    let x: Tensor<2> = Tensor::random([2, inp], Distribution::Normal(0.0, 1.0), &dev);
    assert!(frozen_matmul(&weight, &x, |x| x).is_none());
    let dense = LinearWeight::Dense(w_t);
    let x_ad = x.autodiff().require_grad();
    assert!(frozen_matmul(&dense, &x_ad, |x| x).is_none());
}

/// The NF4 model with every projection replaced by its dequantized f32 tensor.
fn dequantized(q: &CausalLm) -> CausalLm {
    let dev = device();
    let mut d = q.clone();
    for layer in d.layers.iter_mut() {
        for t in TargetModule::ALL {
            let lin = layer.linear_mut(t);
            lin.weight_t = LinearWeight::Dense(lin.weight_t.dense(&dev));
        }
    }
    d
}

#[test]
fn nf4_training_gradients_equal_the_dequantized_f32_base() {
    for name in MODELS {
        let dev = device();
        let mut q = CausalLm::load(&model_dir(name), &dev).expect("load");
        q.quantize_nf4().expect("quantize");
        let d = dequantized(&q);
        assert!(d.linear_weight_bytes() > 6 * q.linear_weight_bytes());
        let adapter =
            LoraAdapter::load(&model_dir(name).join("adapter"), q.config(), &dev).expect("adapter");
        let r = reference(name);
        let examples: Vec<TrainExample> = int_rows(&r, "input_ids")
            .into_iter()
            .zip(int_rows(&r, "labels"))
            .map(|(i, l)| TrainExample {
                input_ids: i.into_iter().map(|t| t as u32).collect(),
                labels: l,
            })
            .collect();
        let cfg = TrainConfig {
            batch_size: examples.len(),
            max_grad_norm: None,
            ..TrainConfig::default()
        };
        let grads = |m: &CausalLm| {
            let tr = Trainer::from_adapter(m, adapter.clone(), cfg.clone()).expect("trainer");
            let g = tr.compute_gradients(&examples, 0).expect("gradients");
            let loss = g.loss_sum / g.tokens as f64;
            (loss, g.mean_as_adapter(&adapter))
        };
        let (loss_q, gq) = grads(&q);
        let (loss_d, gd) = grads(&d);
        assert!(
            (loss_q - loss_d).abs() < 1e-5,
            "{name}: {loss_q} vs {loss_d}"
        );
        let mut worst = 0.0f32;
        for ((l, t, a), (_, _, b)) in gq.iter().zip(gd.iter()) {
            for (x, y) in [(&a.a, &b.a), (&a.b, &b.b)] {
                let e = rel_err(&values(x), &values(y));
                worst = worst.max(e);
                assert!(e <= 1e-4, "{name}: layer {l} {t:?} grad rel err {e}");
            }
        }
        eprintln!(
            "{name}: NF4 vs dequantized f32 base, loss {loss_q}, worst grad rel err {worst:e}"
        );
    }
}
