//! Property: whatever devices write, concurrently and with deletes, every
//! device that receives all of it, in any order, in any batching, with
//! duplicates, ends with identical synced tables. Merge is therefore
//! commutative (order), associative (batching) and idempotent (duplicates).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::time::Duration;

use common::device;
use common::workload::{Action, action, perform, seed_ids};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use sync_core::Change;
use uuid::Uuid;

async fn run(steps: Vec<(usize, Action, u8)>, writers_n: usize, seed: u64) {
    seed_ids(seed);
    let mut writers = Vec::new();
    for n in 0..writers_n {
        writers.push(device(n as u128 + 1).await);
    }
    let mut log: Vec<Vec<Change>> = vec![Vec::new(); writers_n];
    let mut heard: Vec<Vec<usize>> = vec![vec![0; writers_n]; writers_n];
    for (w, action, advance) in &steps {
        let w = w % writers_n;
        writers[w]
            .time
            .advance(Duration::from_millis(u64::from(*advance % 4)));
        if let Action::Hear(from) = action {
            let from = from % writers_n;
            writers[w].receive(&log[from][heard[w][from]..]).await;
            heard[w][from] = log[from].len();
            continue;
        }
        let changes = perform(&writers[w], action).await;
        log[w].extend(changes);
    }
    let all: Vec<Change> = log.concat();

    // Receivers get everything, in random batches, in random order, with
    // random batches delivered twice.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut receivers = Vec::new();
    for r in 0..2u128 {
        let d = device(10 + r).await;
        let mut shuffled = all.clone();
        shuffled.shuffle(&mut rng);
        let mut batches: Vec<Vec<Change>> = Vec::new();
        let mut rest = shuffled.as_slice();
        while !rest.is_empty() {
            let n = rng.random_range(1..=rest.len().min(6));
            batches.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        let dupes: Vec<Vec<Change>> = batches
            .iter()
            .filter(|_| rng.random_bool(0.3))
            .cloned()
            .collect();
        batches.extend(dupes);
        batches.shuffle(&mut rng);
        for batch in &batches {
            d.receive(batch).await;
        }
        receivers.push(d);
    }
    for w in &writers {
        w.receive(&all).await;
    }
    // A device that settles a unique collision writes the loser's new value
    // as its own change: pass those around until nobody writes any more.
    let everyone: Vec<&common::Device> = receivers.iter().chain(writers.iter()).collect();
    let mut known: std::collections::BTreeSet<(Uuid, u64)> =
        all.iter().map(|c| (c.origin, c.seq)).collect();
    loop {
        let mut fresh = Vec::new();
        for d in &everyone {
            for c in d.engine.log().await.unwrap() {
                if c.origin == d.id && known.insert((c.origin, c.seq)) {
                    fresh.push(c);
                }
            }
        }
        if fresh.is_empty() {
            break;
        }
        for d in &everyone {
            d.receive(&fresh).await;
        }
    }
    let expected = receivers[0].content().await;
    if std::env::var_os("CONVERGENCE_DEBUG").is_some() {
        let conflicts = receivers[0].engine.conflicts().await.unwrap().len();
        let deletes = all.iter().filter(|c| c.is_delete()).count();
        eprintln!(
            "changes {} deletes {deletes} rows {} conflicts {conflicts}",
            all.len(),
            expected.len()
        );
    }
    for d in receivers.iter().chain(writers.iter()) {
        assert_eq!(d.content().await, expected, "device {} diverged", d.id);
        assert_eq!(
            d.engine.parked_len(),
            0,
            "device {} has changes waiting forever",
            d.id
        );
    }
    // No deleted record is present anywhere.
    let deleted: Vec<Uuid> = all.iter().filter(|c| c.is_delete()).map(|c| c.id).collect();
    assert!(expected.iter().all(|row| !deleted.contains(&row.id)));
}

/// The most steps a case takes: 80, or `CONVERGENCE_MAX_STEPS` for a soak
/// (longer cases meet rarer shapes; docs/reliability.md).
fn max_steps() -> usize {
    std::env::var("CONVERGENCE_MAX_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 10)
        .unwrap_or(80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_batching_and_duplication_converges(
        steps in prop::collection::vec((0usize..3, action(), any::<u8>()), 10..max_steps()),
        writers_n in 2usize..4,
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(steps, writers_n, seed));
    }
}
