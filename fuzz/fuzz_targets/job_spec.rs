#![no_main]
//! libFuzzer target: see `harness::job_spec`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::job_spec(data));
