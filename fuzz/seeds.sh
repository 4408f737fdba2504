#!/usr/bin/env bash
# Writes the harness's seed frames into each target's corpus, so libFuzzer
# starts from real frames: `fuzz/seeds.sh`, then `cargo +nightly fuzz run apply`.
set -euo pipefail
cd "$(dirname "$0")/.."
SYNCABLE_SEEDS_TO="$PWD/fuzz/corpus" cargo test -p sync-net --test hostile write_seeds -- --ignored
