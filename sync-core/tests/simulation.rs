//! Property: devices running the real engine and protocol over a network
//! that drops, duplicates, reorders and partitions messages, with devices
//! crashing and restarting, converge once the faults heal: identical synced
//! tables, every committed change held everywhere, no deleted record back.
//! A failing case prints its seed and steps; proptest replays it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use common::sim::{Faults, Net};
use common::workload::{Action, action, perform, seed_ids};
use common::{device, open_device};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Write(usize, Action),
    Deliver(u8),
    Cut(usize, usize),
    Heal(usize, usize),
    Crash(usize),
    Restart(usize),
    AntiEntropy,
}

fn step() -> impl Strategy<Value = Step> {
    let d = 0usize..5;
    prop_oneof![
        6 => (d.clone(), action()).prop_map(|(i, a)| Step::Write(i, a)),
        6 => any::<u8>().prop_map(Step::Deliver),
        1 => (d.clone(), d.clone()).prop_map(|(a, b)| Step::Cut(a, b)),
        1 => (d.clone(), d.clone()).prop_map(|(a, b)| Step::Heal(a, b)),
        1 => d.clone().prop_map(Step::Crash),
        1 => d.clone().prop_map(Step::Restart),
        1 => Just(Step::AntiEntropy),
    ]
}

async fn restart(net: &mut Net, i: usize) {
    if net.nodes[i].online {
        return;
    }
    let db = net.nodes[i].dev.engine.database().clone();
    let time = net.nodes[i].dev.time.clone();
    net.nodes[i].dev = open_device(db, i as u128 + 1, time).await;
    net.nodes[i].online = true;
    let peers: Vec<usize> = (0..net.nodes.len())
        .filter(|p| *p != i && net.nodes[*p].online)
        .collect();
    for p in peers {
        net.connect(i, p).await;
    }
}

async fn run(n: usize, seed: u64, steps: Vec<Step>, faults: Faults) {
    seed_ids(seed);
    let mut devices = Vec::new();
    for i in 0..n {
        devices.push(device(i as u128 + 1).await);
    }
    let mut net = Net::new(devices, seed);
    net.pair_all().await;
    net.faults = faults;
    net.config.pull_limit = 5;
    net.config.snapshot_limit = 5;
    net.connect_all().await;
    for step in steps {
        match step {
            Step::Write(i, a) => {
                let i = i % n;
                net.nodes[i]
                    .dev
                    .time
                    .advance(std::time::Duration::from_millis(1));
                let changes = perform(&net.nodes[i].dev, &a).await;
                net.committed(i, changes);
            }
            Step::Deliver(k) => {
                for _ in 0..k % 16 {
                    net.step().await;
                }
            }
            Step::Cut(a, b) => net.partition(a % n, b % n, true),
            Step::Heal(a, b) => net.partition(a % n, b % n, false),
            Step::Crash(i) => net.disconnect(i % n),
            Step::Restart(i) => restart(&mut net, i % n).await,
            Step::AntiEntropy => net.anti_entropy().await,
        }
    }
    // Heal everything and let it settle.
    net.faults = Faults::default();
    for a in 0..n {
        for b in 0..n {
            net.partition(a, b, false);
        }
    }
    for i in 0..n {
        restart(&mut net, i).await;
    }
    // A lost message is a broken connection: the transport reconnects.
    net.reconnect_all().await;
    if !net.settle(8).await {
        for (i, node) in net.nodes.iter().enumerate() {
            let e = &node.dev.engine;
            let states: Vec<_> = node.sessions.iter().map(|(p, s)| (*p, s.state())).collect();
            let rows: Vec<_> = node
                .dev
                .content()
                .await
                .iter()
                .map(|r| (r.model, r.id))
                .collect();
            eprintln!("  rows {rows:?}");
            eprintln!(
                "device {i} online {} vector {:?} rows {} phase {:?} backfill {} parked {} sessions {states:?}",
                node.online,
                e.vector(),
                node.dev.content().await.len(),
                e.status().phase,
                e.needs_backfill(),
                e.parked_len(),
            );
        }
        panic!("devices did not converge (seed {seed})");
    }
    let vectors: Vec<_> = {
        let mut v = Vec::new();
        for node in &net.nodes {
            v.push(node.dev.engine.vector());
        }
        v
    };
    for change in &net.written {
        for (i, vector) in vectors.iter().enumerate() {
            assert!(
                vector.get(change.origin) >= change.seq,
                "device {i} lacks change {} of {} (seed {seed})",
                change.seq,
                change.origin
            );
        }
    }
    let content = net.nodes[0].dev.content().await;
    for change in net.written.iter().filter(|c| c.is_delete()) {
        assert!(
            content.iter().all(|r| r.id != change.id),
            "deleted {} is back (seed {seed})",
            change.id
        );
    }
    for node in &net.nodes {
        assert_eq!(
            node.dev.engine.parked_len(),
            0,
            "changes wait forever (seed {seed})"
        );
    }
}

#[test]
fn replay_backfill_from_a_peer_that_is_itself_new() {
    use common::workload::Action::*;
    let steps = vec![
        Step::Crash(4),
        Step::Write(2, CreateVolume(0)),
        Step::Write(4, CreateTag(0)),
        Step::Deliver(4),
        Step::Crash(0),
        Step::Restart(1),
        Step::Cut(1, 3),
        Step::Deliver(202),
        Step::Restart(3),
        Step::Deliver(9),
    ];
    let faults = Faults {
        drop: 0.24557157135275404,
        duplicate: 0.0,
        reorder: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(3, 15195013146442734577, steps, faults));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_workloads_under_faults_converge(
        n in 3usize..=5,
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 10..70),
        drop in 0.0f64..0.3,
        duplicate in 0.0f64..0.2,
        reorder in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(n, seed, steps, Faults { drop, duplicate, reorder }));
    }
}
