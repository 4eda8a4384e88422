#![no_main]
//! libFuzzer target: see `harness_model::tokenizer_json`.

#[path = "../harness_model.rs"]
mod harness_model;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness_model::tokenizer_json(data));
