//! Bytes as one message payload.
#![no_main]

#[path = "../../sync-net/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = harness::Harness::message(bytes);
});
