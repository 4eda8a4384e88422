//! The model-core fixture checks on burn-wgpu (built only with `--features wgpu`): logits of
//! the base model and with the adapter, greedy tokens with the KV cache, and one training
//! step's loss, adapter gradients and adapter after AdamW, for tiny-llama and tiny-qwen2,
//! against the reference implementation's numbers in `shared/fixtures`.
//!
//! The device is `--device wgpu`'s: the best adapter wgpu finds, software included. In CI
//! that is Mesa's lavapipe, which runs the same WGSL kernels (compiled to SPIR-V, then by
//! LLVM to CPU code) that a GPU runs; slow, but a wrong kernel shows. `TRIBUTARY_WGPU_EXPECT`
//! (`software` or `hardware`) makes the run fail when it lands on the other kind, so a GPU
//! check cannot silently pass on lavapipe. `TRIBUTARY_FIXTURE_DEVICE=cuda[:N]` runs the same
//! checks on burn's CUDA backend instead (a binary built with `--features wgpu,cuda`;
//! scripts/gpu/check.sh; never run: no GPU was available).
//!
//! Tolerances (f32 throughout): the reference is PyTorch's f32 on the CPU, and the CPU path
//! here holds logits within 1e-4. The wgpu kernels sum in a different order (tiled matmul,
//! tree reductions in softmax and RMSNorm) and lavapipe's `exp`/`inverseSqrt` are LLVM's
//! vectorised approximations (a few ulp). Over 2 layers, hidden 64, 12 positions, and logits
//! of magnitude ~0.5, reordering and a few ulp move a logit by about 1e-6 to 1e-5, so the
//! bounds below keep the CPU's 1e-4 (ten times that estimate) on logits and 1e-4 relative on
//! gradients, well inside the 1e-3 absolute that still catches a wrong kernel (a dropped
//! bias, a wrong RoPE pairing or mask moves logits by more than 1e-2). Each test prints the
//! largest difference it saw, so a run shows how much of the bound is used; on lavapipe
//! (2026-12-06, docs/gpu.md): logits 2.4e-7, loss 4.8e-7, gradients 1.2e-6 relative, the
//! AdamW step 1.5e-8 beyond what the gradient differences explain (see `check_first_adamw_step` in tests/common).
//! Greedy tokens must be identical: the smallest top-1/top-2 margin on the greedy paths is
//! 3.7e-3, 37 times the logit tolerance.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use common::*;
use tributary_model::decoder::CausalLm;
use tributary_model::device::{self, Choice, Device, DeviceRequest, Selected};
use tributary_model::lora::LoraAdapter;
use tributary_model::train::Trainer;

/// Max |logit − reference| (f32, see the module docs).
const LOGITS_TOL: f32 = 1e-4;
/// ‖grad − reference‖ / ‖reference‖ per adapter tensor.
const GRAD_REL_TOL: f32 = 1e-4;
/// |loss − reference|.
const LOSS_TOL: f32 = 1e-4;
/// The device under test: `--device wgpu`, or `TRIBUTARY_FIXTURE_DEVICE` (`cuda[:N]` on a
/// binary built with `--features wgpu,cuda`: the same checks on burn's CUDA backend).
fn request() -> DeviceRequest {
    match std::env::var("TRIBUTARY_FIXTURE_DEVICE") {
        Ok(v) => v.parse().expect("TRIBUTARY_FIXTURE_DEVICE"),
        Err(_) => DeviceRequest::Wgpu,
    }
}

/// The device under test ([`request`]), chosen once for the whole test binary (adapter
/// probing and the runtime's first use are not for several threads at once).
fn wgpu() -> &'static Device {
    static SELECTED: OnceLock<Selected> = OnceLock::new();
    let s = SELECTED.get_or_init(|| {
        let s = device::select(request()).expect("the device under test");
        eprintln!("fixtures on {}", s.choice);
        s
    });
    &s.device
}

fn load(name: &str) -> (CausalLm, LoraAdapter) {
    let dev = wgpu();
    let model = CausalLm::load(&model_dir(name), dev).expect("load model");
    let adapter = LoraAdapter::load(&model_dir(name).join("adapter"), model.config(), dev)
        .expect("load adapter");
    (model, adapter)
}

