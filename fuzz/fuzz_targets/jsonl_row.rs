#![no_main]
//! libFuzzer target: see `harness::jsonl_row`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::jsonl_row(data));
