#![no_main]
//! libFuzzer target: see `harness_model::safetensors_peft`.

#[path = "../harness_model.rs"]
mod harness_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness_model::safetensors_peft(data));
