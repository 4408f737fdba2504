//! Bytes as frames whose batches a paired device applies: an input that
//! applies nothing must leave its data as it was.
#![no_main]

#[path = "../../sync-net/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::shared as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(why) = harness().apply(bytes) {
        panic!("{why}");
    }
});
