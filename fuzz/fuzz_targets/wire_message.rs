#![no_main]
//! libFuzzer target: see `harness::wire_message`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::wire_message(data));
