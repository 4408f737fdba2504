//! Bytes as a stream of frames, read as a link reads them.
#![no_main]

#[path = "../../sync-net/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::shared as harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = harness().frames(bytes);
});
