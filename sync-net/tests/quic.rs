//! Nodes syncing over real QUIC on 127.0.0.1.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sea_orm::{EntityTrait, PaginatorTrait};
use sync_core::{ErrorCode, Message, SyncModel};
use sync_net::PeerRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_and_a_fourth_backfills() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    let c = start(&dir.path().join("c")).await;
    pair(&a, &b).await;
    pair(&a, &c).await;
    pair(&b, &c).await;
    eventually("all connected", || async {
        a.connected().len() == 2 && b.connected().len() == 2 && c.connected().len() == 2
    })
    .await;

    let shared = write_tags(&a, 10, "a").await;
    write_tags(&b, 5, "b").await;
    write_tags(&c, 5, "c").await;
    add_volume(&a, "a disk").await;
    add_volume(&b, "b disk").await;
    add_volume(&c, "c disk").await;
    eventually("writes everywhere", || async {
        converged(&[&a, &b, &c]).await && a.engine().content().await.unwrap().len() == 23
    })
    .await;

    // Concurrent edits of one shared row.
    tokio::join!(
        rename(&b, shared[0], "from b"),
        rename(&c, shared[0], "from c")
    );
    eventually("concurrent edits merged", || async {
        converged(&[&a, &b, &c]).await
    })
    .await;
    let name = tag::Model::find_by_id(a.engine().database(), shared[0])
        .await
        .unwrap()
        .unwrap()
        .name;
    assert!(name == "from b" || name == "from c");

    // A new device joins through a and backfills everything, device-owned
    // rows included.
    let d = start(&dir.path().join("d")).await;
    pair(&a, &d).await;
    eventually("the new device backfilled", || async {
        !d.engine().needs_backfill() && converged(&[&a, &d]).await
    })
    .await;
    assert_eq!(
        volume::Entity::find()
            .count(d.engine().database())
            .await
            .unwrap(),
        3
    );
    for n in [&a, &b, &c, &d] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_its_data_directory_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    write_tags(&a, 5, "before").await;
    eventually("b has a's tags", || async { converged(&[&a, &b]).await }).await;

    b.shutdown().await;
    drop(b);
    write_tags(&a, 7, "while b was away").await;
    let b = start(&dir.path().join("b")).await;
    eventually("b caught up", || async { converged(&[&a, &b]).await }).await;
    assert_eq!(
        tag::Entity::find()
            .count(b.engine().database())
            .await
            .unwrap(),
        12
    );
    let log = b.engine().log().await.unwrap();
    let mut keys: Vec<_> = log.iter().map(|c| (c.origin, c.seq)).collect();
    keys.dedup();
    assert_eq!(keys.len(), log.len(), "no change stored twice");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaired_device_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let stranger = start(&dir.path().join("stranger")).await;
    // The stranger pins a (it learned a's fingerprint somehow); a never
    // paired with it.
    stranger
        .pin(PeerRecord {
            device: a.device(),
            fingerprint: a.fingerprint(),
            addr: Some(a.addr().unwrap()),
        })
        .await
        .unwrap();
    write_tags(&stranger, 3, "intruder").await;
    eventually("the stranger was told", || async {
        stranger
            .link_stats()
            .get(&a.device())
            .and_then(|s| s.last_error.clone())
            .is_some_and(|e| e.contains("not paired"))
    })
    .await;
    assert!(a.connected().is_empty());
    assert_eq!(
        tag::Entity::find()
            .count(a.engine().database())
            .await
            .unwrap(),
        0,
        "nothing reached a's database"
    );
    a.shutdown().await;
    stranger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_get_errors_while_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    eventually("a and b connected", || async { a.connected().len() == 1 }).await;

    // A paired device that speaks raw frames.
    let hostile = sync_net::Identity::load_or_create(&dir.path().join("hostile")).unwrap();
    a.pin(PeerRecord {
        device: hostile.device(),
        fingerprint: hostile.fingerprint(),
        addr: None,
    })
    .await
    .unwrap();
    let conn = sync_net::dial(&hostile, a.fingerprint(), a.addr().unwrap())
        .await
        .unwrap();
    let (mut main_send, mut main_recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(sync_core::Hello {
        device: hostile.device(),
        library: LIBRARY,
        min_version: sync_core::MIN_PROTOCOL_VERSION,
        max_version: sync_core::PROTOCOL_VERSION,
        vector: Default::default(),
        needs_backfill: false,
        members: [0; 32],
    });
    sync_net::write_message(&mut main_send, &hello)
        .await
        .unwrap();
    assert!(matches!(
        sync_net::read_message(&mut main_recv).await.unwrap(),
        Message::Hello(_)
    ));

    let version = sync_core::PROTOCOL_VERSION.to_be_bytes();
    type Expect = fn(&ErrorCode) -> bool;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        // Oversized: a 2 GiB length.
        (
            [&version[..], &[8, 0], &0x8000_0000u32.to_be_bytes()[..]].concat(),
            |c| *c == ErrorCode::Malformed,
        ),
        // Garbage payload.
        (
            [
                &version[..],
                &[8, 0],
                &4u32.to_be_bytes()[..],
                &[0xde, 0xad, 0xbe, 0xef],
            ]
            .concat(),
            |c| *c == ErrorCode::Malformed,
        ),
        // Another protocol version.
        (
            [&[0u8, 42][..], &[8, 0], &0u32.to_be_bytes()[..]].concat(),
            |c| {
                *c == ErrorCode::UnsupportedVersion {
                    min: sync_core::MIN_PROTOCOL_VERSION,
                    max: sync_core::PROTOCOL_VERSION,
                }
            },
        ),
    ];
    for (bytes, expected) in cases {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        match sync_net::read_message(&mut recv).await.unwrap() {
            Message::Error(e) => assert!(expected(&e.code), "{e:?}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    // The hostile device's main session still answers...
    let pull = Message::PullRequest(sync_core::PullRequest {
        vector: Default::default(),
        limit: 10,
        ahead: Vec::new(),
    });
    sync_net::write_message(&mut main_send, &pull)
        .await
        .unwrap();
    let mut answered = false;
    for _ in 0..10 {
        if let Message::PullResponse(_) = sync_net::read_message(&mut main_recv).await.unwrap() {
            answered = true;
            break;
        }
    }
    assert!(answered);
    // ...and so does the node, to its other peers.
    write_tags(&b, 2, "still syncing").await;
    eventually("b's writes reach a", || async {
        converged(&[&a, &b]).await
    })
    .await;
    assert_eq!(
        tag::Entity::find()
            .count(a.engine().database())
            .await
            .unwrap(),
        2
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_to_ten_peers_has_every_send_in_flight_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Every push from the hub waits at a barrier for ten: if the hub wrote
    // to its peers one after another, the first write would wait forever
    // and no peer would ever get the change.
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let hub = start_with(&dir.path().join("hub"), |mut c| {
        c.send_barrier = Some(barrier.clone());
        c
    })
    .await;
    let mut peers = Vec::new();
    for i in 0..10 {
        let p = start(&dir.path().join(format!("p{i}"))).await;
        pair(&hub, &p).await;
        peers.push(p);
    }
    eventually("all ten connected", || async {
        hub.connected().len() == 10
    })
    .await;
    // Let the initial catch-up settle so only the broadcast is pending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = write_tags(&hub, 1, "to everyone").await;
    for p in &peers {
        let id = ids[0];
        eventually("every peer has the broadcast", || async {
            tag::Model::find_by_id(p.engine().database(), id)
                .await
                .unwrap()
                .is_some()
        })
        .await;
    }
    let stats = hub.link_stats();
    assert_eq!(stats.values().filter(|s| s.pushes_sent >= 1).count(), 10);
    hub.shutdown().await;
    for p in &peers {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_expires_after_the_retention_horizon_and_resyncs_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let a = start_with(&dir.path().join("a"), |mut c| {
        c.retention = Some(Duration::from_millis(300));
        c
    })
    .await;
    let b = start(&dir.path().join("b")).await;
    let c = start(&dir.path().join("c")).await;
    pair(&a, &b).await;
    pair(&a, &c).await;
    write_tags(&a, 5, "before").await;
    eventually("b and c have a's tags", || async {
        converged(&[&a, &b, &c]).await
    })
    .await;
    let b_id = b.device();
    b.shutdown().await;
    drop(b);

    let away = write_tags(&a, 7, "while b was away").await;
    eventually("a expires the silent b", || async {
        let s = a.status().await.unwrap();
        s.peers.iter().any(|p| p.peer == b_id && p.expired)
    })
    .await;
    // Only c holds back pruning now: once c acknowledged everything, a's
    // log empties although b never acknowledged the last seven changes.
    eventually("a prunes what c acknowledged", || async {
        a.engine().prune().await.unwrap();
        a.status().await.unwrap().log_len == 0
    })
    .await;

    let b = start(&dir.path().join("b")).await;
    eventually("b resynced from a snapshot", || async {
        converged(&[&a, &b, &c]).await
    })
    .await;
    for id in away {
        assert!(
            tag::Model::find_by_id(b.engine().database(), id)
                .await
                .unwrap()
                .is_some()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// An application takes a node offline and back without stopping it:
/// while paused it holds no link, dials nobody and is refused by nobody
/// (it refuses); writes on both sides go on and meet on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_writes_locally_and_syncs_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a")).await;
    let b = start(&dir.path().join("b")).await;
    pair(&a, &b).await;
    eventually("connected", || async {
        a.connected().len() == 1 && b.connected().len() == 1
    })
    .await;

    a.pause();
    assert!(a.is_paused());
    eventually("both see the link gone", || async {
        a.connected().is_empty() && b.connected().is_empty()
    })
    .await;
    write_tags(&a, 4, "offline a").await;
    write_tags(&b, 3, "online b").await;
    // b keeps dialling; a refuses: a second of that changes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.connected().is_empty() && b.connected().is_empty());
    let count = |n: &sync_net::Node| {
        let db = n.engine().database().clone();
        async move { tag::Entity::find().count(&db).await.unwrap() }
    };
    assert_eq!(count(&a).await, 4, "a holds only its own writes");
    assert_eq!(count(&b).await, 3, "b holds only its own writes");
    let code = a.invite().unwrap();
    let c = start(&dir.path().join("c")).await;
    assert!(
        c.accept(&code).await.is_err(),
        "a paused node pairs with nobody"
    );
    c.pause();
    assert!(matches!(
        c.accept(&code).await,
        Err(sync_net::NetError::Paused)
    ));

    a.resume();
    eventually("writes meet", || async {
        count(&a).await == 7 && count(&b).await == 7
    })
    .await;
    assert!(converged(&[&a, &b]).await);
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}
