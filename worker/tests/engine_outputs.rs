//! Served output equals offline generation: the same prompt, adapter and greedy settings
//! give the same completion through the engine as through `tributary_model::generate`
//! (what `tributary model generate` runs), whatever else shares the batch: other adapters,
//! other lengths, requests joining mid-way, prompts prefilled in chunks, and sequences
//! preempted for lack of KV blocks and recomputed.
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

use engine_common::*;
use tributary_protocol::inference::{
    ChatMessage, InferenceEvent, InferenceService, ModelChoice, Prompt,
};
use tributary_worker::engine::{AdapterStore, Engine, EngineConfig};

/// Prompts of different lengths, chat and text.
fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Text("The clinic records".into()),
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: "Summarise the clinic's records for the last week, please.".into(),
        }]),
        Prompt::Text("A".into()),
        Prompt::Text(
            "Once upon a time, in a village between two rivers, there lived a miller who \
             counted every grain twice"
                .into(),
        ),
        Prompt::Chat(vec![
            ChatMessage {
                role: "system".into(),
                content: "You are terse.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hello".into(),
            },
        ]),
    ]
}

fn prompt_ids(tok: &tributary_model::tokenizer::Tokenizer, p: &Prompt) -> Vec<u32> {
    match p {
        Prompt::Text(t) => tok.encode_prompt(t).expect("encode"),
        Prompt::Chat(m) => tok.encode_chat(m, true).expect("chat"),
    }
}

