//! Bytes as frames whose batches a paired device applies: an input that
//! applies nothing must leave its data as it was.
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
    if let Err(why) = harness().apply(bytes) {
        panic!("{why}");
    }
});
