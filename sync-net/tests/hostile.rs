//! Hostile input, on stable: random and mutated frames against the frame
//! decoder, the message decoder and the apply path, through the harness the
//! cargo-fuzz targets (`fuzz/`) use. No input panics, none allocates ahead
//! of its bytes (the decoders' own tests pin that), and none that applies
//! nothing changes a device's data. `PROPTEST_CASES` scales it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

#[path = "hostile/harness.rs"]
mod harness;

use harness::{Harness, shared as harness};
use proptest::prelude::*;

/// A seed frame, mutated: bytes overwritten, cut short, or spliced with
/// another seed.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let n = harness().seeds().len();
    (
        0..n,
        0..n,
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        prop::option::of(any::<usize>()),
        any::<bool>(),
    )
        .prop_map(|(a, b, flips, cut, splice)| {
            let seeds = harness().seeds();
            let mut bytes = seeds[a].clone();
            if splice {
                bytes.extend_from_slice(&seeds[b]);
            }
            for (at, byte) in flips {
                let len = bytes.len();
                if len > 0 {
                    bytes[at % len] = byte;
                }
            }
            if let Some(cut) = cut {
                let len = bytes.len();
                bytes.truncate(cut % (len + 1));
            }
            bytes
        })
}

#[test]
fn intact_seeds_decode_and_apply() {
    let h = harness();
    assert!(h.seeds().len() >= 3, "a hello and pushes of two commits");
    for seed in h.seeds() {
        assert_eq!(h.frames(seed).len(), 1, "each seed is one whole frame");
    }
    let all: Vec<u8> = h.seeds().concat();
    h.apply(&all).unwrap();
    assert_eq!(
        h.target().status().peers[0].ahead,
        0,
        "the target holds the source's writes"
    );
}

/// The seeds as files, one per frame, for the cargo-fuzz corpora
/// (`fuzz/seeds.sh`).
#[test]
#[ignore = "writes files; run by fuzz/seeds.sh"]
fn write_seeds() {
    let Some(to) = std::env::var_os("SYNCABLE_SEEDS_TO") else {
        return;
    };
    for target in ["frame", "message", "apply"] {
        let dir = std::path::Path::new(&to).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in harness().seeds().iter().enumerate() {
            // A message target's input is a payload: the frame's body.
            let bytes = if target == "message" {
                &seed[sync_net::HEADER_BYTES..]
            } else {
                &seed[..]
            };
            std::fs::write(dir.join(format!("seed-{i}")), bytes).unwrap();
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let h = harness();
        let _ = h.frames(&bytes);
        let _ = Harness::message(&bytes);
        prop_assert!(h.apply(&bytes).is_ok());
    }

    #[test]
    fn mutated_frames_never_panic_and_refused_ones_write_nothing(bytes in mutated()) {
        let h = harness();
        let _ = h.frames(&bytes);
        let _ = Harness::message(&bytes);
        let applied = h.apply(&bytes);
        prop_assert!(applied.is_ok(), "{:?}", applied);
    }
}
