//! Three nodes over real QUIC through fault-injecting UDP relays: 5% of
//! datagrams dropped, 50 ms delay with 20 ms of jitter (so datagrams
//! reorder), 1% duplicated; then one node partitioned from the others while
//! everyone writes, and healed. Every write reaches every node.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::time::Duration;

use common::relay::{Faults, Relay};
use common::*;
use sync_net::{Node, PairingCode, PeerRecord};
use uuid::Uuid;

const LOSSY: Faults = Faults {
    drop: 0.05,
    duplicate: 0.01,
    delay: Duration::from_millis(50),
    jitter: Duration::from_millis(20),
};

/// Pairs `a` and `b` through `relay` (a's side first): the code `b` accepts
/// names the relay's socket that faces `b`, so both the pairing and every
/// later connection cross the relay.
async fn pair_through(a: &Node, b: &Node, relay: &Relay) {
    let mut code: PairingCode = a.invite().unwrap();
    code.addr = relay.for_b;
    assert_eq!(b.accept(&code).await.unwrap(), a.device());
    // Each side reaches the other at the relay socket that faces it.
    let (ra, rb) = (a.peers(), b.peers());
    let b_as_seen_by_a = ra.iter().find(|p| p.device == b.device()).unwrap();
    a.pin(PeerRecord {
        addr: Some(relay.for_a),
        ..b_as_seen_by_a.clone()
    })
    .await
    .unwrap();
    let a_as_seen_by_b = rb.iter().find(|p| p.device == a.device()).unwrap();
    b.pin(PeerRecord {
        addr: Some(relay.for_b),
        ..a_as_seen_by_b.clone()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_through_loss_delay_reordering_and_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [
        start(&dir.path().join("a")).await,
        start(&dir.path().join("b")).await,
        start(&dir.path().join("c")).await,
    ];
    let addr = |i: usize| nodes[i].addr().unwrap();
    let mut relays = Vec::new();
    for (seed, (i, j)) in [(0usize, 1usize), (0, 2), (1, 2)].into_iter().enumerate() {
        let relay = Relay::start(addr(i), addr(j), LOSSY, seed as u64)
            .await
            .unwrap();
        pair_through(&nodes[i], &nodes[j], &relay).await;
        relays.push(((i, j), relay));
    }
    let all = || [&nodes[0], &nodes[1], &nodes[2]];

    let mut written: Vec<Uuid> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        written.extend(write_tags(node, 10, &format!("n{i}-first-")).await);
    }
    eventually("the first writes converge over the lossy links", || async {
        converged(&all()).await && tag_count(&nodes[2]).await == 30
    })
    .await;

    // Partition c: its links to a and b are cut while everyone writes.
    for ((i, j), relay) in &relays {
        if *i == 2 || *j == 2 {
            relay.set_cut(true);
        }
    }
    for round in 0..5 {
        for (i, node) in nodes.iter().enumerate() {
            written.extend(write_tags(node, 4, &format!("n{i}-cut{round}-")).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("a and b converge without c", || async {
        converged(&[&nodes[0], &nodes[1]]).await
    })
    .await;
    assert_eq!(
        tag_count(&nodes[0]).await,
        30 + 5 * 8,
        "a holds a's and b's"
    );
    assert_eq!(
        tag_count(&nodes[2]).await,
        30 + 5 * 4,
        "c holds only its own"
    );

    for (_, relay) in &relays {
        relay.set_cut(false);
    }
    eventually("all three converge once the partition heals", || async {
        converged(&all()).await && tag_count(&nodes[2]).await == written.len() as u64
    })
    .await;
    assert_everywhere(&nodes, &written).await;
    for ((i, j), relay) in &relays {
        let (forwarded, dropped, duplicated, cut) = relay.report();
        eprintln!(
            "link {i}-{j}: {forwarded} datagrams forwarded, {dropped} dropped, \
             {duplicated} duplicated, {cut} discarded while cut"
        );
        assert!(dropped > 0, "the relay dropped datagrams on link {i}-{j}");
    }
    for node in nodes {
        node.shutdown().await;
    }
}
