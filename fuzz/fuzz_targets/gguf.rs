#![no_main]
//! libFuzzer target: see `harness_model::gguf`.

#[path = "../harness_model.rs"]
mod harness_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness_model::gguf(data));
