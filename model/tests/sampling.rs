//! Sampling processors with Hugging Face semantics, and seeded reproducibility.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use tributary_model::sampling::{
    Sampler, SamplingConfig, SamplingError, apply_repetition_penalty, apply_temperature,
    apply_top_k, apply_top_p, argmax, softmax,
};

fn config(temperature: f32, top_k: Option<usize>, top_p: f32, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature,
        top_k,
        top_p,
        repetition_penalty: 1.0,
        seed,
    }
}

#[test]
fn greedy_takes_the_first_highest_logit() {
    assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]).unwrap(), 1);
    let mut s = Sampler::new(SamplingConfig::greedy()).unwrap();
    let mut logits = vec![0.5, 0.2, 2.0, 1.9];
    assert_eq!(s.next_token(&mut logits, &[]).unwrap(), 2);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_once() {
    let mut logits = vec![2.0, -1.0, 4.0, 0.0];
    // Token 0 appears twice: penalised once, as HF's gather/scatter does.
    apply_repetition_penalty(&mut logits, &[0, 1, 0, 9], 2.0);
    assert_eq!(logits, vec![1.0, -2.0, 4.0, 0.0]);
    // Greedy with a penalty can change the choice.
    let mut cfg = SamplingConfig::greedy();
    cfg.repetition_penalty = 3.0;
    let mut s = Sampler::new(cfg).unwrap();
    let mut logits = vec![3.0, 2.0];
    assert_eq!(s.next_token(&mut logits, &[0]).unwrap(), 1);
}

#[test]
fn temperature_scales_and_top_k_keeps_ties() {
    let mut logits = vec![1.0, 2.0, 4.0];
    apply_temperature(&mut logits, 0.5);
    assert_eq!(logits, vec![2.0, 4.0, 8.0]);
    let mut logits = vec![1.0, 3.0, 3.0, 0.0, 2.0];
    apply_top_k(&mut logits, 2);
    assert_eq!(
        logits,
        vec![
            f32::NEG_INFINITY,
            3.0,
            3.0,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY
        ]
    );
    let mut logits = vec![1.0, 3.0];
    apply_top_k(&mut logits, 5); // k beyond the vocabulary: no-op
    assert_eq!(logits, vec![1.0, 3.0]);
}

#[test]
fn top_p_keeps_the_smallest_nucleus_like_hf() {
    // Probabilities 0.5, 0.3, 0.15, 0.05.
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let mut l = logits.clone();
    apply_top_p(&mut l, 0.75);
    let kept: Vec<bool> = l.iter().map(|x| x.is_finite()).collect();
    assert_eq!(kept, vec![true, true, false, false]);
    let mut l = logits.clone();
    apply_top_p(&mut l, 0.9);
    let kept: Vec<bool> = l.iter().map(|x| x.is_finite()).collect();
    assert_eq!(kept, vec![true, true, true, false]);
    // A tiny top_p still keeps the most likely token.
    let mut l = logits;
    apply_top_p(&mut l, 1e-6);
    assert_eq!(l.iter().filter(|x| x.is_finite()).count(), 1);
    assert!(l[0].is_finite());
}

#[test]
fn same_seed_same_tokens_and_rows_have_their_own_streams() {
    let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
    let run = |seed: u64, row: usize| {
        let mut s = Sampler::for_row(config(1.0, None, 1.0, seed), row).unwrap();
        (0..40)
            .map(|_| s.next_token(&mut logits.clone(), &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7, 0), run(7, 0));
    assert_ne!(run(7, 0), run(8, 0));
    assert_ne!(run(7, 0), run(7, 1));
}

#[test]
fn draws_follow_the_tempered_distribution() {
    let logits = vec![0.0f32, 1.0, 2.0, -1.0];
    let t = 0.7;
    let mut scaled = logits.clone();
    apply_temperature(&mut scaled, t);
    let want = softmax(&scaled);
    let mut s = Sampler::new(config(t, None, 1.0, 42)).unwrap();
    let n = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.next_token(&mut logits.clone(), &[]).unwrap() as usize] += 1;
    }
    for (c, p) in counts.iter().zip(&want) {
        let freq = *c as f64 / n as f64;
        // Four standard deviations of a binomial proportion.
        let tol = 4.0 * (p * (1.0 - p) / n as f64).sqrt();
        assert!((freq - p).abs() < tol, "freq {freq} vs p {p}");
    }
}

#[test]
fn top_k_and_top_p_restrict_what_can_be_drawn() {
    let logits = vec![5.0f32, 4.9, 0.0, 0.0, 0.0];
    let mut s = Sampler::new(config(1.0, Some(2), 1.0, 3)).unwrap();
    for _ in 0..500 {
        assert!(s.next_token(&mut logits.clone(), &[]).unwrap() < 2);
    }
    let mut s = Sampler::new(config(1.0, None, 0.5, 3)).unwrap();
    for _ in 0..500 {
        assert_eq!(s.next_token(&mut logits.clone(), &[]).unwrap(), 0);
    }
}

#[test]
fn bad_parameters_name_the_field_and_limit() {
    let err = Sampler::new(config(-1.0, None, 1.0, 0)).unwrap_err();
    assert!(matches!(
        err,
        SamplingError::OutOfRange {
            field: "temperature",
            ..
        }
    ));
    assert!(err.to_string().contains(">= 0"), "{err}");
    let err = Sampler::new(config(1.0, None, 1.5, 0)).unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
    let mut c = SamplingConfig::greedy();
    c.repetition_penalty = 0.0;
    assert!(
        Sampler::new(c)
            .unwrap_err()
            .to_string()
            .contains("repetition_penalty")
    );
    let mut s = Sampler::new(SamplingConfig::greedy()).unwrap();
    assert_eq!(
        s.next_token(&mut [], &[]).unwrap_err(),
        SamplingError::Empty
    );
    assert_eq!(
        s.next_token(&mut [0.0, f32::NAN], &[]).unwrap_err(),
        SamplingError::NaN { index: 1 }
    );
}
