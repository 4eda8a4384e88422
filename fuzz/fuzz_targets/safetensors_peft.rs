#![no_main]
//! libFuzzer target: see `harness::safetensors_peft`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::safetensors_peft(data));
