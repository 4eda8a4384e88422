//! The engine's adapters: fetched by digest from local PEFT directories or the ledger's
//! registry, resident under a byte budget with LRU eviction and pinning, refused above
//! `max_lora_rank`, unknown digests failing their request only, and a miss that waits for
//! a load without holding up requests whose adapters are resident.
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
use tributary_ledger::adapters::{AdapterFile, AdapterRegistry, Provenance};
use tributary_ledger::store::Store;
use tributary_protocol::ids::Digest;
use tributary_protocol::inference::{
    InferenceError, InferenceEvent, InferenceService, ModelChoice, Prompt,
};
use tributary_worker::engine::{
    AdapterFiles, AdapterSource, AdapterStore, Engine, EngineError, metrics,
};

fn prompt() -> Prompt {
    Prompt::Text("The clinic records".into())
}

/// Bytes the engine charges for an adapter of rank `r` on every module of tiny-llama
/// (f32 tensors plus f32-packed factors).
fn adapter_bytes(r: usize) -> u64 {
    let (model, _) = offline_model();
    let c = model.config();
    let (h, i, kv) = (
        c.hidden_size,
        c.intermediate_size,
        c.num_key_value_heads * c.head_dim,
    );
    let per_layer = r * ((h + h) + (h + kv) * 2 + (h + h) + (h + i) * 2 + (i + h));
    (per_layer * c.num_hidden_layers * 8) as u64
}

