//! The protocol, device by device, over a simulated network: catch-up,
//! backfill, relay, pruning, the retention horizon, and refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::time::Duration;

use common::sim::{LIBRARY, Net};
use common::{Device, device, tag};
use sea_orm::ActiveValue::Set;
use sync_core::__private::steps;
use sync_core::{
    Change, ErrorCode, Hello, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, Phase, Session,
    SessionConfig, SessionState, SyncModel,
};
use uuid::Uuid;

async fn write_tags(d: &Device, n: usize, prefix: &str) -> Vec<Change> {
    let mut tx = d.engine.begin().await.unwrap();
    for i in 0..n {
        tx.insert(tag::ActiveModel {
            gid: Set(Uuid::new_v4()),
            name: Set(format!("{prefix}{i}")),
            color: Set(None),
            weight: Set(i as i64),
            parent_id: Set(None),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    tx.commit().await.unwrap()
}

async fn rename_some(d: &Device, every: usize, name: &str) -> Vec<Change> {
    let mut tx = d.engine.begin().await.unwrap();
    let rows = tag::Entity::find().all(tx.connection()).await.unwrap();
    for row in rows.into_iter().step_by(every.max(1)) {
        let mut row = row;
        row.name = name.into();
        tx.update(row).await.unwrap();
    }
    tx.commit().await.unwrap()
}

use sea_orm::EntityTrait;

async fn net_of(n: u128, seed: u64) -> Net {
    let mut devices = Vec::new();
    for i in 0..n {
        devices.push(device(i + 1).await);
    }
    let net = Net::new(devices, seed);
    net.pair_all().await;
    net
}

async fn write(net: &mut Net, i: usize, n: usize, prefix: &str) {
    let changes = write_tags(&net.nodes[i].dev, n, prefix).await;
    net.committed(i, changes);
}

#[tokio::test]
async fn devices_that_connect_catch_up_both_ways() {
    let mut net = net_of(2, 1).await;
    write(&mut net, 0, 30, "a").await;
    write(&mut net, 1, 20, "b").await;
    net.connect_all().await;
    assert!(net.settle(1).await);
    let v0 = net.nodes[0].dev.engine.vector();
    let v1 = net.nodes[1].dev.engine.vector();
    assert_eq!(v0, v1);
    assert_eq!(v0.get(net.nodes[0].dev.engine.origin()), 30);
    assert_eq!(net.nodes[0].dev.content().await.len(), 50);
}

#[tokio::test]
async fn an_offline_device_catches_up_in_pages() {
    let mut net = net_of(3, 2).await;
    net.config.pull_limit = 7;
    net.connect_all().await;
    net.run(10_000).await;
    net.disconnect(2);
    write(&mut net, 0, 40, "a").await;
    write(&mut net, 1, 25, "b").await;
    let renames = rename_some(&net.nodes[0].dev, 3, "renamed").await;
    net.committed(0, renames);
    net.run(10_000).await;
    assert!(!net.nodes[2].online);

    net.nodes[2].online = true;
    net.connect(2, 0).await;
    net.connect(2, 1).await;
    assert!(net.settle(2).await);
    let c = net.nodes[2].dev.engine.status();
    assert_eq!(c.phase, Phase::Ready);
    assert_eq!(net.nodes[2].dev.content().await.len(), 65);
}

#[tokio::test]
async fn changes_relay_between_devices_that_never_meet() {
    let mut net = net_of(3, 3).await;
    // a - b - c: a and c are never connected.
    net.connect(0, 1).await;
    net.connect(1, 2).await;
    net.run(10_000).await;
    write(&mut net, 0, 5, "a").await;
    write(&mut net, 2, 4, "c").await;
    net.run(10_000).await;
    assert!(net.converged().await, "relayed by pushes alone");
    assert_eq!(net.nodes[0].dev.content().await.len(), 9);

    // And by catch-up alone: c writes while b is away from it.
    net.partition(1, 2, true);
    write(&mut net, 2, 3, "late").await;
    net.run(10_000).await;
    net.partition(1, 2, false);
    assert!(net.settle(3).await);
    let c = net.nodes[2].dev.engine.origin();
    assert_eq!(net.nodes[0].dev.engine.vector().get(c), 7);
    assert_eq!(net.nodes[0].dev.content().await.len(), 12);
}

#[tokio::test]
async fn a_gap_from_a_third_device_is_never_skipped() {
    let mut net = net_of(3, 4).await;
    net.connect(0, 1).await;
    net.run(1_000).await;
    // c writes 1, 2, 3; b only ever hears 3 (pushed), never 1 and 2.
    let c_id = net.nodes[2].dev.engine.origin();
    let mut commits = net.nodes[2].dev.engine.subscribe();
    let first = write_tags(&net.nodes[2].dev, 1, "one").await;
    let second = write_tags(&net.nodes[2].dev, 1, "two").await;
    write_tags(&net.nodes[2].dev, 1, "three").await;
    commits.recv().await.unwrap();
    commits.recv().await.unwrap();
    let third = commits.recv().await.unwrap();
    let Message::Push(push) = third.pushes().remove(0) else {
        panic!("a commit's push")
    };
    let batch = push.batches.into_iter().next().unwrap();
    assert_eq!((batch.after, batch.upto), (2, 3));
    let b = &net.nodes[1].dev;
    steps::apply_batches(&b.engine, vec![batch]).await.unwrap();
    assert_eq!(
        b.engine.vector().get(c_id),
        0,
        "3 without 1 and 2 proves nothing"
    );
    // a pulls from b: it gets 3, and its vector for c stays at 0.
    net.anti_entropy().await;
    net.run(1_000).await;
    let a = &net.nodes[0].dev;
    assert_eq!(a.engine.vector().get(c_id), 0);
    // Once c is reachable, 1 and 2 arrive, and the vectors move.
    net.connect(0, 2).await;
    assert!(net.settle(3).await);
    let a = &net.nodes[0].dev;
    assert_eq!(a.engine.vector().get(c_id), 3);
    assert_eq!(a.content().await.len(), 3);
    drop((first, second));
}

#[tokio::test]
async fn a_new_device_backfills_while_others_keep_writing() {
    let mut net = net_of(3, 5).await;
    net.config.snapshot_limit = 10;
    net.connect(0, 1).await;
    write(&mut net, 0, 60, "a").await;
    write(&mut net, 1, 30, "b").await;
    let renames = rename_some(&net.nodes[1].dev, 4, "edited").await;
    net.committed(1, renames);
    net.run(10_000).await;
    // A deleted record must stay deleted on the new device.
    let victim = tag::Entity::find()
        .all(net.nodes[0].dev.engine.database())
        .await
        .unwrap()[0]
        .gid;
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    tx.delete::<tag::Model>(victim).await.unwrap();
    let del = tx.commit().await.unwrap();
    net.committed(0, del);
    net.run(10_000).await;

    assert!(net.nodes[2].dev.engine.needs_backfill());
    net.connect(2, 0).await;
    // Interleave: a few messages of the backfill, then new writes.
    for round in 0..5 {
        for _ in 0..3 {
            net.step().await;
        }
        write(&mut net, round % 2, 3, "during").await;
    }
    net.connect(2, 1).await;
    assert!(net.settle(4).await);
    let d = &net.nodes[2].dev;
    assert!(!d.engine.needs_backfill());
    assert!(
        tag::Model::find_by_id(d.engine.database(), victim)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(d.content().await.len(), 89 + 15);
}

#[tokio::test]
async fn a_backfill_resumes_after_a_restart() {
    let mut net = net_of(2, 6).await;
    net.config.snapshot_limit = 8;
    write(&mut net, 0, 50, "a").await;
    // The new device starts its backfill...
    net.connect(1, 0).await;
    for _ in 0..8 {
        net.step().await;
    }
    let status = net.nodes[1].dev.engine.status();
    let Phase::Backfilling { done, total } = status.phase else {
        panic!("expected a backfill in progress, got {:?}", status.phase);
    };
    assert!(done > 0 && done < total, "{done}/{total}");

    // ...and crashes: its sessions die; the process restarts over the same
    // database.
    net.disconnect(1);
    let db = net.nodes[1].dev.engine.database().clone();
    let time = net.nodes[1].dev.time.clone();
    net.nodes[1].dev = common::open_device(db, 2, time).await;
    net.nodes[1].online = true;
    let request = steps::backfill_request(&net.nodes[1].dev.engine, 8);
    let resumed_at = request.cursor.as_ref().map(|c| c.done);
    assert_eq!(resumed_at, Some(done), "it resumes where it stopped");
    net.connect(1, 0).await;
    assert!(net.settle(2).await);
    assert_eq!(net.nodes[1].dev.content().await.len(), 50);
}

#[tokio::test]
async fn pruning_waits_for_every_paired_peer_including_a_silent_one() {
    let mut net = net_of(3, 7).await;
    // c is paired but never connects.
    net.nodes[2].online = false;
    net.connect(0, 1).await;
    write(&mut net, 0, 10, "a").await;
    net.run(10_000).await;
    let a = &net.nodes[0].dev.engine;
    assert_eq!(a.prune().await.unwrap(), 0);
    assert_eq!(a.log_len(), 10, "c never acknowledged: nothing is pruned");

    // c shows up and acknowledges: now the log can go.
    net.nodes[2].online = true;
    net.connect(2, 0).await;
    net.connect(2, 1).await;
    assert!(net.settle(2).await);
    net.anti_entropy().await; // every session acknowledges after a pull
    net.run(10_000).await;
    let a = &net.nodes[0].dev.engine;
    // Acknowledgements prune at most once a second and this clock stands
    // still: prune now.
    a.prune().await.unwrap();
    assert_eq!(a.log_len(), 0, "{:?}", a.status().peers);
    // Merging still works after pruning: field versions live beside the data.
    let renames = rename_some(&net.nodes[1].dev, 2, "after pruning").await;
    net.committed(1, renames);
    assert!(net.settle(2).await);
}

#[tokio::test]
async fn a_peer_away_beyond_the_horizon_resyncs_from_a_snapshot() {
    let mut net = net_of(3, 8).await;
    net.connect_all().await;
    write(&mut net, 0, 5, "a").await;
    assert!(net.settle(2).await);
    net.disconnect(2);

    // A month passes; c is expired and the others prune without it.
    for n in &net.nodes {
        n.dev.time.advance(Duration::from_secs(31 * 24 * 3600));
    }
    write(&mut net, 0, 5, "b").await;
    let victim = tag::Entity::find()
        .all(net.nodes[0].dev.engine.database())
        .await
        .unwrap()[0]
        .gid;
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    tx.delete::<tag::Model>(victim).await.unwrap();
    let del = tx.commit().await.unwrap();
    net.committed(0, del);
    net.run(10_000).await;
    let horizon = Duration::from_secs(30 * 24 * 3600);
    let c_id = net.nodes[2].dev.id;
    for i in 0..2 {
        let expired = net.nodes[i].dev.engine.expire_peers(horizon).await.unwrap();
        assert_eq!(expired, vec![c_id]);
    }
    net.anti_entropy().await;
    net.run(10_000).await;
    net.nodes[0].dev.engine.prune().await.unwrap();
    assert_eq!(
        net.nodes[0].dev.engine.log_len(),
        0,
        "pruned without the expired peer"
    );

    // c returns: told to resync, it loads a snapshot and converges.
    net.nodes[2].online = true;
    net.connect(2, 0).await;
    assert!(net.settle(3).await);
    let c = &net.nodes[2].dev;
    assert!(
        tag::Model::find_by_id(c.engine.database(), victim)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(c.content().await.len(), 9);
    // What c logged before it left is below the snapshot's floor: never
    // served again, so gone with the resync (it stayed for ever before,
    // since pruning looks only above the floor; found by the simulation's
    // final pruning check).
    assert_eq!(c.engine.log_len(), 0, "c's old log entries are gone");
    let a_status = net.nodes[0].dev.engine.status();
    assert!(
        a_status.peers.iter().all(|p| !p.expired),
        "{:?}",
        a_status.peers
    );
}

#[tokio::test]
async fn unpaired_devices_other_libraries_and_other_versions_are_refused() {
    let a = device(1).await;
    let stranger = device(9).await;
    let mut session = Session::new(a.engine.clone(), SessionConfig::new(LIBRARY));
    let hello = |device: Uuid, library: Uuid, min: u16, max: u16| {
        Message::Hello(Hello {
            device,
            library,
            min_version: min,
            max_version: max,
            vector: Default::default(),
            needs_backfill: false,
            members: [0; 32],
        })
    };
    let out = session
        .handle(hello(
            stranger.id,
            LIBRARY,
            PROTOCOL_VERSION,
            PROTOCOL_VERSION,
        ))
        .await
        .unwrap();
    assert!(out.close.is_some());
    assert!(matches!(&out.send[0], Message::Error(e) if e.code == ErrorCode::NotPaired));
    assert_eq!(session.state(), SessionState::Closed);

    a.engine.pair(stranger.id).await.unwrap();
    let mut session = Session::new(a.engine.clone(), SessionConfig::new(LIBRARY));
    let out = session
        .handle(hello(
            stranger.id,
            Uuid::from_u128(5),
            PROTOCOL_VERSION,
            PROTOCOL_VERSION,
        ))
        .await
        .unwrap();
    assert!(matches!(&out.send[0], Message::Error(e) if e.code == ErrorCode::WrongLibrary));

    let mut session = Session::new(a.engine.clone(), SessionConfig::new(LIBRARY));
    let out = session
        .handle(hello(
            stranger.id,
            LIBRARY,
            PROTOCOL_VERSION + 1,
            PROTOCOL_VERSION + 3,
        ))
        .await
        .unwrap();
    assert!(
        matches!(&out.send[0], Message::Error(e) if e.code == ErrorCode::UnsupportedVersion { min: MIN_PROTOCOL_VERSION, max: PROTOCOL_VERSION })
    );

    // Anything before hello is refused too.
    let mut session = Session::new(a.engine.clone(), SessionConfig::new(LIBRARY));
    let out = session
        .handle(Message::PullRequest(sync_core::PullRequest {
            vector: Default::default(),
            limit: 10,
            ahead: Vec::new(),
        }))
        .await
        .unwrap();
    assert!(matches!(&out.send[0], Message::Error(e) if e.code == ErrorCode::Unexpected));
    assert!(a.content().await.is_empty());
}

#[tokio::test]
async fn status_reports_peers_lag_and_phase() {
    let mut net = net_of(2, 9).await;
    net.connect_all().await;
    net.run(1_000).await;
    net.partition(0, 1, true);
    write(&mut net, 0, 12, "a").await;
    net.run(1_000).await;
    net.nodes[0].dev.time.advance(Duration::from_millis(1_200));
    let s = net.nodes[0].dev.engine.status();
    assert_eq!(s.peers.len(), 1);
    let p = &s.peers[0];
    assert!(p.connected);
    assert_eq!(p.behind, 12, "the peer has not acknowledged a's 12 changes");
    assert!(
        (1_200..1_300).contains(&p.lag_ms),
        "the oldest of them was written 1.2 simulated seconds ago: {} ms",
        p.lag_ms
    );
    assert_eq!(s.log_len, 12);
    net.partition(0, 1, false);
    assert!(net.settle(2).await);
    let s = net.nodes[0].dev.engine.status();
    assert_eq!(s.peers[0].behind, 0);
    assert_eq!(s.peers[0].lag_ms, 0);
    assert_eq!(s.phase, Phase::Ready);
    let at_b = net.nodes[1].dev.engine.status();
    assert!(
        at_b.peers[0].latency_ms.is_some(),
        "b measured commit-to-applied of a's writes"
    );
}

#[tokio::test]
async fn tag_model_is_registered() {
    assert_eq!(tag::Model::META.name, "tags");
}

#[tokio::test]
async fn catch_up_resumes_after_a_restart_from_the_vector_it_reached() {
    let mut net = net_of(2, 10).await;
    net.config.pull_limit = 5;
    net.connect_all().await;
    net.run(1_000).await;
    net.partition(0, 1, true);
    write(&mut net, 0, 40, "a").await;
    net.run(1_000).await;
    net.partition(0, 1, false);
    net.anti_entropy().await;
    // A few pages of the pull.
    for _ in 0..6 {
        net.step().await;
    }
    let a_id = net.nodes[0].dev.engine.origin();
    let reached = net.nodes[1].dev.engine.vector().get(a_id);
    assert!(reached > 0 && reached < 40, "mid catch-up: {reached}");

    net.disconnect(1);
    let db = net.nodes[1].dev.engine.database().clone();
    let time = net.nodes[1].dev.time.clone();
    net.nodes[1].dev = common::open_device(db, 2, time).await;
    net.nodes[1].online = true;
    assert_eq!(net.nodes[1].dev.engine.vector().get(a_id), reached);
    net.connect(1, 0).await;
    assert!(net.settle(2).await);
    assert_eq!(net.nodes[1].dev.engine.vector().get(a_id), 40);
}

#[tokio::test]
async fn pages_and_pushes_of_large_rows_are_cut_to_fit_a_message() {
    let mut net = net_of(2, 11).await;
    let big = |i: usize| format!("{i:04}{}", "x".repeat(300_000));
    async fn write_big(d: &Device, names: Vec<String>) -> Vec<Change> {
        let mut tx = d.engine.begin().await.unwrap();
        for name in names {
            tx.insert(tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set(name),
                color: Set(None),
                weight: Set(0),
                parent_id: Set(None),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        tx.commit().await.unwrap()
    }
    // About 9 MiB before the devices meet: the snapshot is paged by size.
    let first = write_big(&net.nodes[0].dev, (0..30).map(big).collect()).await;
    net.committed(0, first);
    net.connect_all().await;
    assert!(net.settle(3).await);
    // A 9 MiB commit pushed live: cut into several pushes.
    let mut commits = net.nodes[0].dev.engine.subscribe();
    let live = write_big(&net.nodes[0].dev, (30..60).map(big).collect()).await;
    assert!(commits.recv().await.unwrap().pushes().len() > 1);
    net.committed(0, live);
    assert!(net.settle(3).await);
    // And caught up by pull while apart: paged by size.
    net.partition(0, 1, true);
    let apart = write_big(&net.nodes[0].dev, (60..90).map(big).collect()).await;
    net.committed(0, apart);
    net.run(10_000).await;
    net.partition(0, 1, false);
    assert!(net.settle(3).await);
    assert_eq!(net.nodes[1].dev.content().await.len(), 90);
}

/// A device-owned record written, then superseded after other changes: a
/// requester catching up in pages smaller than the gap gets the old change
/// as a husk on an early page, and must get the newer state with it (found
/// by `examples/simulate --faults pages`: before, every page stopped at the
/// husk and the requester never caught up).
#[tokio::test]
async fn a_page_that_leaves_out_a_superseded_change_carries_its_newer_state() {
    use common::volume;
    // a and c stay; b goes away.
    let mut net = net_of(3, 11).await;
    net.config.pull_limit = 2;
    // Both devices know each other (no backfill later): then one is away.
    net.connect_all().await;
    write(&mut net, 1, 1, "b").await;
    assert!(net.settle(1).await);
    net.disconnect(1);
    let d0 = &net.nodes[0].dev;
    let gid = Uuid::new_v4();
    let mut tx = d0.engine.begin().await.unwrap();
    tx.insert(volume::ActiveModel {
        gid: Set(gid),
        device: Set(d0.id),
        name: Set("first".into()),
        capacity: Set(None),
        is_online: Set(true),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = tx.commit().await.unwrap();
    let tags = write_tags(d0, 5, "between").await;
    let mut tx = d0.engine.begin().await.unwrap();
    let mut row = volume::Model::find_by_id(tx.connection(), gid)
        .await
        .unwrap()
        .unwrap();
    row.name = "renamed".into();
    tx.update(row).await.unwrap();
    let renamed = tx.commit().await.unwrap();
    net.committed(0, [first, tags, renamed].concat());

    net.nodes[1].online = true;
    net.connect(1, 0).await;
    assert!(net.settle(3).await, "the requester caught up");
    let (v0, v1) = (
        net.nodes[0].dev.engine.vector(),
        net.nodes[1].dev.engine.vector(),
    );
    assert_eq!(v0, v1);
    let held = volume::Model::find_by_id(net.nodes[1].dev.engine.database(), gid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.name, "renamed");
}

/// a - b - c: a and c never meet; sessions open along the line.
async fn line_of_three() -> Net {
    let mut net = Net::new(vec![device(1).await, device(2).await, device(3).await], 7);
    for (x, y) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        let id = net.nodes[y].dev.id;
        net.nodes[x].dev.engine.pair(id).await.unwrap();
    }
    net.connect(0, 1).await;
    net.connect(1, 2).await;
    net
}

/// In a library where a and c never meet (a - b - c), c collects a delete
/// only once it knows a holds it and holds all a held: a rename a made
/// before it learned of the delete, still on its way through b, would
/// otherwise reach c after the tombstone was gone and wait there for ever
/// as an incomplete record. The simulation found it (12 devices in a line,
/// seeds 2, 10, 18).
#[tokio::test]
async fn a_member_never_met_holds_collection_back_until_heard_of() {
    let mut net = line_of_three().await;
    net.heartbeats();
    net.run(10_000).await;
    let a_id = net.nodes[0].dev.id;
    assert!(
        net.nodes[2]
            .dev
            .engine
            .members()
            .iter()
            .any(|m| m.device == a_id),
        "c knows a as a member"
    );
    let gid = Uuid::from_u128(80);
    let c = &net.nodes[2].dev;
    let mut tx = c.engine.begin().await.unwrap();
    tx.insert(tag::ActiveModel {
        gid: Set(gid),
        name: Set("doomed".into()),
        color: Set(None),
        weight: Set(0),
        parent_id: Set(None),
        ..Default::default()
    })
    .await
    .unwrap();
    let created = tx.commit().await.unwrap();
    net.committed(2, created);
    net.run(10_000).await;
    // a renames it, cut off from b.
    net.partition(0, 1, true);
    let a = &net.nodes[0].dev;
    a.time.advance(Duration::from_millis(5));
    let row = tag::Entity::find()
        .all(a.engine.database())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.gid == gid)
        .unwrap();
    let mut tx = a.engine.begin().await.unwrap();
    tx.update(tag::Model {
        name: "renamed".into(),
        ..row
    })
    .await
    .unwrap();
    let renamed = tx.commit().await.unwrap();
    net.committed(0, renamed);
    net.run(10_000).await;
    // c deletes it; b holds the delete and acknowledges it.
    let c = &net.nodes[2].dev;
    c.time.advance(Duration::from_millis(10));
    let mut tx = c.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(gid).await.unwrap());
    let deleted = tx.commit().await.unwrap();
    net.committed(2, deleted);
    net.run(10_000).await;
    net.gossip(1).await;
    let c = &net.nodes[2].dev;
    c.time.advance(Duration::from_secs(60));
    let collected = c.engine.collect_tombstones(Duration::ZERO).await.unwrap();
    assert_eq!(collected.shared, 0, "a is not known to hold the delete");

    // The link heals (a fresh connection, as a transport makes): a's rename
    // reaches b, then c, and meets the tombstone.
    net.partition(0, 1, false);
    net.disconnect(0);
    net.nodes[0].online = true;
    net.connect(0, 1).await;
    net.gossip(4).await;
    for node in &net.nodes {
        let tags = tag::Entity::find()
            .all(node.dev.engine.database())
            .await
            .unwrap();
        assert!(tags.is_empty(), "{tags:?}");
        assert_eq!(node.dev.engine.status().parked, 0);
    }
    let c = &net.nodes[2].dev;
    let collected = c.engine.collect_tombstones(Duration::ZERO).await.unwrap();
    assert_eq!(
        collected.shared, 1,
        "every member holds it now, c all they held"
    );
}

/// A shared tombstone that came in a snapshot (so never in this device's
/// log) is collected only once every unexpired peer acknowledged its
/// delete: one peer that lacks it would otherwise resync from this device,
/// find the record absent, and keep it. The simulation found it (12 devices,
/// sparse, seed 14).
#[tokio::test]
async fn a_tombstone_from_a_snapshot_waits_for_every_acknowledgement() {
    let (a, b, c) = (device(1).await, device(2).await, device(3).await);
    common::pair_each(&[&a, &b, &c]).await;
    let gid = Uuid::from_u128(79);
    let mut tx = a.engine.begin().await.unwrap();
    tx.insert(tag::ActiveModel {
        gid: Set(gid),
        name: Set("gone".into()),
        color: Set(None),
        weight: Set(0),
        parent_id: Set(None),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    a.time.advance(Duration::from_millis(5));
    let mut tx = a.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(gid).await.unwrap());
    tx.commit().await.unwrap();
    // b loads the tombstone from a's snapshot.
    let request = steps::backfill_request(&b.engine, 1_000);
    let page = steps::serve_snapshot(&a.engine, &request)
        .await
        .unwrap()
        .unwrap();
    steps::apply_snapshot(&b.engine, page).await.unwrap();
    // a holds all it wrote; c never heard of the tag.
    steps::hear(&b.engine, &a.engine);
    steps::hear(&b.engine, &c.engine);
    b.time.advance(Duration::from_secs(60));
    let collected = b.engine.collect_tombstones(Duration::ZERO).await.unwrap();
    assert_eq!(collected.shared, 0, "c lacks the delete");
    // c takes a's snapshot too, and says so.
    let page = steps::serve_snapshot(&a.engine, &steps::backfill_request(&c.engine, 1_000))
        .await
        .unwrap()
        .unwrap();
    steps::apply_snapshot(&c.engine, page).await.unwrap();
    c.time.advance(Duration::from_millis(5));
    steps::hear(&b.engine, &c.engine);
    let collected = b.engine.collect_tombstones(Duration::ZERO).await.unwrap();
    assert_eq!(collected.shared, 1, "every member holds it now");
}

/// Tombstones are collected once their delete is older than the horizon and
/// every unexpired peer holds it; a device that was away longer (expired)
/// and still holds the records, one of them updated while away, resyncs:
/// nothing deleted comes back, its update loses, its new record is kept.
#[tokio::test]
async fn a_device_returning_after_tombstones_were_collected_brings_nothing_back() {
    use common::volume;
    // a and c stay; b goes away.
    let mut net = net_of(3, 11).await;
    net.connect_all().await;
    write(&mut net, 0, 3, "t").await;
    let a_id = net.nodes[0].dev.id;
    let disk = Uuid::new_v4();
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    tx.insert(volume::ActiveModel {
        gid: Set(disk),
        device: Set(a_id),
        name: Set("a's disk".into()),
        capacity: Set(None),
        is_online: Set(true),
        ..Default::default()
    })
    .await
    .unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    assert!(net.settle(2).await);
    let tags: Vec<Uuid> = tag::Entity::find()
        .all(net.nodes[0].dev.engine.database())
        .await
        .unwrap()
        .iter()
        .map(|t| t.gid)
        .collect();
    let (edited, untouched, kept) = (tags[0], tags[1], tags[2]);

    // b goes away; a deletes two tags and its disk; b, offline, renames
    // one of them and creates a tag of its own.
    net.disconnect(1);
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    tx.delete::<tag::Model>(edited).await.unwrap();
    tx.delete::<tag::Model>(untouched).await.unwrap();
    tx.delete::<volume::Model>(disk).await.unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    let mut tx = net.nodes[1].dev.engine.begin().await.unwrap();
    let mut row = tag::Model::find_by_id(tx.connection(), edited)
        .await
        .unwrap()
        .unwrap();
    row.name = "renamed by b while away".into();
    tx.update(row).await.unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(1, c);
    let born = write_tags(&net.nodes[1].dev, 1, "b's own ").await;
    let born_away = born[0].id;
    net.committed(1, born);
    let b_id = net.nodes[1].dev.id;
    // c receives the deletes, acknowledges them and says so in its
    // heartbeats.
    net.run(10_000).await;
    net.gossip(2).await;

    // A month passes: a expires b, prunes, and collects the tombstones.
    for n in &net.nodes {
        n.dev.time.advance(Duration::from_secs(31 * 24 * 3600));
    }
    let horizon = Duration::from_secs(30 * 24 * 3600);
    let a = &net.nodes[0].dev.engine;
    assert_eq!(
        a.collect_tombstones(horizon).await.unwrap(),
        sync_core::Collected::default(),
        "b has not acknowledged the deletes and is not expired yet"
    );
    assert_eq!(a.expire_peers(horizon).await.unwrap(), vec![b_id]);
    a.prune().await.unwrap();
    assert_eq!(
        a.collect_tombstones(horizon).await.unwrap(),
        sync_core::Collected {
            shared: 2,
            owned: 1
        }
    );
    assert_eq!(
        a.collect_tombstones(horizon).await.unwrap(),
        sync_core::Collected::default(),
        "collected once"
    );

    // b returns: told to resync, it settles what the snapshot lacks.
    net.nodes[1].online = true;
    net.connect(1, 0).await;
    assert!(net.settle(3).await, "converged");
    for n in &net.nodes {
        let db = n.dev.engine.database();
        for gone in [edited, untouched] {
            assert!(
                tag::Model::find_by_id(db, gone).await.unwrap().is_none(),
                "a deleted tag stays deleted on {}",
                n.dev.id
            );
        }
        assert!(
            volume::Model::find_by_id(db, disk).await.unwrap().is_none(),
            "a's deleted disk stays deleted on {}",
            n.dev.id
        );
        assert!(tag::Model::find_by_id(db, kept).await.unwrap().is_some());
        assert!(
            tag::Model::find_by_id(db, born_away)
                .await
                .unwrap()
                .is_some(),
            "b's tag from while it was away reached {}",
            n.dev.id
        );
    }
    let content = net.nodes[0].dev.content().await;
    for n in &net.nodes {
        assert_eq!(n.dev.content().await, content);
        assert_eq!(n.dev.engine.parked_len(), 0, "nothing waits for ever");
    }
}

/// A heartbeat carries the reports the peer was not sent yet: none while
/// nothing changes, the writer's own once it writes, every one again each
/// `FULL_HEARTBEAT_EVERY` heartbeats (whatever the peer missed).
#[tokio::test]
async fn heartbeats_carry_only_the_reports_a_peer_lacks() {
    let mut net = line_of_three().await;
    net.run(10_000).await;
    // Two rounds: b hears of c, then tells a.
    for _ in 0..2 {
        net.heartbeats();
        net.run(10_000).await;
    }
    let c = net.nodes[2].dev.id;
    let b_to_a = |net: &mut Net| net.nodes[1].sessions.get_mut(&0).unwrap().heartbeat();
    let first = match b_to_a(&mut net) {
        Message::Heartbeat(h) => h.held,
        other => panic!("not a heartbeat: {other:?}"),
    };
    assert!(first.is_empty(), "nothing changed since: {first:?}");

    let mut tx = net.nodes[2].dev.engine.begin().await.unwrap();
    tx.insert(common::new_tag("new")).await.unwrap();
    let created = tx.commit().await.unwrap();
    let c_origin = created[0].origin;
    net.committed(2, created);
    net.run(10_000).await;
    for _ in 0..2 {
        net.heartbeats();
        net.run(10_000).await;
    }
    let held_of_c = |beat: &Message| match beat {
        Message::Heartbeat(h) => h
            .held
            .iter()
            .map(|r| (r.device, r.vector(&h.vector).get(c_origin)))
            .collect::<Vec<_>>(),
        other => panic!("not a heartbeat: {other:?}"),
    };
    let after = held_of_c(&b_to_a(&mut net));
    assert!(
        after.is_empty(),
        "a got b's and c's new reports already: {after:?}"
    );
    // Until the next full heartbeat, nothing more; then every report, each
    // holding c's write.
    let mut full = Vec::new();
    for _ in 0..sync_core::FULL_HEARTBEAT_EVERY {
        full = held_of_c(&b_to_a(&mut net));
        if !full.is_empty() {
            break;
        }
    }
    let b = net.nodes[1].dev.id;
    full.sort();
    let mut expected = vec![(b, 1), (c, 1)];
    expected.sort();
    assert_eq!(full, expected, "a is not told of itself");
}

/// Between full heartbeats a heartbeat carries its vector as the
/// difference from the one sent whole last, and the receiver rebuilds it
/// exactly; a difference from a vector the receiver did not hear whole
/// tells it nothing.
#[tokio::test]
async fn heartbeats_between_full_ones_carry_the_vectors_difference() {
    let mut net = line_of_three().await;
    net.run(10_000).await;
    let b_to_a = |net: &mut Net| match net.nodes[1].sessions.get_mut(&0).unwrap().heartbeat() {
        Message::Heartbeat(h) => h,
        other => panic!("not a heartbeat: {other:?}"),
    };
    let mut full = b_to_a(&mut net);
    for _ in 0..sync_core::FULL_HEARTBEAT_EVERY {
        if full.since.is_none() {
            break;
        }
        full = b_to_a(&mut net);
    }
    assert!(full.since.is_none(), "a full heartbeat comes round");
    assert_eq!(full.vector, net.nodes[1].dev.engine.vector());
    let quiet = b_to_a(&mut net);
    let since = quiet.since.clone().expect("the next one is a difference");
    assert!(quiet.vector.is_empty());
    assert_eq!(since.base, sync_core::vector_digest(&full.vector));
    assert!(since.differs.is_empty(), "nothing changed: {since:?}");

    let mut tx = net.nodes[2].dev.engine.begin().await.unwrap();
    tx.insert(common::new_tag("grown")).await.unwrap();
    let created = tx.commit().await.unwrap();
    let (c_origin, c_seq) = (created[0].origin, created[0].seq);
    net.committed(2, created);
    net.run(10_000).await;
    let grown = b_to_a(&mut net);
    let differs = grown.since.clone().expect("still a difference").differs;
    assert_eq!(differs, vec![(c_origin, c_seq)]);

    // a rebuilds b's vector from the full heartbeat and the difference.
    let b = net.nodes[1].dev.id;
    let b_vector = net.nodes[1].dev.engine.vector();
    let a_from_b = net.nodes[0].sessions.get_mut(&1).unwrap();
    a_from_b
        .handle(Message::Heartbeat(full.clone()))
        .await
        .unwrap();
    a_from_b
        .handle(Message::Heartbeat(grown.clone()))
        .await
        .unwrap();
    assert_eq!(
        net.nodes[0].dev.engine.peer_vector(b),
        Some(b_vector.clone())
    );
    // A difference from a vector a never heard whole changes nothing.
    let mut stray = grown;
    if let Some(s) = stray.since.as_mut() {
        s.base = [7; 32];
        s.differs = vec![(c_origin, 1_000_000)];
    }
    let a_from_b = net.nodes[0].sessions.get_mut(&1).unwrap();
    a_from_b.handle(Message::Heartbeat(stray)).await.unwrap();
    assert_eq!(net.nodes[0].dev.engine.peer_vector(b), Some(b_vector));
}

#[tokio::test]
async fn membership_records_lost_on_the_way_are_sent_again() {
    let mut net = net_of(3, 7).await;
    net.connect(0, 1).await;
    assert!(net.settle(1).await);
    net.gossip(2).await;
    let removed = net.nodes[2].dev.id;
    net.nodes[0].dev.engine.remove(removed).await.unwrap();
    // The heartbeats cross; the records device 0 answers with are lost.
    net.heartbeats();
    assert!(net.step().await);
    assert!(net.step().await);
    net.faults.drop = 1.0;
    net.run(1_000).await;
    net.faults.drop = 0.0;
    assert!(!net.nodes[1].dev.engine.is_removed(removed));
    // The same disagreement outlasts a full heartbeat: everything goes
    // again, and device 1 learns of the removal.
    net.gossip(sync_core::FULL_HEARTBEAT_EVERY as usize + 2)
        .await;
    assert!(net.nodes[1].dev.engine.is_removed(removed));
    assert_eq!(
        net.nodes[0].dev.engine.members_digest(),
        net.nodes[1].dev.engine.members_digest()
    );
}

/// A session of `d` with `peer`, past a hello from a peer holding nothing
/// that needs no backfill.
async fn greeted(d: &Device, peer: Uuid) -> Session {
    let mut session = Session::new(d.engine.clone(), SessionConfig::new(LIBRARY));
    session
        .handle(Message::Hello(Hello {
            device: peer,
            library: LIBRARY,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            vector: Default::default(),
            needs_backfill: false,
            members: [0; 32],
        }))
        .await
        .unwrap();
    session
}

/// A device that holds an origin's numbers but cannot prove the next one a
/// peer lacks (neither its change, nor a state, nor a husk is here) tells
/// the peer to resync. It answered with nothing before, and the peer asked
/// again for ever, catching up (the simulation, 3 devices, seed 56 of every
/// fault).
#[tokio::test]
async fn numbers_held_without_proof_send_the_peer_to_a_snapshot() {
    use sea_orm::ConnectionTrait;
    let a = device(1).await;
    let b = device(2).await;
    a.engine.pair(b.id).await.unwrap();
    let mut origin = Uuid::nil();
    for name in ["one", "two", "three"] {
        let mut tx = a.engine.begin().await.unwrap();
        tx.insert(common::new_tag(name)).await.unwrap();
        origin = tx.commit().await.unwrap()[0].origin;
    }
    // The second change goes from the log, its number still held.
    a.engine
        .database()
        .execute_unprepared("DELETE FROM _sync_log WHERE seq = 2")
        .await
        .unwrap();

    let mut session = greeted(&a, b.id).await;
    let mut vector = sync_core::VersionVector::new();
    vector.advance(origin, 1);
    let out = session
        .handle(Message::PullRequest(sync_core::PullRequest {
            vector,
            limit: 100,
            ahead: Vec::new(),
        }))
        .await
        .unwrap();
    assert!(
        out.send
            .iter()
            .any(|m| matches!(m, Message::Error(e) if e.code == ErrorCode::ResyncRequired)),
        "{:?}",
        out.send
    );
}