/// Runs `cases` (prompt index, adapter index or base) through an engine built from
/// `config`, the second half submitted after the first half has started streaming, and
/// compares each with offline generation.
async fn served_equals_offline(config: EngineConfig, max_tokens: u32) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (model, tok) = offline_model();
    let dirs = [
        fixture_adapter(),
        random_adapter(&model, 8, 11, tmp.path()),
        random_adapter(&model, 4, 12, tmp.path()),
    ];
    let store = Arc::new(AdapterStore::new());
    let digests: Vec<_> = dirs
        .iter()
        .map(|d| store.register_dir(d).expect("register"))
        .collect();
    let engine = Engine::start(config, store).expect("engine");
    let prompts = prompts();
    let cases: Vec<(usize, Option<usize>)> = vec![
        (0, Some(0)),
        (1, None),
        (2, Some(1)),
        (3, Some(2)),
        (4, Some(0)),
        (0, None),
        (3, Some(1)),
        (1, Some(2)),
        (2, None),
        (4, Some(1)),
    ];
    let submit = |i: usize| {
        let (p, a) = cases[i];
        let model = a.map_or(ModelChoice::Base, |a| ModelChoice::Adapter(digests[a]));
        request(&format!("cmpl-{i}"), model, prompts[p].clone(), max_tokens)
    };
    let half = cases.len() / 2;
    let mut first = Vec::new();
    for i in 0..half {
        first.push(engine.submit(submit(i)).await.expect("admitted"));
    }
    // Wait until the first request streams, then let the rest join the running batch.
    let head = first.remove(0);
    let mut head = head;
    let mut head_events = Vec::new();
    loop {
        let ev = head.recv().await.expect("event");
        let text = matches!(ev, InferenceEvent::Text { .. });
        head_events.push(ev);
        if text {
            break;
        }
    }
    let mut second = Vec::new();
    for i in half..cases.len() {
        second.push(engine.submit(submit(i)).await.expect("admitted"));
    }
    // The head's remaining events, then everyone else's.
    let (tx, rx) = tokio::sync::mpsc::channel(head_events.len() + max_tokens as usize + 4);
    for ev in head_events {
        tx.send(ev).await.expect("requeue");
    }
    let forward = tokio::spawn(async move {
        while let Some(ev) = head.recv().await {
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    let mut streams = vec![rx];
    streams.extend(first);
    streams.extend(second);
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(collect(s)))
        .collect();
    let mut served = Vec::new();
    for h in handles {
        served.push(h.await.expect("collect"));
    }
    forward.await.expect("forward");
    for (i, ((p, a), got)) in cases.iter().zip(&served).enumerate() {
        let ids = prompt_ids(&tok, &prompts[*p]);
        let (text, n, reason) = offline(
            &model,
            &tok,
            a.map(|a| dirs[a].as_path()),
            &ids,
            max_tokens as usize,
        );
        assert_eq!(
            got.prompt_tokens as usize,
            ids.len(),
            "case {i}: prompt tokens"
        );
        assert_eq!(got.text, text, "case {i}: text (prompt {p}, adapter {a:?})");
        assert_eq!(
            got.completion_tokens as usize, n,
            "case {i}: completion tokens"
        );
        assert_eq!(got.reason, reason, "case {i}: finish reason");
    }
    // The engine forgets a request right after its last event.
    let start = std::time::Instant::now();
    while engine.status().in_flight > 0 {
        assert!(start.elapsed().as_secs() < 2, "requests still in flight");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let status = engine.status();
    assert_eq!(status.kv_blocks_used, 0, "every block freed");
    assert!(status.peak_batch > 1, "requests shared the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_greedy_output_equals_offline_generation_in_a_mixed_batch() {
    served_equals_offline(config(), 40).await;
}

/// A step budget of 8 tokens: every prompt is prefilled in chunks beside the decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_prefill_gives_the_same_output() {
    let mut c = config();
    c.max_batch_tokens = 8;
    c.max_batch_seqs = 8;
    served_equals_offline(c, 24).await;
}

/// A KV pool of 40 blocks of 4 positions for ten requests of up to ~110 positions: the
/// scheduler preempts and recomputes, and the outputs do not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_for_kv_blocks_gives_the_same_output() {
    let mut c = config();
    c.kv_block_size = 4;
    let block =
        tributary_model::decoder::PagedKvCache::bytes_per_block(offline_model().0.config(), 4)
            as u64;
    c.kv_cache_bytes = 40 * block;
    let preempted = tributary_worker::engine::metrics::PREEMPTIONS.get();
    served_equals_offline(c, 30).await;
    assert!(
        tributary_worker::engine::metrics::PREEMPTIONS.get() > preempted,
        "sequences were preempted"
    );
}

/// Stop strings cut the text before them, and the streamed pieces concatenate to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_choice_and_is_cut() {
    let (model, tok) = offline_model();
    let engine = Engine::start(config(), Arc::new(AdapterStore::new())).expect("engine");
    let prompt = Prompt::Text("The clinic records".into());
    let ids = prompt_ids(&tok, &prompt);
    let (full, _, _) = offline(&model, &tok, None, &ids, 30);
    // A stop string from the middle of the greedy completion.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 8, "the completion is long enough: {full:?}");
    let stop: String = chars[5..8].iter().collect();
    let cut = &full[..full.find(&stop).expect("stop inside")];
    let mut req = request("cmpl-stop", ModelChoice::Base, prompt, 30);
    req.params.stop = vec![stop.clone()];
    let got = collect(engine.submit(req).await.expect("admitted")).await;
    assert_eq!(got.text, cut, "cut before {stop:?}");
    assert_eq!(
        got.reason,
        tributary_protocol::inference::FinishReason::Stop
    );
}

