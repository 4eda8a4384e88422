//! Hostile chat templates fail fast, naming the limit they hit, without allocating much
//! (issue 12): every `hostile-*` input of the `chat_template` fuzz corpus (endless and
//! nested loops, recursive macros and loops, string and list doubling, nested joins,
//! output floods, huge `tojson`/`format`/`indent` widths, deep nesting), each loaded and
//! rendered under a counting allocator; and real templates still render long
//! conversations within the same bounds.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tributary_model::tokenizer::{ChatMessage, Tokenizer};

/// The system allocator, counting the bytes live now and the most live since a reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo(name: &str) -> String {
    std::fs::read_to_string(repo().join("assets/demo").join(name)).unwrap()
}

/// Loads `template` with the demo tokenizer and renders a short chat: the error chain
/// (empty if it rendered), the time taken, and the most bytes allocated at once beyond
/// what was live before.
fn load_and_render(template: &str) -> (String, Duration, usize) {
    let (tok_json, config) = (demo("tokenizer.json"), demo("tokenizer_config.json"));
    let messages = [
        ChatMessage::new("system", "s"),
        ChatMessage::new("user", "hi"),
    ];
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let t0 = Instant::now();
    let result = Tokenizer::from_parts(&tok_json, Some(&config), Some(template), "hostile")
        .and_then(|tok| tok.render_chat(&messages, true));
    let took = t0.elapsed();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let chain = match result {
        Ok(_) => String::new(),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    (chain, took, peak)
}

#[test]
fn hostile_templates_fail_fast_naming_the_limit() {
    let dir = repo().join("fuzz/corpus/chat_template");
    let mut cases: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("hostile-")
        })
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let body = text.strip_prefix("{#template#}").expect("a template input");
            let template = body.split('\0').next().unwrap().to_owned();
            (
                p.file_name().unwrap().to_str().unwrap().to_owned(),
                template,
            )
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "{} hostile templates", cases.len());
    cases.push(("oversize-source".into(), "x".repeat(2 << 20)));
    for (name, template) in &cases {
        let (err, took, peak) = load_and_render(template);
        println!(
            "{name}: {:.3} s, peak {:.1} MiB: {err}",
            took.as_secs_f64(),
            peak as f64 / f64::from(1 << 20)
        );
        assert!(!err.is_empty(), "{name} rendered");
        assert!(
            err.contains("limit"),
            "{name}: the error names no limit: {err}"
        );
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        // The largest single allowance is 16 MiB of output plus a 4 MiB string or two.
        assert!(peak < 96 << 20, "{name} allocated {peak} bytes at once");
    }
}

/// A conversation of `n` messages, alternating user and assistant.
fn conversation(n: usize) -> Vec<ChatMessage> {
    (0..n)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            ChatMessage::new(role, format!("message number {i}, with some words in it"))
        })
        .collect()
}

#[test]
fn real_templates_render_long_conversations_within_the_bounds() {
    let mut toks = vec![(
        "demo".to_owned(),
        Tokenizer::from_dir(&repo().join("assets/demo")).unwrap(),
    )];
    for name in common::MODELS {
        toks.push((
            name.to_owned(),
            Tokenizer::from_dir(&common::model_dir(name)).unwrap(),
        ));
    }
    for (name, tok) in &toks {
        let messages = conversation(5000);
        let t0 = Instant::now();
        let out = tok.render_chat(&messages, true).unwrap();
        println!(
            "{name}: 5000 messages, {} bytes in {:.3} s",
            out.len(),
            t0.elapsed().as_secs_f64()
        );
        assert!(out.contains("message number 0,"), "{name}");
        assert!(out.contains("message number 4999,"), "{name}");
    }
}
