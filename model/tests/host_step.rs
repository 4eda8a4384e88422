//! The host decode step (`decoder/host_step.rs`) against the burn path: same logits for
//! prefill and cached decoding, with left padding, single and mixed adapters, f32-packed,
//! bf16 and NF4 stores, a KV cache that grows and one that changes path; and the fixtures'
//! reference logits through the host step.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use burn::tensor::{Distribution, Tensor};
use common::*;
use tributary_model::decoder::{CausalLm, HostStep, KvCache, MixedLora};
use tributary_model::init::init_random_checkpoint;
use tributary_model::lora::{LoraAdapter, LoraConfig, TargetModule};

/// How a forward call picks its adapters.
#[derive(Clone, Copy)]
enum Adapters<'a> {
    One(Option<&'a LoraAdapter>),
    Mixed(&'a MixedLora<'a>),
}

/// The same model taking the host step (`mode`) and taking burn's operations.
fn host_and_burn(mut model: CausalLm, mode: HostStep) -> (CausalLm, CausalLm) {
    let mut burn = model.clone();
    burn.set_host_step(HostStep::Off);
    model.set_host_step(mode);
    (model, burn)
}

/// Last-position logits of a prefill of `rows` (left padding `pads`) and of `steps` decode
/// calls with fixed tokens, all through `cache`; flattened `[rows, vocab]` per call.
fn decode(
    model: &CausalLm,
    lora: Adapters<'_>,
    rows: &[Vec<u32>],
    pads: &[usize],
    steps: usize,
    cache: &mut KvCache,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut ids = rows.to_vec();
    let mut pads = pads.to_vec();
    for step in 0..=steps {
        let t = ids_tensor(&ids, model.device());
        let logits = match lora {
            Adapters::One(a) => model.forward_last(t, &pads, a, Some(cache)),
            Adapters::Mixed(m) => model.forward_last_mixed(t, &pads, m, Some(cache)),
        }
        .expect("forward_last");
        out.push(values(&logits));
        ids = (0..rows.len())
            .map(|r| vec![((step * 37 + r * 11) % 200 + 3) as u32])
            .collect();
        pads = vec![0; rows.len()];
    }
    out
}

/// Two rows, the second left-padded by 3.
fn padded_rows() -> (Vec<Vec<u32>>, Vec<usize>) {
    let a: Vec<u32> = (0..9).map(|i| (i * 7 + 5) % 500).collect();
    let mut b: Vec<u32> = vec![0; 3];
    b.extend((0..6).map(|i| (i * 13 + 2) % 500));
    (vec![a, b], vec![0, 3])
}

/// Runs `host` and `burn` over the same calls and checks every step's logits agree within
/// `tol`, and that the host model's cache really is in the host store.
fn check_same(
    host: &CausalLm,
    burn: &CausalLm,
    lora: Adapters<'_>,
    rows: &[Vec<u32>],
    pads: &[usize],
    tol: f32,
) {
    let steps = 4;
    let mut hc = host.new_cache(rows.len());
    let mut bc = burn.new_cache(rows.len());
    let h = decode(host, lora, rows, pads, steps, &mut hc);
    let b = decode(burn, lora, rows, pads, steps, &mut bc);
    assert!(hc.is_on_host(), "the host step did not run");
    let burn_on_host = burn.host_step() != HostStep::Off;
    assert_eq!(bc.is_on_host(), burn_on_host, "the other model's path");
    assert_eq!(hc.len(), bc.len());
    for (step, (x, y)) in h.iter().zip(&b).enumerate() {
        let d = max_abs_diff(x, y);
        assert!(d < tol, "step {step}: host and burn logits differ by {d}");
    }
}

fn packed(name: &str, bf16: bool) -> CausalLm {
    let mut m = CausalLm::load(&model_dir(name), &device()).expect("load");
    if bf16 {
        m.to_bf16().expect("bf16");
    } else {
        m.to_packed_f32().expect("packed");
    }
    m
}

fn fixture_adapter(name: &str, model: &CausalLm) -> LoraAdapter {
    LoraAdapter::load(
        &model_dir(name).join("adapter"),
        model.config(),
        model.device(),
    )
    .expect("adapter")
}

#[test]
fn host_step_matches_burn_path_with_padding_and_adapter() {
    let (rows, pads) = padded_rows();
    for name in MODELS {
        for bf16 in [false, true] {
            let (host, burn) = host_and_burn(packed(name, bf16), HostStep::Auto);
            check_same(&host, &burn, Adapters::One(None), &rows, &pads, 1e-4);
            let adapter = fixture_adapter(name, &host);
            check_same(
                &host,
                &burn,
                Adapters::One(Some(&adapter)),
                &rows,
                &pads,
                1e-4,
            );
        }
    }
}

