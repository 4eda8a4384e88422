//! The engine's limits: a dropped stream frees its slot and KV blocks within a second,
//! admission beyond `max_in_flight` is refused at once, a prompt that does not fit the
//! context is refused naming both numbers, and the KV pool is never exceeded. Also: a device
//! other than the CPU is refused (the engine's kernels are host code).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod engine_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_common::*;
use tributary_protocol::inference::{
    FinishReason, InferenceError, InferenceEvent, InferenceService, ModelChoice, Prompt,
};
use tributary_worker::engine::{AdapterStore, Engine, EngineConfig};

fn engine(c: EngineConfig) -> Engine {
    Engine::start(c, Arc::new(AdapterStore::new())).expect("engine")
}

/// A prompt whose greedy completion runs to `max_tokens` without an end-of-sequence token
/// (checked offline, so the tests below really hold a running request).
fn long_running_prompt(max_tokens: usize) -> Prompt {
    let (model, tok) = offline_model();
    let prompt = Prompt::Text("The clinic records".into());
    let ids = tok.encode_prompt("The clinic records").expect("encode");
    let (_, n, reason) = offline(&model, &tok, None, &ids, max_tokens);
    assert_eq!(
        (n, reason),
        (max_tokens, FinishReason::Length),
        "the test prompt must not stop early"
    );
    prompt
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_frees_the_slot_within_a_second() {
    let prompt = long_running_prompt(200);
    let mut c = config();
    c.max_in_flight = 1;
    let e = engine(c);
    let mut s = e
        .submit(request("cmpl-a", ModelChoice::Base, prompt.clone(), 200))
        .await
        .expect("admitted");
    // Streaming has begun.
    loop {
        if let Some(InferenceEvent::Text { .. }) = s.recv().await {
            break;
        }
    }
    let st = e.status();
    assert_eq!(st.in_flight, 1);
    assert!(st.kv_blocks_used > 0);
    // The slot is taken: a second request is refused.
    let refused = e
        .submit(request("cmpl-b", ModelChoice::Base, prompt.clone(), 10))
        .await
        .expect_err("full");
    assert!(
        matches!(refused, InferenceError::Overloaded { .. }),
        "{refused}"
    );
    drop(s);
    let took = wait_until("slot and blocks freed", Duration::from_secs(1), || {
        let st = e.status();
        st.in_flight == 0 && st.kv_blocks_used == 0
    })
    .await;
    eprintln!("freed {took:?} after the drop");
    let out = collect(
        e.submit(request("cmpl-c", ModelChoice::Base, prompt, 5))
            .await
            .expect("admitted after the cancel"),
    )
    .await;
    assert_eq!(out.completion_tokens, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_beyond_max_in_flight_is_refused_at_once() {
    let prompt = long_running_prompt(150);
    let mut c = config();
    c.max_in_flight = 3;
    let e = engine(c);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            e.submit(request(
                &format!("cmpl-{i}"),
                ModelChoice::Base,
                prompt.clone(),
                150,
            ))
            .await
            .expect("admitted"),
        );
    }
    for _ in 0..20 {
        let start = Instant::now();
        let err = e
            .submit(request("cmpl-x", ModelChoice::Base, prompt.clone(), 150))
            .await
            .expect_err("overloaded");
        let took = start.elapsed();
        match err {
            InferenceError::Overloaded { retry_after_ms } => assert!(retry_after_ms > 0),
            other => panic!("expected Overloaded, got {other}"),
        }
        assert!(took < Duration::from_millis(50), "refused in {took:?}");
    }
    // They all still finish.
    for s in held {
        assert_eq!(collect(s).await.completion_tokens, 150);
    }
    wait_until("all done", Duration::from_secs(1), || {
        e.status().in_flight == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_does_not_fit_the_context_names_both_numbers() {
    let e = engine(config());
    let info = e.info();
    assert_eq!(
        info.context_window, 256,
        "the fixture's max_position_embeddings"
    );
    let tok = offline_model().1;
    let text = "The clinic records ".repeat(20);
    let n = tok.encode_prompt(&text).expect("encode").len() as u32;
    let max_tokens = 256 - n + 1;
    let err = e
        .submit(request(
            "cmpl-big",
            ModelChoice::Base,
            Prompt::Text(text),
            max_tokens,
        ))
        .await
        .expect_err("too long");
    assert_eq!(
        err,
        InferenceError::ContextOverflow {
            prompt_tokens: n,
            max_tokens,
            context: 256
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&n.to_string()) && msg.contains(&max_tokens.to_string()),
        "{msg}"
    );
    // Bad parameters are refused naming the field.
    let mut r = request("cmpl-t", ModelChoice::Base, Prompt::Text("x".into()), 4);
    r.params.temperature = f32::NAN;
    match e.submit(r).await.expect_err("NaN temperature") {
        InferenceError::Invalid { field, .. } => assert_eq!(field, "temperature"),
        other => panic!("{other}"),
    }
    let r = request("cmpl-m", ModelChoice::Base, Prompt::Chat(vec![]), 4);
    match e.submit(r).await.expect_err("no messages") {
        InferenceError::Invalid { field, .. } => assert_eq!(field, "messages"),
        other => panic!("{other}"),
    }
}

/// A small KV pool: the context window shrinks to what the pool holds, and however many
/// requests run at once the blocks in use never exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_budget_is_respected() {
    let mut c = config();
    c.kv_block_size = 8;
    let block =
        tributary_model::decoder::PagedKvCache::bytes_per_block(offline_model().0.config(), 8)
            as u64;
    c.kv_cache_bytes = 10 * block + block / 2;
    let e = Arc::new(engine(c));
    let st = e.status();
    assert_eq!(st.kv_blocks, 10, "the budget holds 10 whole blocks");
    assert_eq!(e.info().context_window, 80);
    let mut streams = Vec::new();
    for i in 0..8 {
        streams.push(
            e.submit(request(
                &format!("cmpl-{i}"),
                ModelChoice::Base,
                Prompt::Text("The clinic records".into()),
                40,
            ))
            .await
            .expect("admitted"),
        );
    }
    let watch = {
        let e = Arc::clone(&e);
        tokio::spawn(async move {
            for _ in 0..2000 {
                let st = e.status();
                assert!(
                    st.kv_blocks_used <= 10,
                    "{} blocks in use",
                    st.kv_blocks_used
                );
                if st.in_flight == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // Each needs ~7 blocks (prompt + 40 tokens in blocks of 8): 8 at once do not fit, so
    // they wait or are preempted, and all finish.
    for s in streams {
        collect(s).await;
    }
    watch.await.expect("watch");
    let peak = e.status().kv_blocks_peak;
    assert!(peak > 0 && peak <= 10, "peak {peak} blocks of 10");
}

/// The engine decodes on host kernels: a device other than the CPU is refused before the
/// model is read, naming `--device`, never served on the CPU behind the flag's back.
#[test]
fn a_device_other_than_the_cpu_is_refused_naming_the_flag() {
    use tributary_model::device::{self, AdapterInfo, AdapterType, DeviceRequest, Selected};
    let lavapipe = AdapterInfo {
        name: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
        adapter_type: AdapterType::Cpu,
        driver: "llvmpipe".into(),
        api: "Vulkan".into(),
    };
    let mut c = EngineConfig::new("/nonexistent-model", "base");
    c.device = Selected {
        device: device::cpu_device(),
        choice: device::choose(DeviceRequest::Wgpu, true, &[lavapipe]).unwrap(),
    };
    let err = Engine::start(c, Arc::new(AdapterStore::new()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "engine config `device`: --device wgpu: the serving engine (host decode kernels) runs \
         only on the CPU (pass --device cpu)"
    );
}
