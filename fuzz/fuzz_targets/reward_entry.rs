#![no_main]
//! libFuzzer target: see `harness::reward_entry`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::reward_entry(data));