/// `n` choices with a seed: each choice is reproducible (same seed, same text), and
/// greedy choices are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_each_finish_and_seeded_sampling_repeats() {
    let engine = Engine::start(config(), Arc::new(AdapterStore::new())).expect("engine");
    let run = |seed: u64| {
        let mut r = request(
            "cmpl-n",
            ModelChoice::Base,
            Prompt::Text("The clinic".into()),
            12,
        );
        r.params.n = 3;
        r.params.temperature = 1.0;
        r.params.seed = Some(seed);
        r
    };
    let texts = |mut s: tributary_protocol::inference::EventStream| async move {
        let mut t = vec![String::new(); 3];
        let mut finished = 0;
        while let Some(ev) = s.recv().await {
            match ev {
                InferenceEvent::Text { choice, text, .. } => t[choice as usize].push_str(&text),
                InferenceEvent::Finished { .. } => finished += 1,
                InferenceEvent::Failed(e) => panic!("{e}"),
                InferenceEvent::Started { .. } => {}
            }
            if finished == 3 {
                break;
            }
        }
        assert_eq!(finished, 3);
        t
    };
    let a = texts(engine.submit(run(7)).await.expect("admitted")).await;
    let b = texts(engine.submit(run(7)).await.expect("admitted")).await;
    assert_eq!(a, b, "same seed, same choices");
    assert!(
        a[0] != a[1] || a[1] != a[2],
        "choices draw their own streams: {a:?}"
    );
}

/// Seeded sampling (temperature and nucleus) through the engine draws the same tokens as
/// offline generation with the same seed, with other requests in the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_equals_offline_sampling() {
    let (model, tok) = offline_model();
    let store = Arc::new(AdapterStore::new());
    let a = store.register_dir(&fixture_adapter()).expect("a");
    let engine = Engine::start(config(), store).expect("engine");
    let prompt = Prompt::Text("The clinic records".into());
    let ids = prompt_ids(&tok, &prompt);
    let mut streams = Vec::new();
    for seed in [3u64, 4, 5] {
        let mut r = request(
            &format!("cmpl-{seed}"),
            ModelChoice::Adapter(a),
            prompt.clone(),
            20,
        );
        r.params.temperature = 0.9;
        r.params.top_p = 0.8;
        r.params.seed = Some(seed);
        streams.push((seed, engine.submit(r).await.expect("admitted")));
    }
    // Company in the batch.
    let other = engine
        .submit(request(
            "cmpl-base",
            ModelChoice::Base,
            prompts()[3].clone(),
            20,
        ))
        .await
        .expect("admitted");
    let mut texts = Vec::new();
    for (seed, s) in streams {
        let got = collect(s).await;
        let sampling = tributary_model::sampling::SamplingConfig {
            temperature: 0.9,
            top_p: 0.8,
            seed,
            ..tributary_model::sampling::SamplingConfig::greedy()
        };
        let (text, n, _) =
            offline_sampled(&model, &tok, Some(&fixture_adapter()), &ids, 20, sampling);
        assert_eq!(
            (got.text.as_str(), got.completion_tokens as usize),
            (text.as_str(), n),
            "seed {seed}"
        );
        texts.push(got.text);
    }
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "the seeds drew different text"
    );
    collect(other).await;
}

/// With `logprobs`, every generated token has one entry (the greedy token is the most
/// likely one), in the `Text` events that stream its text or right after it when it adds
/// none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_cover_every_token_and_rank_the_greedy_one_first() {
    let engine = Engine::start(config(), Arc::new(AdapterStore::new())).expect("engine");
    let mut r = request(
        "cmpl-lp",
        ModelChoice::Base,
        Prompt::Text("The clinic records".into()),
        24,
    );
    r.params.logprobs = Some(3);
    let mut s = engine.submit(r).await.expect("admitted");
    let mut entries = Vec::new();
    let completion = loop {
        match s.recv().await.expect("event") {
            InferenceEvent::Text { logprobs, .. } => entries.extend(logprobs),
            InferenceEvent::Finished {
                completion_tokens, ..
            } => break completion_tokens,
            InferenceEvent::Failed(e) => panic!("{e}"),
            InferenceEvent::Started { .. } => {}
        }
    };
    assert_eq!(entries.len(), completion as usize, "one entry per token");
    for e in &entries {
        assert_eq!(e.top.len(), 3);
        assert!(
            e.top.windows(2).all(|w| w[0].1 >= w[1].1),
            "most likely first"
        );
        assert!(
            (e.logprob - e.top[0].1).abs() < 1e-6,
            "greedy takes the top token"
        );
        assert!(e.logprob <= 0.0);
    }
}