/// Three adapters over four rows (one row without adapter), ranks 4 and 8.
#[test]
fn host_step_matches_burn_path_with_mixed_adapters() {
    let (host, burn) = host_and_burn(packed("tiny-llama", false), HostStep::Auto);
    let mut adapters = vec![fixture_adapter("tiny-llama", &host)];
    for (r, targets, seed) in [
        (8, &TargetModule::ALL[..], 5),
        (4, &[TargetModule::Q, TargetModule::Down][..], 3),
    ] {
        let cfg = LoraConfig::new(r, 2.0 * r as f64, targets);
        let mut a = LoraAdapter::init(cfg, host.config(), seed, host.device()).expect("init");
        for (_, _, m) in a.iter_mut() {
            m.b = Tensor::random(m.b.dims(), Distribution::Normal(0.0, 0.5), host.device());
        }
        adapters.push(a);
    }
    let row_adapter = [Some(1), None, Some(0), Some(2)];
    let lora = MixedLora::new(&adapters, &row_adapter).expect("mixed");
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|r| (0..6).map(|i| ((i * 5 + r * 11) % 60 + 3) as u32).collect())
        .collect();
    check_same(
        &host,
        &burn,
        Adapters::Mixed(&lora),
        &rows,
        &[0, 2, 1, 0],
        1e-4,
    );
}

/// NF4 on the host step, on random models: an MLP 256 wide (whole 64-column NF4 tiles) and
/// 160 wide (rows of `Wᵀ` 2.5 tiles long: quantization blocks straddle rows and the last
/// tile is a half, as in the bench model's 1376-wide gate/up).
#[test]
fn host_step_matches_burn_path_on_nf4() {
    for intermediate in [256, 160] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg_file = tmp.path().join("cfg.json");
        std::fs::write(
            &cfg_file,
            serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 512,
                "hidden_size": 128, "intermediate_size": intermediate, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e4,
                "tie_word_embeddings": false, "eos_token_id": 2})
            .to_string(),
        )
        .expect("write cfg");
        let dir = tmp.path().join("model");
        init_random_checkpoint(&cfg_file, 21, &dir).expect("init");
        let model = CausalLm::load_nf4(&dir, &device()).expect("load nf4");
        let (host, burn) = host_and_burn(model, HostStep::Auto);
        let (rows, pads) = padded_rows();
        check_same(&host, &burn, Adapters::One(None), &rows, &pads, 1e-4);
    }
}

/// The portable loops (kernels included) against AVX-512 (where the CPU has it).
#[test]
fn portable_host_step_matches_simd_host_step() {
    if !tributary_model::kernels::simd_available() {
        // Without AVX-512 `Auto` runs the portable loops too: the comparison would prove
        // nothing. The portable path is still checked against the fixtures' reference
        // logits by `reference_logits_through_the_host_step` on such machines.
        eprintln!("SKIPPED portable_host_step_matches_simd_host_step: no AVX-512 on this CPU");
        return;
    }
    let (rows, pads) = padded_rows();
    for name in MODELS {
        let model = packed(name, true);
        let (simd, _) = host_and_burn(model.clone(), HostStep::Auto);
        let (portable, _) = host_and_burn(model, HostStep::Portable);
        let adapter = fixture_adapter(name, &simd);
        check_same(
            &simd,
            &portable,
            Adapters::One(Some(&adapter)),
            &rows,
            &pads,
            1e-4,
        );
    }
}

/// The fixtures' reference logits (all 12 positions, with and without the PEFT adapter)
/// through the host step on f32-packed weights.
#[test]
fn reference_logits_through_the_host_step() {
    for name in MODELS {
        let model = packed(name, false);
        assert_eq!(model.host_step(), HostStep::Auto);
        let adapter = fixture_adapter(name, &model);
        let store = reference(name);
        let rows = input_rows(name);
        for (lora, key) in [(None, "base_logits"), (Some(&adapter), "lora_logits")] {
            let mut cache = model.new_cache(rows.len());
            let logits = model
                .try_forward(
                    ids_tensor(&rows, model.device()),
                    &[],
                    lora,
                    Some(&mut cache),
                )
                .expect("forward");
            assert!(cache.is_on_host(), "{name}: the host step did not run");
            let (_, want) = store.get_f32(key).expect(key);
            let d = max_abs_diff(&values(&logits), &want);
            assert!(d < 1e-4, "{name} {key}: {d}");
        }
    }
}