#[test]
fn the_device_is_a_wgpu_adapter_of_the_expected_kind() {
    let start = Instant::now();
    let dev = wgpu();
    assert_ne!(
        *dev,
        device::cpu_device(),
        "--device {} gave the CPU",
        request()
    );
    let s = device::select(request()).expect("select again");
    if let Choice::Cuda(c) = &s.choice {
        // CUDA devices are hardware; TRIBUTARY_WGPU_EXPECT is about wgpu adapters.
        eprintln!("cuda device {}: {}", c.index, c.name);
        eprintln!("device check: {:.2} s", start.elapsed().as_secs_f64());
        return;
    }
    let Choice::Wgpu(adapter) = &s.choice else {
        panic!("--device wgpu chose {}", s.choice)
    };
    match std::env::var("TRIBUTARY_WGPU_EXPECT").as_deref() {
        Ok("software") => assert!(adapter.info.is_software(), "{} is hardware", adapter.info),
        Ok("hardware") => assert!(!adapter.info.is_software(), "{} is software", adapter.info),
        Ok(other) => panic!("TRIBUTARY_WGPU_EXPECT={other}: expected software or hardware"),
        Err(_) => {}
    }
    // `auto` never lands on a software adapter.
    let auto = device::select(DeviceRequest::Auto).expect("auto");
    if adapter.info.is_software() {
        assert_eq!(auto.choice, Choice::Cpu, "auto took {}", auto.choice);
    }
    eprintln!("device check: {:.2} s", start.elapsed().as_secs_f64());
}

#[test]
fn logits_match_reference_base_and_lora() {
    let start = Instant::now();
    for name in MODELS {
        let (model, adapter) = load(name);
        let reference = reference(name);
        let rows = input_rows(name);
        for (key, lora) in [("base_logits", None), ("lora_logits", Some(&adapter))] {
            let logits = model.forward(ids_tensor(&rows, model.device()), &[], lora, None);
            let (shape, want) = reference.get_f32(key).expect(key);
            assert_eq!(logits.dims().to_vec(), shape, "{name} {key} shape");
            let diff = max_abs_diff(&values(&logits), &want);
            eprintln!("wgpu {name} {key}: max abs diff {diff:e}");
            assert!(
                diff <= LOGITS_TOL,
                "{name} {key}: max abs diff {diff} > {LOGITS_TOL}"
            );
        }
    }
    eprintln!("logits: {:.2} s", start.elapsed().as_secs_f64());
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
    let start = Instant::now();
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
    eprintln!("greedy: {:.2} s", start.elapsed().as_secs_f64());
}

#[test]
fn train_step_loss_gradients_and_adamw_match_reference() {
    let start = Instant::now();
    for name in MODELS {
        let (model, adapter) = load(name);
        let reference = reference(name);
        let want_loss = reference_json(name)["train_step"]["loss"]
            .as_f64()
            .expect("loss") as f32;
        let mut trainer = Trainer::from_adapter(
            &model,
            adapter.clone(),
            fixture_train_config(tributary_model::precision::Precision::F32),
        )
        .expect("trainer");
        let grads = trainer
            .compute_gradients(&fixture_examples(name), 0)
            .expect("gradients");
        let loss = (grads.loss_sum / grads.tokens as f64) as f32;
        assert!(
            (loss - want_loss).abs() <= LOSS_TOL,
            "{name}: loss {loss} vs {want_loss}"
        );
        let mean = grads.mean_as_adapter(&adapter);
        let (worst, got_grads) = check_gradients(name, &mean, &reference, GRAD_REL_TOL);
        eprintln!(
            "wgpu {name}: loss {loss} (ref {want_loss}, diff {:e}), worst gradient rel err {worst:e}",
            (loss - want_loss).abs()
        );
        let stats = trainer.apply_gradients(grads).expect("step");
        assert_eq!(stats.step, 1);
        let (worst, worst_unexplained) =
            check_after_first_step(name, &trainer.adapter(), &reference, &got_grads);
        eprintln!(
            "wgpu {name}: worst after-step abs diff {worst:e}, {worst_unexplained:e} beyond \
             what the gradient differences explain"
        );
    }
    eprintln!("train step: {:.2} s", start.elapsed().as_secs_f64());
}