/// Requests with the same prompt and adapter share the prompt's cached KV blocks (prefix
/// caching), and their output is still that of offline generation; another adapter's
/// blocks are never shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prompt_prefixes_are_reused_with_the_same_output() {
    let (model, tok) = offline_model();
    let store = Arc::new(AdapterStore::new());
    let a = store.register_dir(&fixture_adapter()).expect("a");
    let mut c = config();
    c.kv_block_size = 4;
    let engine = Engine::start(c, store).expect("engine");
    let prompt = prompts()[3].clone();
    let ids = prompt_ids(&tok, &prompt);
    assert!(ids.len() > 12, "a prompt of several blocks");
    let expected_a = offline(&model, &tok, Some(&fixture_adapter()), &ids, 16);
    let expected_base = offline(&model, &tok, None, &ids, 16);
    // One first (fills the cache), then several at once, with both models.
    let first = engine
        .submit(request(
            "cmpl-0",
            ModelChoice::Adapter(a),
            prompt.clone(),
            16,
        ))
        .await
        .expect("admitted");
    let got = collect(first).await;
    assert_eq!(got.text, expected_a.0);
    assert_eq!(engine.status().prefix_hit_tokens, 0);
    let mut streams = Vec::new();
    for i in 1..5 {
        let model = if i % 2 == 0 {
            ModelChoice::Base
        } else {
            ModelChoice::Adapter(a)
        };
        let s = engine
            .submit(request(&format!("cmpl-{i}"), model, prompt.clone(), 16))
            .await
            .expect("admitted");
        streams.push((model, s));
    }
    for (model, s) in streams {
        let got = collect(s).await;
        let want = if model == ModelChoice::Base {
            &expected_base
        } else {
            &expected_a
        };
        assert_eq!(
            (got.text.as_str(), got.completion_tokens as usize),
            (want.0.as_str(), want.1),
            "{model:?}"
        );
    }
    let hits = engine.status().prefix_hit_tokens;
    let whole_blocks = ((ids.len() - 1) / 4 * 4) as u64;
    // The two adapter requests hit the first one's blocks; of the two base requests, the
    // second may hit the first's (admitted in the same step or after).
    assert!(
        hits >= 2 * whole_blocks,
        "{hits} tokens shared, {whole_blocks} per request"
    );
}

/// `n` greedy choices of one request compute their prompt once: the later choices share
/// the first one's blocks, and every choice equals offline generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_share_their_prompt_blocks() {
    let (model, tok) = offline_model();
    let mut c = config();
    c.kv_block_size = 4;
    let engine = Engine::start(c, Arc::new(AdapterStore::new())).expect("engine");
    let prompt = prompts()[3].clone();
    let ids = prompt_ids(&tok, &prompt);
    let (want, _, _) = offline(&model, &tok, None, &ids, 12);
    let mut r = request("cmpl-n3", ModelChoice::Base, prompt, 12);
    r.params.n = 3;
    let mut s = engine.submit(r).await.expect("admitted");
    let mut texts = vec![String::new(); 3];
    let mut finished = 0;
    while finished < 3 {
        match s.recv().await.expect("event") {
            InferenceEvent::Text { choice, text, .. } => texts[choice as usize].push_str(&text),
            InferenceEvent::Finished { .. } => finished += 1,
            InferenceEvent::Failed(e) => panic!("{e}"),
            InferenceEvent::Started { .. } => {}
        }
    }
    assert_eq!(texts, vec![want; 3]);
    let whole_blocks = ((ids.len() - 1) / 4 * 4) as u64;
    assert_eq!(engine.status().prefix_hit_tokens, 2 * whole_blocks);
}