/// A cache that outgrows its first capacity keeps what it held.
#[test]
fn host_cache_grows_past_its_first_capacity() {
    let (host, burn) = host_and_burn(packed("tiny-qwen2", false), HostStep::Auto);
    let (rows, pads) = padded_rows();
    let mut hc = host.new_cache(2);
    let mut bc = burn.new_cache(2);
    let h = decode(&host, Adapters::One(None), &rows, &pads, 0, &mut hc);
    let first = hc.host_capacity();
    assert!(first >= rows[0].len());
    let b = decode(&burn, Adapters::One(None), &rows, &pads, 0, &mut bc);
    assert!(max_abs_diff(&h[0], &b[0]) < 1e-4);
    // Decode until the capacity has doubled at least once, comparing every step.
    for step in 0..(2 * first) {
        let ids = vec![vec![(step % 300 + 4) as u32]; 2];
        let x = host
            .forward_last(ids_tensor(&ids, host.device()), &[], None, Some(&mut hc))
            .expect("host");
        let y = burn
            .forward_last(ids_tensor(&ids, burn.device()), &[], None, Some(&mut bc))
            .expect("burn");
        let d = max_abs_diff(&values(&x), &values(&y));
        assert!(d < 1e-4, "step {step} (len {}): {d}", hc.len());
    }
    assert!(hc.host_capacity() > first, "the cache never grew");
    assert_eq!(hc.len(), bc.len());
}

/// A cache filled by the burn path (e.g. a long prompt) continues on the host step, and a
/// host-filled one on the burn path, with the same logits as a cache that never changed.
#[test]
fn cache_changes_path_once_and_keeps_its_contents() {
    let (host, burn) = host_and_burn(packed("tiny-llama", true), HostStep::Auto);
    let adapter = fixture_adapter("tiny-llama", &host);
    let (rows, pads) = padded_rows();
    let mut reference_cache = burn.new_cache(2);
    let want = decode(
        &burn,
        Adapters::One(Some(&adapter)),
        &rows,
        &pads,
        6,
        &mut reference_cache,
    );

    let mut cache = burn.new_cache(2);
    let mut got = decode(
        &burn,
        Adapters::One(Some(&adapter)),
        &rows,
        &pads,
        0,
        &mut cache,
    );
    assert!(!cache.is_on_host());
    let step = |model: &CausalLm, step: usize, cache: &mut KvCache| {
        let ids: Vec<Vec<u32>> = (0..2)
            .map(|r| vec![((step * 37 + r * 11) % 200 + 3) as u32])
            .collect();
        let t = ids_tensor(&ids, model.device());
        values(
            &model
                .forward_last(t, &[], Some(&adapter), Some(cache))
                .expect("step"),
        )
    };
    for s in 0..3 {
        got.push(step(&host, s, &mut cache));
        assert!(cache.is_on_host(), "burn → host conversion");
    }
    for s in 3..6 {
        got.push(step(&burn, s, &mut cache));
        assert!(!cache.is_on_host(), "host → burn conversion");
    }
    for (s, (x, y)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(x, y);
        assert!(d < 1e-4, "call {s}: {d}");
    }
}

/// A prefill of more than 256 rows (two prompts of 150, within the fixture's 256 positions)
/// runs on burn (the host kernels' row limit); the decode steps after it convert the cache
/// and run on the host step.
#[test]
fn long_prompt_prefills_on_burn_then_decodes_on_the_host() {
    let (host, burn) = host_and_burn(packed("tiny-qwen2", true), HostStep::Auto);
    let rows: Vec<Vec<u32>> = (0..2)
        .map(|r| (0..150).map(|i| (i * 7 + r * 13 + 3) % 500).collect())
        .collect();
    let mut hc = host.new_cache(2);
    let mut bc = burn.new_cache(2);
    let h = decode(&host, Adapters::One(None), &rows, &[0, 0], 0, &mut hc);
    assert!(!hc.is_on_host(), "300 rows took the host step");
    let b = decode(&burn, Adapters::One(None), &rows, &[0, 0], 0, &mut bc);
    assert!(max_abs_diff(&h[0], &b[0]) < 1e-4);
    for step in 0..3 {
        let ids = vec![vec![(step * 5 + 9) as u32]; 2];
        let x = host
            .forward_last(ids_tensor(&ids, host.device()), &[], None, Some(&mut hc))
            .expect("host");
        assert!(
            hc.is_on_host(),
            "the decode step did not take the host step"
        );
        let y = burn
            .forward_last(ids_tensor(&ids, burn.device()), &[], None, Some(&mut bc))
            .expect("burn");
        let d = max_abs_diff(&values(&x), &values(&y));
        assert!(d < 1e-4, "step {step}: {d}");
    }
}
