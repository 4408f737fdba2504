//! Bytes as a stream of frames, read as a link reads them.
#![no_main]

#[path = "../../sync-net/tests/hostile/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn harness() -> &'static harness::Harness {
    static H: OnceLock<harness::Harness> = OnceLock::new();
    H.get_or_init(|| harness::Harness::new().unwrap())
}

fuzz_target!(|bytes: &[u8]| {
    let _ = harness().frames(bytes);
});