fn resident(e: &Engine) -> Vec<Digest> {
    e.status().resident.iter().map(|r| r.digest).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_adapter_is_evicted_and_a_pinned_one_is_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, tok) = offline_model();
    let a_dir = random_adapter(&model, 4, 21, tmp.path());
    let b_dir = random_adapter(&model, 4, 22, tmp.path());
    let store = Arc::new(AdapterStore::new());
    let a = store.register_dir(&a_dir).expect("a");
    let b = store.register_dir(&b_dir).expect("b");
    let mut c = config();
    // Room for one rank-4 adapter, not two.
    c.adapter_cache_bytes = adapter_bytes(4) * 3 / 2;
    let e = Engine::start(c, store).expect("engine");
    let evictions = metrics::ADAPTER_EVICTIONS.get();
    let ids = tok.encode_prompt("The clinic records").expect("ids");

    let run = |d: Digest| request("cmpl-a", ModelChoice::Adapter(d), prompt(), 8);
    let out = collect(e.submit(run(a)).await.expect("a")).await;
    assert_eq!(out.text, offline(&model, &tok, Some(&a_dir), &ids, 8).0);
    assert_eq!(resident(&e), vec![a]);
    let out = collect(e.submit(run(b)).await.expect("b")).await;
    assert_eq!(out.text, offline(&model, &tok, Some(&b_dir), &ids, 8).0);
    assert_eq!(resident(&e), vec![b], "a evicted for b");
    assert!(metrics::ADAPTER_EVICTIONS.get() > evictions);

    // b pinned: a cannot come back while b holds the only room.
    e.pin(b).expect("pin");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(e.status().resident[0].pinned);
    match failure(e.submit(run(a)).await.expect("admitted")).await {
        InferenceError::Unavailable(m) => assert!(m.contains("pinned"), "{m}"),
        other => panic!("expected Unavailable, got {other}"),
    }
    assert_eq!(resident(&e), vec![b]);
    e.unpin(b).expect("unpin");
    let out = collect(e.submit(run(a)).await.expect("a")).await;
    assert_eq!(out.text, offline(&model, &tok, Some(&a_dir), &ids, 8).0);
    assert_eq!(resident(&e), vec![a]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_oversized_adapters_fail_their_request_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, _) = offline_model();
    let big = random_adapter(&model, 16, 31, tmp.path());
    let store = Arc::new(AdapterStore::new());
    let big = store.register_dir(&big).expect("big");
    let mut c = config();
    c.max_lora_rank = 8;
    let e = Engine::start(c, store).expect("engine");
    let unknown = Digest::of(b"nobody registered this");
    let base = e
        .submit(request("cmpl-base", ModelChoice::Base, prompt(), 6))
        .await
        .expect("base");
    let s = e
        .submit(request(
            "cmpl-u",
            ModelChoice::Adapter(unknown),
            prompt(),
            6,
        ))
        .await
        .expect("admitted");
    assert_eq!(
        failure(s).await,
        InferenceError::UnknownAdapter(unknown.to_hex())
    );
    let s = e
        .submit(request("cmpl-r", ModelChoice::Adapter(big), prompt(), 6))
        .await
        .expect("admitted");
    match failure(s).await {
        InferenceError::Invalid { field, message } => {
            assert_eq!(field, "model");
            assert!(
                message.contains("rank 16") && message.contains("8"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(collect(base).await.completion_tokens, 6);
}

/// An adapter source that takes its time, as a remote store does.
struct Slow {
    inner: AdapterStore,
    delay: Duration,
}

impl AdapterSource for Slow {
    fn fetch(&self, digest: &Digest) -> Result<Option<AdapterFiles>, EngineError> {
        std::thread::sleep(self.delay);
        self.inner.fetch(digest)
    }
}

/// While an adapter loads (600 ms here), requests for the base keep streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_queues_only_its_own_request() {
    let slow = Arc::new(Slow {
        inner: AdapterStore::new(),
        delay: Duration::from_millis(600),
    });
    let a = slow.inner.register_dir(&fixture_adapter()).expect("a");
    let e = Engine::start(config(), slow).expect("engine");
    let start = Instant::now();
    let waiting = e
        .submit(request("cmpl-a", ModelChoice::Adapter(a), prompt(), 4))
        .await
        .expect("admitted");
    let base = collect(
        e.submit(request("cmpl-b", ModelChoice::Base, prompt(), 4))
            .await
            .expect("base"),
    )
    .await;
    let base_done = start.elapsed();
    assert_eq!(base.completion_tokens, 4);
    assert!(
        base_done < Duration::from_millis(500),
        "the base request finished after {base_done:?}, while the adapter was loading"
    );
    collect(waiting).await;
    assert!(start.elapsed() >= Duration::from_millis(600));
}

/// Adapters registered in the ledger's registry (a filesystem store here) are served by
/// digest, with the same output as the PEFT directory offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_from_the_registry_are_served_by_digest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}", tmp.path().display());
    let registry = AdapterRegistry::new(Store::open(&url).expect("store"));
    let files: Vec<AdapterFile> = ["adapter_config.json", "adapter_model.safetensors"]
        .iter()
        .map(|n| AdapterFile {
            name: (*n).to_owned(),
            bytes: std::fs::read(fixture_adapter().join(n))
                .expect("read")
                .into(),
        })
        .collect();
    let entry = registry
        .register(
            &files,
            Provenance {
                base_model_digest: "b".repeat(64),
                data_digest: "d".repeat(64),
                job_id: "job-1".into(),
                spec: serde_json::json!({}),
                created_unix_ms: 0,
            },
        )
        .await
        .expect("register");
    let digest: Digest = entry.adapter_digest.parse().expect("digest");
    // The local registration of the same files has the same digest.
    assert_eq!(
        AdapterStore::new()
            .register_dir(&fixture_adapter())
            .expect("local"),
        digest
    );
    let source = Arc::new(AdapterStore::with_registry(
        registry,
        tokio::runtime::Handle::current(),
    ));
    let e = Engine::start(config(), source).expect("engine");
    let out = collect(
        e.submit(request(
            "cmpl-reg",
            ModelChoice::Adapter(digest),
            prompt(),
            16,
        ))
        .await
        .expect("admitted"),
    )
    .await;
    let (model, tok) = offline_model();
    let ids = tok.encode_prompt("The clinic records").expect("ids");
    let (text, n, _) = offline(&model, &tok, Some(&fixture_adapter()), &ids, 16);
    assert_eq!(
        (out.text.as_str(), out.completion_tokens as usize),
        (text.as_str(), n)
    );
    // And both equal the reference implementation's greedy tokens (PyTorch + PEFT).
    assert_eq!(out.text, reference_lora_text(&tok));
}

/// The fixture's reference greedy completion (16 tokens) with the adapter, decoded.
fn reference_lora_text(tok: &tributary_model::tokenizer::Tokenizer) -> String {
    let bytes = std::fs::read(tiny_llama().join("reference.json")).expect("reference.json");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let ids: Vec<u32> = v["greedy_lora"]
        .as_array()
        .expect("greedy_lora")
        .iter()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect();
    assert_eq!(ids.len(), 16);
    tok.decode(&ids, true).expect("decode")
}

/// Unloading (after a delete) waits for the requests using the adapter, then frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_adapter_leaves_once_its_requests_finish() {
    let store = Arc::new(AdapterStore::new());
    let a = store.register_dir(&fixture_adapter()).expect("a");
    let e = Engine::start(config(), store).expect("engine");
    // Enough work to outlast the checks below: 8 requests × 4 sampled choices × 200 tokens.
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut r = request(&format!("cmpl-{i}"), ModelChoice::Adapter(a), prompt(), 200);
        r.params.n = 4;
        r.params.temperature = 1.0;
        r.params.seed = Some(i);
        streams.push(e.submit(r).await.expect("admitted"));
    }
    // Streaming: the adapter is resident and in use.
    loop {
        if let Some(InferenceEvent::Text { .. }) = streams[0].recv().await {
            break;
        }
    }
    e.evict(a).expect("evict");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(resident(&e), vec![a], "still in use");
    for s in streams {
        assert!(drain(s).await > 0);
    }
    let start = Instant::now();
    while !resident(&e).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "not unloaded after its requests"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Idle: unloaded at once. (Loaded again on the next request.)
    let b = e
        .submit(request("cmpl-b", ModelChoice::Adapter(a), prompt(), 4))
        .await
        .expect("b");
    collect(b).await;
    assert_eq!(resident(&e), vec![a]);
    e.evict(a).expect("evict");
    let start = Instant::now();
    while !resident(&e).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "idle adapter not unloaded"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads a stream to its end; the number of events read.
async fn drain(mut s: tributary_protocol::inference::EventStream) -> usize {
    let mut n = 0;
    while let Some(ev) = s.recv().await {
        n += 1;
        assert!(!matches!(ev, InferenceEvent::Failed(_)), "{ev:?}");
    }
    n
}

/// A request waiting for its adapter to load is cancelled like a running one: dropping its
/// stream frees its slot well before the load ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_adapter_can_be_cancelled() {
    let slow = Arc::new(Slow {
        inner: AdapterStore::new(),
        delay: Duration::from_millis(1500),
    });
    let a = slow.inner.register_dir(&fixture_adapter()).expect("a");
    let mut c = config();
    c.max_in_flight = 1;
    let e = Engine::start(c, slow).expect("engine");
    let s = e
        .submit(request("cmpl-a", ModelChoice::Adapter(a), prompt(), 4))
        .await
        .expect("admitted");
    assert_eq!(e.status().in_flight, 1);
    let start = Instant::now();
    drop(s);
    while e.status().in_flight > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the slot is still held"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "freed before the load ended"
    );
    let base = e
        .submit(request("cmpl-b", ModelChoice::Base, prompt(), 4))
        .await
        .expect("the slot is free again");
    assert_eq!(collect(base).await.completion_tokens, 4);
}
