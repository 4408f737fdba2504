//! Change numbers are never reused, whatever happens to a device's files: a
//! power loss that rolls back its last commits, a backup restored, a data
//! directory copied and run twice. And every write goes through one writer:
//! a pool of connections never meets a busy database, and an open
//! transaction never deadlocks the engine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::sim::Net;
use common::{Device, device, device_at, membership, tag, volume};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use sync_core::__private::steps;
use sync_core::clock::ManualTime;
use sync_core::{EngineError, ErrorCode, PullRequest, SnapshotRequest, SyncModel};
use uuid::Uuid;

use common::new_tag;

async fn write_tags(net: &mut Net, i: usize, n: usize, prefix: &str) {
    let d = &net.nodes[i].dev;
    let mut tx = d.engine.begin().await.unwrap();
    for k in 0..n {
        tx.insert(new_tag(&format!("{prefix}{k}"))).await.unwrap();
    }
    let changes = tx.commit().await.unwrap();
    net.committed(i, changes);
}

/// Whether the volume `vol` is shown in `db`.
async fn has_volume(db: &sea_orm::DatabaseConnection, vol: Uuid) -> bool {
    volume::Model::find_by_id(db, vol).await.unwrap().is_some()
}

/// A new volume `id` of `device`, to insert.
fn new_volume(id: Uuid, device: Uuid) -> volume::ActiveModel {
    volume::ActiveModel {
        gid: Set(id),
        device: Set(device),
        name: Set("disk".into()),
        capacity: Set(None),
        is_online: Set(true),
        ..Default::default()
    }
}

/// A volume owned by device `i`, committed and pushed; its id.
async fn write_volume(net: &mut Net, i: usize) -> Uuid {
    let mut tx = net.nodes[i].dev.engine.begin().await.unwrap();
    let vol = tx
        .insert(new_volume(Uuid::new_v4(), net.nodes[i].dev.id))
        .await
        .unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(i, c);
    vol.gid
}

/// Renames a volume on device `i`, committed and pushed.
async fn rename_volume(net: &mut Net, i: usize, vol: Uuid, name: &str) {
    let d = &net.nodes[i].dev;
    let mut tx = d.engine.begin().await.unwrap();
    let mut row = volume::Model::find_by_id(tx.connection(), vol)
        .await
        .unwrap()
        .unwrap();
    row.name = name.into();
    tx.update(row).await.unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(i, c);
}

/// Device `a`'s files (its database and the earlier copy a restore puts
/// back) and its clock; the directory goes when this does.
struct Restorable {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    copy: std::path::PathBuf,
    time: ManualTime,
}

/// A network of device `a` (index 0, over a file it can be restored from)
/// and `others` more devices in memory.
async fn net_with_restorable(others: u128, seed: u64) -> (Restorable, Net) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.sqlite");
    let copy = dir.path().join("a-earlier.sqlite");
    let time = ManualTime::new(common::EPOCH);
    let mut devices = vec![device_at(&path, 1, time.clone()).await];
    for n in 2..=others + 1 {
        devices.push(device(n).await);
    }
    (
        Restorable {
            _dir: dir,
            path,
            copy,
            time,
        },
        Net::new(devices, seed),
    )
}

/// A connected network of `a` (restorable) and `others`, where `a` wrote
/// a volume every device holds, and its files were copied then; the
/// volume's id.
async fn volume_saved_for_restore(others: u128, seed: u64) -> (Restorable, Net, Uuid) {
    let (r, mut net) = net_with_restorable(others, seed).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    assert!(net.settle(3).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    (r, net, vol)
}

/// Deletes a volume on device `i`, committed and pushed.
async fn delete_volume(net: &mut Net, i: usize, vol: Uuid) {
    let mut tx = net.nodes[i].dev.engine.begin().await.unwrap();
    assert!(tx.delete::<volume::Model>(vol).await.unwrap());
    let c = tx.commit().await.unwrap();
    net.committed(i, c);
}

/// A consistent copy of a device's database as it is now (a backup, or
/// what a power loss would leave of it if the commits after now were lost).
async fn snapshot(d: &Device, to: &Path) {
    d.engine
        .database()
        .execute_unprepared(&format!("VACUUM INTO '{}'", to.display()))
        .await
        .unwrap();
}

/// Replaces a device's database file by an earlier copy and reopens it.
async fn restore(net: &mut Net, i: usize, files: &Restorable, n: u128) {
    let (path, copy) = (&files.path, &files.copy);
    net.disconnect(i);
    let time = net.nodes[i].dev.time.clone();
    // Drop the old engine and close its database before the files change.
    let old = std::mem::replace(&mut net.nodes[i].dev, device(90 + i as u128).await);
    old.engine.database().clone().close().await.unwrap();
    drop(old);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::copy(copy, path).unwrap();
    net.nodes[i].dev = device_at(path, n, time).await;
    net.nodes[i].online = true;
}

/// Every device's clock a minute on, then each collects tombstones with a
/// horizon of zero; what each collected.
async fn collect_everywhere(net: &Net) -> Vec<sync_core::Collected> {
    let mut out = Vec::with_capacity(net.nodes.len());
    for n in &net.nodes {
        n.dev.time.advance(Duration::from_secs(60));
        out.push(
            n.dev
                .engine
                .collect_tombstones(Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    out
}

/// Device `a` (restorable, copied after its volume reached every device)
/// deletes the volume, and every device collects the delete: the network,
/// the files and the volume.
async fn volume_deleted_and_collected(seed: u64) -> (Restorable, Net, Uuid) {
    let (r, mut net, vol) = volume_saved_for_restore(1, seed).await;
    net.nodes[0].dev.time.advance(Duration::from_millis(5));
    delete_volume(&mut net, 0, vol).await;
    net.gossip(3).await;
    for c in collect_everywhere(&net).await {
        assert_eq!(c.owned, 1, "every device held the delete");
    }
    (r, net, vol)
}

/// The volume is deleted on every device, and the first two agree.
async fn assert_volume_stays_deleted(net: &Net, vol: Uuid) {
    for n in &net.nodes {
        assert!(
            !has_volume(n.dev.engine.database(), vol).await,
            "the volume stays deleted"
        );
    }
    assert_eq!(
        net.nodes[0].dev.engine.vector(),
        net.nodes[1].dev.engine.vector()
    );
}

/// The id of the first tag a device holds.
async fn first_tag(d: &Device) -> Uuid {
    tag::Entity::find()
        .one(d.engine.database())
        .await
        .unwrap()
        .unwrap()
        .gid
}

/// A tag written by device `a` (index 0) and held by every device, then
/// the copy `a` can go back to; the tag's id.
async fn doomed_tag(net: &mut Net, r: &Restorable) -> Uuid {
    write_tags(net, 0, 1, "doomed").await;
    assert!(net.settle(3).await);
    let gid = first_tag(&net.nodes[1].dev).await;
    snapshot(&net.nodes[0].dev, &r.copy).await;
    gid
}

/// Device `i` deletes a tag a little later, committed and pushed.
async fn delete_tag(net: &mut Net, i: usize, gid: Uuid) {
    net.nodes[i].dev.time.advance(Duration::from_millis(5));
    let mut tx = net.nodes[i].dev.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(gid).await.unwrap());
    let c = tx.commit().await.unwrap();
    net.committed(i, c);
}

/// A tag written by device `a` (index 0, restorable, copied while it held
/// the tag) and deleted by `b`; every device collects the delete and
/// prunes its log: the network, the files and the tag's id.
async fn tag_deleted_collected_and_pruned(seed: u64) -> (Restorable, Net, Uuid) {
    let (r, mut net) = net_with_restorable(1, seed).await;
    net.pair_all().await;
    net.connect_all().await;
    let gid = doomed_tag(&mut net, &r).await;
    delete_collect_and_prune(&mut net, gid).await;
    (r, net, gid)
}

/// Device `b` deletes a tag; every device collects the delete and prunes
/// its log.
async fn delete_collect_and_prune(net: &mut Net, gid: Uuid) {
    delete_tag(net, 1, gid).await;
    net.gossip(3).await;
    for c in collect_everywhere(net).await {
        assert_eq!(c.shared, 1, "every device held the delete");
    }
    for n in &net.nodes {
        n.dev.engine.flush_peers().await.unwrap();
        n.dev.engine.prune().await.unwrap();
        assert_eq!(n.dev.engine.status().log_len, 0, "every peer acknowledged");
    }
}

/// Device `i` recolours a tag, committed and pushed.
async fn recolour_tag(net: &mut Net, i: usize, gid: Uuid) {
    let mut tx = net.nodes[i].dev.engine.begin().await.unwrap();
    let mut row = tag::Model::find_by_id(tx.connection(), gid)
        .await
        .unwrap()
        .unwrap();
    row.color = Some("red".into());
    tx.update(row).await.unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(i, c);
}

/// Asserts that no device shows the tag `name`.
async fn assert_tag_gone(net: &Net, name: &str) {
    for (i, n) in net.nodes.iter().enumerate() {
        assert!(
            !tag_names(&n.dev).await.contains(name),
            "the tag stays deleted (device {i})"
        );
    }
}

/// Asserts that devices `a` and `b` (0 and 1) show the same tags and hold
/// the same vector.
async fn assert_a_and_b_agree(net: &Net) {
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    assert_eq!(tag_names(a).await, tag_names(b).await);
    assert_eq!(a.engine.vector(), b.engine.vector());
}

async fn tag_names(d: &Device) -> std::collections::BTreeSet<String> {
    tag::Entity::find()
        .all(d.engine.database())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// A device whose database went back to an earlier state (a power loss
/// under synchronous=NORMAL, or a restored backup) starts a new incarnation:
/// what it writes next is never taken for a change its peers hold, and the
/// changes it lost come back from the peers that have them.
#[tokio::test]
async fn a_device_restored_to_an_earlier_state_reuses_no_number_and_gets_its_changes_back() {
    let (r, mut net) = net_with_restorable(1, 101).await;
    net.pair_all().await;
    net.connect_all().await;
    write_tags(&mut net, 0, 5, "before").await;
    assert!(net.settle(2).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    let first_origin = net.nodes[0].dev.engine.origin();

    // Written after the copy: lost by a's files, held by b.
    write_tags(&mut net, 0, 5, "lost").await;
    assert!(net.settle(2).await);
    assert_eq!(tag_names(&net.nodes[1].dev).await.len(), 10);

    restore(&mut net, 0, &r, 1).await;
    let a = &net.nodes[0].dev;
    assert_eq!(
        tag_names(a).await.len(),
        5,
        "the last commits are gone here"
    );
    assert_ne!(a.engine.origin(), first_origin, "a new incarnation");
    // a writes again before it meets anyone: new numbers, new origin.
    write_tags(&mut net, 0, 3, "after").await;

    net.connect_all().await;
    assert!(net.settle(3).await);
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    let names = tag_names(a).await;
    assert_eq!(
        names.len(),
        13,
        "nothing any device held is lost: {names:?}"
    );
    assert_eq!(names, tag_names(b).await);
    assert!(names.contains("lost4") && names.contains("after2"));
    assert_eq!(
        a.engine.vector().get(first_origin),
        10,
        "its lost changes came back as anyone's would"
    );
    assert_eq!(b.engine.vector().get(a.engine.origin()), 3);
}

/// A device serving a snapshot page by page whose database goes back in
/// the middle (a power loss, a restored backup) does not serve the rest
/// under the old snapshot's vector, which it no longer holds: the new
/// device would adopt numbers without their rows. It starts the snapshot
/// over, and the new device ends with what the server holds, no more.
#[tokio::test]
async fn a_snapshot_whose_server_went_back_is_started_over() {
    let (r, mut net) = net_with_restorable(1, 103).await;
    write_tags(&mut net, 0, 4, "kept").await;
    snapshot(&net.nodes[0].dev, &r.copy).await;
    write_tags(&mut net, 0, 4, "lost").await;
    let held = net.nodes[0].dev.engine.vector();

    // b's backfill from a, a row a page: the first page before a goes back.
    let mut request = steps::backfill_request(&net.nodes[1].dev.engine, 1);
    let first = steps::serve_snapshot(&net.nodes[0].dev.engine, &request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.vector, held);
    request.cursor = first.next.clone();
    let (_, done) = steps::apply_snapshot(&net.nodes[1].dev.engine, first)
        .await
        .unwrap();
    assert!(!done);

    restore(&mut net, 0, &r, 1).await;
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    assert!(!a.engine.vector().covers(&held), "a went back");
    let mut pages = 0;
    loop {
        let page = steps::serve_snapshot(&a.engine, &request)
            .await
            .unwrap()
            .unwrap();
        if pages == 0 {
            assert_eq!(
                page.done,
                page.rows.len() as u64,
                "the snapshot starts over"
            );
        }
        assert_eq!(
            page.vector,
            a.engine.vector(),
            "a's vector now, not the old one"
        );
        pages += 1;
        request.cursor = page.next.clone();
        let (_, done) = steps::apply_snapshot(&b.engine, page).await.unwrap();
        if done {
            break;
        }
        assert!(pages < 100, "the snapshot ends");
    }
    assert!(!b.engine.needs_backfill());
    assert_eq!(b.engine.vector(), a.engine.vector());
    for name in tag_names(a).await {
        assert!(tag_names(b).await.contains(&name), "{name} reached b");
    }
}

/// A device serving a snapshot that opens again mid-way (a new
/// incarnation: its database may have gone back) starts the snapshot over,
/// though its vector still holds the snapshot's: pages already served may
/// carry writes made after the vector was fixed, which it lost, and which
/// the last page's changes would no longer bring. The new device forgets
/// them with the snapshot given up. (It kept them, alone: the simulation,
/// 5 devices, seed 133 of every fault.)
#[tokio::test]
async fn a_snapshot_whose_server_opened_again_is_started_over() {
    let (r, mut net) = net_with_restorable(1, 120).await;
    write_tags(&mut net, 0, 2, "kept").await;
    // b's first page fixes the vector; a's files are copied then.
    assert!(!next_page(&net, 0, 1).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // a writes a tag after the vector was fixed (the greatest id: its page
    // comes after the cursor); a page brings it to b.
    write_tag_with_id(&mut net, u128::MAX, "lost0").await;
    page_until(&net, async |b| tag_names(b).await.contains("lost0")).await;
    assert!(tag_names(&net.nodes[1].dev).await.contains("lost0"));

    // a goes back to the copy: the tag is lost, the vector still held.
    restore(&mut net, 0, &r, 1).await;
    assert!(!tag_names(&net.nodes[0].dev).await.contains("lost0"));
    while !next_page(&net, 0, 1).await {}
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    assert_eq!(
        tag_names(b).await,
        tag_names(a).await,
        "b holds what a holds"
    );
    assert_eq!(b.engine.vector(), a.engine.vector());
}

/// A tag `name` with the id `id` (chosen for where its snapshot page
/// falls), committed on device `a` (index 0) and pushed.
async fn write_tag_with_id(net: &mut Net, id: u128, name: &str) -> tag::Model {
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    let tag = tx
        .insert(tag::ActiveModel {
            gid: Set(Uuid::from_u128(id)),
            ..new_tag(name)
        })
        .await
        .unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    tag
}

/// a and b paired, a holding two tags and `name`, whose id is the
/// greatest (its row comes after the cursor); b's backfill from a past its
/// first page, which fixed the snapshot's vector; a's files copied then.
async fn tag_after_the_cursor(net: &mut Net, r: &Restorable, name: &str) -> tag::Model {
    net.pair_all().await;
    write_tags(net, 0, 2, "kept").await;
    let tag = write_tag_with_id(net, u128::MAX, name).await;
    assert!(!next_page(net, 0, 1).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    tag
}

/// b wrote under its own incarnation (what it held that no device could
/// serve); then a and b, connected, converge.
async fn wrote_again_then_converged(net: &mut Net) {
    let b = &net.nodes[1].dev;
    assert!(
        b.engine.vector().get(b.engine.origin()) > 0,
        "b wrote: {:?}",
        b.engine.vector()
    );
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
}

/// A delete that a snapshot given up brought, whose server lost it (a
/// power loss) and which no other device took, is written again by the
/// device that holds it once its next snapshot completes: no device could
/// serve it as a change, so the record stayed deleted there and present
/// everywhere else (the simulation, 3 devices, seeds 71 and 532 of every
/// fault; or, held as a tombstone everywhere, never collected: seed 217).
#[tokio::test]
async fn a_delete_only_a_given_up_snapshot_brought_is_written_again() {
    let (r, mut net) = net_with_restorable(1, 121).await;
    let doomed = tag_after_the_cursor(&mut net, &r, "doomed").await.gid;
    // a deletes the tag, and a page brings the tombstone to b.
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(doomed).await.unwrap());
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    page_until(&net, async |b| {
        !tag_names(b).await.contains("doomed")
            && steps::describe_record(&b.engine, "tags", doomed)
                .await
                .unwrap()
                .starts_with("Deleted")
    })
    .await;

    // a goes back to the copy: the delete is lost there, and the snapshot
    // starts over; its rows bring the tag as a's copy holds it.
    restore(&mut net, 0, &r, 1).await;
    assert!(tag_names(&net.nodes[0].dev).await.contains("doomed"));
    while !next_page(&net, 0, 1).await {}
    let b = &net.nodes[1].dev;
    assert!(
        !tag_names(b).await.contains("doomed"),
        "the tombstone beats the older row"
    );
    // b wrote the delete again, under its own number.
    wrote_again_then_converged(&mut net).await;
    assert_tag_gone(&net, "doomed").await;
    assert_a_and_b_agree(&net).await;
    net.gossip(4).await;
    for (i, collected) in collect_everywhere(&net).await.iter().enumerate() {
        assert_eq!(collected.shared, 1, "device {i} collects the tombstone");
    }
}

/// A device-owned delete that reached a device only as a row of a
/// snapshot given up, whose owner then lost the record to a power loss,
/// is a tombstone whose number no device will ever hold: it is collected
/// all the same once every member is known to lack that number. (It was
/// kept for ever, waiting for every member to hold it: the simulation, 3
/// devices, seed 172 of every fault with `shuffle`.)
#[tokio::test]
async fn a_device_owned_delete_whose_number_no_device_holds_is_collected() {
    let (r, mut net) = net_with_restorable(1, 127).await;
    net.pair_all().await;
    // a's files before any write: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    write_tags(&mut net, 0, 2, "lost").await;
    let vol = write_volume(&mut net, 0).await;
    delete_volume(&mut net, 0, vol).await;
    let b = net.nodes[1].dev.engine.clone();
    page_until(&net, async |b| {
        steps::describe_record(&b.engine, "volumes", vol)
            .await
            .unwrap()
            .starts_with("Deleted")
    })
    .await;

    // a loses everything; b's backfill starts over from a and completes
    // (empty), keeping the volume's tombstone.
    restore(&mut net, 0, &r, 1).await;
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    assert!(!b.needs_backfill());
    assert!(
        steps::describe_record(&b, "volumes", vol)
            .await
            .unwrap()
            .starts_with("Deleted"),
        "b keeps the tombstone, whose number no device holds"
    );
    net.gossip(4).await;
    let collected = collect_everywhere(&net).await;
    assert_eq!(collected[1].owned, 1, "b collects it");
    assert_eq!(
        steps::describe_record(&b, "volumes", vol).await.unwrap(),
        "no state"
    );
    assert_a_and_b_agree(&net).await;
}

/// a and b paired, a holding two tags and "ahead", written with a's clock
/// 30 s ahead of b's (bound: 5 s) and with the id that comes first; b's
/// backfill from a past the page that brought "ahead", whose row b holds
/// back; more pages follow. The files, the network and b.
async fn tag_ahead_held_mid_backfill(seed: u64) -> (Restorable, Net, sync_core::Engine) {
    let (r, mut net) = net_with_restorable(1, seed).await;
    net.pair_all().await;
    write_tags(&mut net, 0, 2, "kept").await;
    r.time.advance(Duration::from_secs(30));
    write_tag_with_id(&mut net, 1, "ahead").await;
    page_until(&net, async |b| b.engine.status().held_rows == 1).await;
    let b = net.nodes[1].dev.engine.clone();
    assert!(b.needs_backfill(), "more pages follow");
    (r, net, b)
}

/// A snapshot row held back (its clock ahead) and released while the
/// backfill still runs is not settled with the records the snapshot did
/// not bring: its page brought it. (Released rows were taken for records a
/// change brought mid-backfill, so the last page, which did not bring the
/// record again, had it dropped as deleted elsewhere; the device alone then
/// lacked it: the simulation, 4 devices, seed 183 of every fault.)
#[tokio::test]
async fn a_held_row_released_mid_backfill_is_not_settled_away() {
    let (_r, mut net, b) = tag_ahead_held_mid_backfill(126).await;

    // b's clock catches up mid-backfill: the row is released.
    net.nodes[1].dev.time.advance(Duration::from_secs(32));
    steps::retry_held(&b).await.unwrap();
    assert_eq!(b.status().held_rows, 0);
    assert!(tag_names(&net.nodes[1].dev).await.contains("ahead"));
    while !next_page(&net, 0, 1).await {}
    assert!(
        tag_names(&net.nodes[1].dev).await.contains("ahead"),
        "the released tag is kept"
    );
    converge(&mut net).await;
}

/// A record an earlier page brought as a row held back (its clock ahead),
/// whose creation then comes as a change while the backfill runs, is not
/// settled away when the last page does not bring it again: its page
/// brought it. (It was dropped as deleted on its server, which held it,
/// and the tombstone went on from there to the other devices: the
/// simulation, 4 devices, seed 994 of every fault.)
#[tokio::test]
async fn a_record_paged_as_a_held_row_then_taken_as_a_change_is_not_settled_away() {
    let (_r, mut net, b) = tag_ahead_held_mid_backfill(137).await;
    assert!(!tag_names(&net.nodes[1].dev).await.contains("ahead"));

    // b's clock catches up and it pulls a's changes mid-backfill: the tag
    // comes as a change.
    net.nodes[1].dev.time.advance(Duration::from_secs(32));
    let a = net.nodes[0].dev.engine.clone();
    let answer = steps::serve_pull(
        &a,
        &sync_core::PullRequest {
            vector: b.vector(),
            limit: 100,
            ahead: Vec::new(),
        },
    )
    .await
    .unwrap()
    .unwrap();
    steps::apply_batches(&b, answer.batches).await.unwrap();
    assert!(tag_names(&net.nodes[1].dev).await.contains("ahead"));
    while !next_page(&net, 0, 1).await {}
    assert!(
        tag_names(&net.nodes[1].dev).await.contains("ahead"),
        "the tag its page brought is kept"
    );
    converge(&mut net).await;
}

/// A device that lost its delete of a record it owns (a power loss),
/// wrote to the record again, and then takes the delete back from a peer
/// that still holds it, writes the delete again: a device that collected
/// the delete's tombstone took the new write, and without a new delete
/// showed the record for ever, where the others hid it (a delete beats any
/// write of its record). (The simulation, 3 devices, 600 operations, seed
/// 301 of every fault: an entry.)
#[tokio::test]
async fn a_write_that_loses_to_its_owners_lost_delete_has_the_delete_written_again() {
    let (r, mut net, vol) = volume_saved_for_restore(2, 138).await;
    net.nodes[0].dev.time.advance(Duration::from_millis(5));
    delete_volume(&mut net, 0, vol).await;
    net.gossip(3).await;
    // b alone collects the delete's tombstone; c keeps it.
    net.nodes[1].dev.time.advance(Duration::from_secs(60));
    let b = net.nodes[1].dev.engine.clone();
    assert_eq!(b.collect_tombstones(Duration::ZERO).await.unwrap().owned, 1);

    // a goes back to before the delete and renames the volume twice; b,
    // cut off from c, pulls the second rename (the first left out as
    // superseded), which replaced no write it held.
    restore(&mut net, 0, &r, 1).await;
    net.nodes[0].dev.time.advance(Duration::from_secs(1));
    rename_volume(&mut net, 0, vol, "once").await;
    rename_volume(&mut net, 0, vol, "again").await;
    net.partition(0, 2, true);
    net.partition(1, 2, true);
    net.connect_all().await;
    net.gossip(3).await;
    assert!(has_volume(b.database(), vol).await, "b took the rename");

    // a resyncs from c, takes its delete back from c's snapshot, and
    // writes it again.
    let (a, c) = (
        net.nodes[0].dev.engine.clone(),
        net.nodes[2].dev.engine.clone(),
    );
    steps::restart_backfill(&a, false).await.unwrap();
    backfill_whole(&c, &a).await;
    assert!(
        !has_volume(a.database(), vol).await,
        "the delete beats the rename"
    );
    net.partition(0, 2, false);
    net.partition(1, 2, false);
    net.connect_all().await;
    assert!(net.settle(10).await, "the three converge");
    assert_volume_stays_deleted(&net, vol).await;
}

/// A delete that a snapshot given up brought as a row held back (its
/// clock ahead), whose server lost it (a power loss), is written again when
/// the row is released after the next snapshot completed: released then,
/// it hid the record on that device alone, and no device could serve the
/// delete as a change (the simulation, 3 devices, seed 671 of every fault).
#[tokio::test]
async fn a_held_delete_released_after_the_backfill_is_written_again() {
    let (r, mut net) = net_with_restorable(1, 123).await;
    let doomed = tag_after_the_cursor(&mut net, &r, "doomed").await.gid;
    // a, its clock 30 s ahead of b's (bound: 5 s), deletes the tag; a page
    // brings the tombstone to b, which holds it back.
    r.time.advance(Duration::from_secs(30));
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(doomed).await.unwrap());
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    page_until(&net, async |b| b.engine.status().held_rows == 1).await;

    // a goes back to the copy: the delete is lost there; the snapshot
    // starts over and completes, bringing the tag; b still holds the
    // tombstone back.
    restore(&mut net, 0, &r, 1).await;
    while !next_page(&net, 0, 1).await {}
    let b = net.nodes[1].dev.engine.clone();
    assert_eq!(b.status().held_rows, 1, "b still holds the tombstone back");
    assert!(tag_names(&net.nodes[1].dev).await.contains("doomed"));

    // b's clock catches up: the tombstone is released, and b writes the
    // delete again, under its own number, so that a takes it too.
    net.nodes[1].dev.time.advance(Duration::from_secs(32));
    steps::retry_held(&b).await.unwrap();
    assert!(!tag_names(&net.nodes[1].dev).await.contains("doomed"));
    wrote_again_then_converged(&mut net).await;
    assert_eq!(b.status().held_rows, 0);
    assert_tag_gone(&net, "doomed").await;
    assert_a_and_b_agree(&net).await;
}

/// A backfill whose server lost everything (a power loss back to before
/// its first write) is not ended by that server's hello, which holds no
/// data, as a library's first device would end it: the new device asks it
/// again, the snapshot starts over (empty), and what the pages given up
/// brought, which no device holds any more, is forgotten. (Taking the hello
/// as a library's first, the new device kept those pages' rows, under no
/// vector, and alone showed them: the simulation, 3 devices, seed 671 of
/// every fault.) A resync, or a backfill served by another peer, is not
/// ended either: such a peer is only pulled from.
#[tokio::test]
async fn a_hello_holding_nothing_does_not_end_a_backfill_under_way() {
    let (r, mut net) = net_with_restorable(1, 124).await;
    net.pair_all().await;
    // a's files as they are before any write: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    write_tags(&mut net, 0, 3, "lost").await;
    assert!(!next_page(&net, 0, 1).await);
    let b = net.nodes[1].dev.engine.clone();
    assert_eq!(
        tag_names(&net.nodes[1].dev).await.len(),
        1,
        "one page taken"
    );

    restore(&mut net, 0, &r, 1).await;
    assert!(tag_names(&net.nodes[0].dev).await.is_empty());
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    assert!(!b.needs_backfill(), "the backfill completed");
    let names = tag_names(&net.nodes[1].dev).await;
    assert!(names.is_empty(), "the lost tags are forgotten: {names:?}");
    assert_eq!(b.vector(), net.nodes[0].dev.engine.vector());
}

/// A backfill restarted (a peer said it must resync) after pages of its
/// snapshot were applied forgets, when the next snapshot starts, what those
/// pages brought that no device may hold, as a backfill moving to another
/// peer does. (It started over as a new device's, and kept a creation its
/// writer had lost to a power loss, under no vector, and served it on: the
/// simulation, 3 devices, seed 51 of every fault with 600 operations.)
#[tokio::test]
async fn a_restarted_backfill_forgets_what_its_given_up_pages_brought() {
    let (r, mut net) = net_with_restorable(1, 130).await;
    net.pair_all().await;
    // a's files as they are before any write: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    write_tags(&mut net, 0, 3, "lost").await;
    assert!(!next_page(&net, 0, 1).await);
    let b = net.nodes[1].dev.engine.clone();
    assert_eq!(
        tag_names(&net.nodes[1].dev).await.len(),
        1,
        "one page taken"
    );

    // b is told to resync; a loses its writes; b's next snapshot is a's,
    // holding nothing.
    steps::restart_backfill(&b, false).await.unwrap();
    restore_and_backfill(&mut net, &r, &b).await;
    let names = tag_names(&net.nodes[1].dev).await;
    assert!(names.is_empty(), "the lost tags are forgotten: {names:?}");
    converge(&mut net).await;
}

/// A device-owned update that pages of a snapshot given up brought is
/// forgotten, as a creation is, when the change it replaced is unheld too:
/// its owner may have lost both (a power loss), and no change would ever
/// replace it. (It was kept as an update, and two devices showed a volume
/// its owner had created, renamed, deleted and lost: the simulation, 3
/// devices, 600 operations, seeds 53 and 192 of every fault.)
#[tokio::test]
async fn a_given_up_update_whose_replaced_change_is_unheld_is_forgotten() {
    let (r, mut net) = net_with_restorable(1, 132).await;
    net.pair_all().await;
    // a's files as they are before the volume: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    let vol = write_volume(&mut net, 0).await;
    rename_volume(&mut net, 0, vol, "renamed").await;
    page_until(&net, async |d| has_volume(d.engine.database(), vol).await).await;
    let b = net.nodes[1].dev.engine.clone();

    // b is told to resync; a loses the volume; b's next snapshot is a's,
    // holding nothing of it.
    steps::restart_backfill(&b, false).await.unwrap();
    restore_and_backfill(&mut net, &r, &b).await;
    assert!(
        !has_volume(net.nodes[1].dev.engine.database(), vol).await,
        "the renamed volume is forgotten"
    );
    converge(&mut net).await;
}

/// A record a backfill forgot (pages of a snapshot given up brought an
/// update to it that no device may hold) is taken again from the next
/// snapshot, even though this device took its creation before: with the
/// state forgotten, the creation's number in the vector proves no delete
/// taken and collected. (The row was refused as of a deleted record, and
/// the entries that referred to the location waited for ever: the
/// simulation, 3 devices, 600 operations, seed 33 of every fault.)
#[tokio::test]
async fn a_record_a_backfill_forgot_is_taken_again_from_the_next_snapshot() {
    let (r, mut net) = net_with_restorable(1, 133).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    assert!(net.settle(10).await);
    assert!(has_volume(net.nodes[1].dev.engine.database(), vol).await);
    net.disconnect(0);
    // a's files with the volume as b took it: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    rename_volume(&mut net, 0, vol, "once").await;
    rename_volume(&mut net, 0, vol, "twice").await;

    // b resyncs from a, and takes the second rename from a page.
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    let named = async |d: &Device| {
        volume::Model::find_by_id(d.engine.database(), vol)
            .await
            .unwrap()
            .is_some_and(|v| v.name == "twice")
    };
    page_until(&net, named).await;

    // a loses both renames; its new snapshot holds the volume as created.
    restore_and_backfill(&mut net, &r, &b).await;
    let on_b = volume::Model::find_by_id(b.database(), vol).await.unwrap();
    assert_eq!(
        on_b.map(|v| v.name),
        Some("disk".to_owned()),
        "b holds the volume as a does"
    );
    converge(&mut net).await;
}

/// A device that lost a write to a record it owns (a power loss) and takes
/// it back as a peer's snapshot row, whose number no device holds, writes
/// it again as its own: no device could serve it as a change, and a device
/// that never took the row kept the older state for ever. (The simulation,
/// 3 devices, 600 operations, seed 147 of every fault: a location's
/// update, back on its owner, older on a third device.)
#[tokio::test]
async fn an_owners_lost_write_taken_back_from_a_snapshot_is_written_again() {
    let (r, mut net) = net_with_restorable(1, 134).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    assert!(net.settle(10).await);
    // a's files with the volume as created: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    net.disconnect(0);
    rename_volume(&mut net, 0, vol, "again").await;
    // The rename as a row of a's whole library, in one page.
    let a = net.nodes[0].dev.engine.clone();
    let whole = SnapshotRequest {
        cursor: None,
        limit: 1000,
    };
    let mut page = steps::serve_snapshot(&a, &whole).await.unwrap().unwrap();
    assert!(page.next.is_none(), "one page");

    // a loses the rename, then takes the row back from a snapshot whose
    // vector does not hold it (its server had it as a state only).
    restore(&mut net, 0, &r, 1).await;
    let a = net.nodes[0].dev.engine.clone();
    page.vector = a.vector();
    page.changes.clear();
    page.pruned.clear();
    steps::apply_snapshot(&a, page).await.unwrap();
    let name = async |d: &Device| {
        volume::Model::find_by_id(d.engine.database(), vol)
            .await
            .unwrap()
            .map(|v| v.name)
    };
    assert_eq!(name(&net.nodes[0].dev).await.as_deref(), Some("again"));

    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    assert_eq!(
        name(&net.nodes[1].dev).await.as_deref(),
        Some("again"),
        "b takes the rename, written again"
    );
    assert_a_and_b_agree(&net).await;
}

/// A record a device creates while its resync runs is settled with those
/// the snapshot brings: a device whose resync went back (a power loss)
/// past its own delete of the record, which its server took and collected
/// since, drops its next write to it when the resync completes, as that
/// write lost to the delete everywhere else. Every snapshot that starts
/// takes the records held then to settle, a resync's too; a resync took
/// them once, when it began, before the record was created. (It kept it,
/// and alone showed the record: the simulation, 4 devices, seed 658 of
/// every fault; 3 devices, seed 114, once records created during a
/// backfill were taken to settle instead.)
#[tokio::test]
async fn a_record_created_during_a_resync_is_settled_with_it() {
    let (r, mut net) = net_with_restorable(1, 131).await;
    net.pair_all().await;
    net.connect_all().await;
    write_tags(&mut net, 1, 3, "kept").await;
    assert!(net.settle(10).await);
    net.disconnect(0);
    net.nodes[0].online = true;
    // a is told to resync; it creates its volume, which b takes, before
    // b's snapshot starts (its vector covers the creation); a's files are
    // copied after the first page.
    let a = net.nodes[0].dev.engine.clone();
    steps::restart_backfill(&a, false).await.unwrap();
    let vol = Uuid::new_v4();
    let mut tx = a.begin().await.unwrap();
    tx.insert(new_volume(vol, net.nodes[0].dev.id))
        .await
        .unwrap();
    let created = tx.commit().await.unwrap();
    net.nodes[1].dev.receive(&created).await;
    assert!(!next_page(&net, 1, 0).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    while !next_page(&net, 1, 0).await {}
    // a deletes the volume; b takes the delete and collects it.
    delete_volume(&mut net, 0, vol).await;
    net.connect_all().await;
    assert!(net.settle(10).await);
    net.gossip(4).await;
    let collected = collect_everywhere(&net).await;
    assert_eq!(collected[1].owned, 1, "b collects the delete");

    // a goes back to mid-resync, the volume present; it renames the volume
    // and completes its resync: the rename lost to the delete.
    restore(&mut net, 0, &r, 1).await;
    assert!(has_volume(net.nodes[0].dev.engine.database(), vol).await);
    rename_volume(&mut net, 0, vol, "again").await;
    while !next_page(&net, 1, 0).await {}
    assert!(
        !has_volume(net.nodes[0].dev.engine.database(), vol).await,
        "the volume is gone on a too"
    );
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    assert!(!has_volume(net.nodes[1].dev.engine.database(), vol).await);
    assert_a_and_b_agree(&net).await;
}

/// A snapshot row of a record this device took and whose delete it
/// collected since is not taken from a server that lost the delete (a
/// power loss), even while this device holds back a row of another record.
/// (Any held row turned the check off, and the record came back on that
/// device alone: the simulation, 4 devices, seed 638 of every fault.)
#[tokio::test]
async fn a_collected_record_does_not_come_back_while_another_row_is_held() {
    let (r, mut net) = net_with_restorable(1, 132).await;
    net.pair_all().await;
    net.connect_all().await;
    let gone = write_tag_with_id(&mut net, u128::MAX, "gone").await.gid;
    assert!(net.settle(10).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // a deletes the tag; both collect the delete.
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(gone).await.unwrap());
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    assert!(net.settle(10).await);
    net.gossip(4).await;
    for collected in collect_everywhere(&net).await {
        assert_eq!(collected.shared, 1, "the delete is collected");
    }

    // a loses the delete; its clock runs 30 s ahead of b's when it writes
    // a tag whose row comes first. b resyncs from a: it holds that row
    // back, and does not take the deleted tag's.
    restore(&mut net, 0, &r, 1).await;
    assert!(tag_names(&net.nodes[0].dev).await.contains("gone"));
    r.time.advance(Duration::from_secs(90));
    write_tag_with_id(&mut net, 1, "ahead").await;
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    while !next_page(&net, 0, 1).await {}
    assert_eq!(b.status().held_rows, 1, "b holds the row ahead back");
    assert!(
        !tag_names(&net.nodes[1].dev).await.contains("gone"),
        "the collected tag does not come back"
    );
    // b's clock catches up; connected, a takes b's word for the delete.
    net.nodes[1].dev.time.advance(Duration::from_secs(92));
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    assert_tag_gone(&net, "gone").await;
    assert_a_and_b_agree(&net).await;
}

/// A record a resyncing device takes as a change after its snapshot
/// started is settled with those it held when it started: `a` went back to
/// before a tag was created; `c` deleted the tag and collected the delete;
/// `a` resyncs from `c`, and, mid-way, pulls the tag's creation from `b`
/// (which still logs it). `c`'s snapshot lacks the tag and its vector
/// covers the creation, so the tag was deleted there: `a` drops it. (It
/// used to keep it, and alone show it: the simulation, 3 devices, seed 472
/// of every fault.)
#[tokio::test]
async fn a_record_taken_as_a_change_during_a_resync_is_settled_with_it() {
    let (r, mut net) = net_with_restorable(2, 125).await;
    net.pair_all().await;
    net.connect_all().await;
    write_tags(&mut net, 0, 3, "kept").await;
    assert!(net.settle(3).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    write_tags(&mut net, 1, 1, "doomed").await;
    assert!(net.settle(3).await);
    let gid = tag::Entity::find()
        .all(net.nodes[0].dev.engine.database())
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == "doomed0")
        .unwrap()
        .gid;
    delete_tag(&mut net, 2, gid).await;
    net.gossip(3).await;
    let c = net.nodes[2].dev.engine.clone();
    net.nodes[2].dev.time.advance(Duration::from_secs(60));
    assert_eq!(
        c.collect_tombstones(Duration::ZERO).await.unwrap().shared,
        1
    );

    // a goes back to before the tag, and resyncs from c.
    restore(&mut net, 0, &r, 1).await;
    let a = net.nodes[0].dev.engine.clone();
    steps::restart_backfill(&a, false).await.unwrap();
    assert!(!next_page(&net, 2, 0).await);
    // Mid-way, a pulls b's own changes: the tag's creation.
    let b = net.nodes[1].dev.engine.clone();
    let answer = steps::serve_pull(
        &b,
        &sync_core::PullRequest {
            vector: a.vector(),
            limit: 100,
            ahead: Vec::new(),
        },
    )
    .await
    .unwrap()
    .unwrap();
    let mine: Vec<_> = answer
        .batches
        .into_iter()
        .filter(|batch| batch.origin == b.origin())
        .collect();
    assert!(!mine.is_empty());
    steps::apply_batches(&a, mine).await.unwrap();
    assert!(tag_names(&net.nodes[0].dev).await.contains("doomed0"));
    while !next_page(&net, 2, 0).await {}
    assert!(
        !tag_names(&net.nodes[0].dev).await.contains("doomed0"),
        "the resync drops the tag"
    );
    net.connect_all().await;
    assert!(net.settle(10).await, "every device converges");
    assert_tag_gone(&net, "doomed0").await;
}

/// A device whose own backfill runs does not serve the rows its pages
/// brought before it holds their numbers: one of them may be a creation
/// whose writer lost it (a power loss) before any device took it as a
/// change, which the serving device forgets when its snapshot starts over,
/// and which would stay on the requester alone, under no vector. (The
/// simulation, 3 devices, seeds 67 and 630 of every fault.) What it holds
/// as changes, its own writes among them, is served.
#[tokio::test]
async fn a_device_that_backfills_serves_no_row_beyond_what_it_holds_as_changes() {
    let (r, mut net) = net_with_restorable(2, 126).await;
    tag_after_the_cursor(&mut net, &r, "lost").await;
    // a writes another tag after the copy; b's next pages bring it as a
    // row, beyond the snapshot's vector. (Its id is the greatest but one:
    // its page comes after the cursor, before the last.)
    write_tag_with_id(&mut net, u128::MAX - 1, "beyond").await;
    page_until(&net, async |b| tag_names(b).await.contains("beyond")).await;

    // b writes a tag of its own; then c's whole backfill comes from b,
    // mid-way through b's.
    write_tags(&mut net, 1, 1, "own").await;
    let c = net.nodes[2].dev.engine.clone();
    backfill_whole(&net.nodes[1].dev.engine, &c).await;
    assert!(!c.needs_backfill());
    let names = tag_names(&net.nodes[2].dev).await;
    assert_eq!(
        names,
        ["own0".to_string()].into(),
        "c takes only what b holds as changes"
    );

    // a goes back to the copy (the tag lost): b's snapshot starts over and
    // forgets it too; every device converges without it.
    restore(&mut net, 0, &r, 1).await;
    while !next_page(&net, 0, 1).await {}
    net.connect_all().await;
    assert!(net.settle(10).await, "every device converges");
    for n in &net.nodes {
        assert!(!tag_names(&n.dev).await.contains("beyond"));
    }
}

/// A row held back (its clock ahead) that a snapshot read after its
/// vector was fixed, whose change came with the last page and was held
/// back too, is not taken once the clock allows if its writer lost the
/// write in the meantime (a power loss): its number is held nowhere, and
/// the change that would bring it never comes. (Taken, it showed the
/// record on that device, and on every device it served, while the writer
/// lacked it: the simulation, 3 devices, seed 830 of every fault.) Nor is
/// it served, while held, to a device whose clock would take it (seed 846).
#[tokio::test]
async fn a_held_row_whose_write_its_writer_lost_is_not_taken() {
    let (r, mut net) = net_with_restorable(2, 127).await;
    net.pair_all().await;
    write_tags(&mut net, 0, 2, "kept").await;
    assert!(!next_page(&net, 0, 1).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // a's clock jumps 30 s ahead of b's (bound: 5 s); a writes a tag whose
    // page comes after the cursor.
    r.time.advance(Duration::from_secs(30));
    write_tag_with_id(&mut net, u128::MAX, "ahead").await;
    while !next_page(&net, 0, 1).await {}
    let b = net.nodes[1].dev.engine.clone();
    assert_eq!(b.status().held_rows, 1, "b holds the row back");
    assert!(!tag_names(&net.nodes[1].dev).await.contains("ahead"));

    // a loses the write. c, its clock as far ahead as a's was, backfills
    // from b, which still holds the row back: it is not served.
    restore(&mut net, 0, &r, 1).await;
    net.nodes[2].dev.time.advance(Duration::from_secs(30));
    let c = net.nodes[2].dev.engine.clone();
    backfill_whole(&b, &c).await;
    assert!(
        !tag_names(&net.nodes[2].dev).await.contains("ahead"),
        "the held row is not served"
    );
    // b's clock catches up.
    net.nodes[1].dev.time.advance(Duration::from_secs(32));
    steps::retry_held(&b).await.unwrap();
    assert_eq!(b.status().held_rows, 0, "the row is released");
    assert!(
        !tag_names(&net.nodes[1].dev).await.contains("ahead"),
        "the row is not taken"
    );
    net.connect_all().await;
    assert!(net.settle(10).await, "the three converge");
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    assert_eq!(tag_names(a).await, tag_names(b).await);
    assert_eq!(tag_names(a).await, tag_names(&net.nodes[2].dev).await);
    assert_eq!(a.engine.vector(), b.engine.vector());
}

/// The shared-update half of the case above: a held row carrying a field
/// update whose writer lost it, of a record the device holds, is taken
/// without that field once the clock allows, and served without it while
/// held. (The device that held it served the update from its own
/// snapshot, and the device served alone showed it: the simulation, 4
/// devices, seed 263 of every fault.)
#[tokio::test]
async fn a_held_field_update_its_writer_lost_is_left_out_of_the_row() {
    let (r, mut net) = net_with_restorable(2, 129).await;
    net.pair_all().await;
    net.connect_all().await;
    write_tags(&mut net, 0, 2, "kept").await;
    let gid = write_tag_with_id(&mut net, u128::MAX, "recoloured")
        .await
        .gid;
    assert!(net.settle(3).await);
    net.disconnect(1);
    net.nodes[1].online = true;
    // b resyncs from a; a's files are copied after the first page.
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    assert!(!next_page(&net, 0, 1).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // a's clock jumps 30 s ahead of b's (bound: 5 s); a recolours the tag,
    // whose page comes last; b holds the row back.
    r.time.advance(Duration::from_secs(30));
    recolour_tag(&mut net, 0, gid).await;
    while !next_page(&net, 0, 1).await {}
    assert_eq!(b.status().held_rows, 1, "b holds the row back");

    // a loses the recolouring. c, its clock as far ahead as a's was,
    // backfills from b, which still holds the row back: the row is served
    // without the colour.
    restore(&mut net, 0, &r, 1).await;
    net.nodes[2].dev.time.advance(Duration::from_secs(30));
    let c = net.nodes[2].dev.engine.clone();
    steps::restart_backfill(&c, false).await.unwrap();
    backfill_whole(&b, &c).await;
    // b's clock catches up: the row is released, the colour left out.
    net.nodes[1].dev.time.advance(Duration::from_secs(32));
    steps::retry_held(&b).await.unwrap();
    assert_eq!(b.status().held_rows, 0, "the row is released");
    for i in 0..3 {
        let colour = tag::Model::find_by_id(net.nodes[i].dev.engine.database(), gid)
            .await
            .unwrap()
            .map(|t| t.color);
        assert_eq!(colour, Some(None), "device {i} shows no colour");
    }
    net.connect_all().await;
    assert!(net.settle(10).await, "the three converge");
    assert_a_and_b_agree(&net).await;
    assert_eq!(
        net.nodes[0].dev.engine.vector(),
        net.nodes[2].dev.engine.vector()
    );
}

/// The device-owned half of the case above: a held row of another
/// device's delete, whose writer lost it, is not taken by a device that
/// holds the record's state (only the writer could write the delete
/// again, and it no longer holds it): that state stays, as on the writer.
#[tokio::test]
async fn a_held_delete_of_another_devices_record_its_writer_lost_is_not_taken() {
    let (r, mut net) = net_with_restorable(1, 128).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    write_tags(&mut net, 0, 2, "kept").await;
    assert!(net.settle(3).await);
    net.disconnect(1);
    net.nodes[1].online = true;
    // b resyncs from a; a's files are copied after the first page.
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    assert!(!next_page(&net, 0, 1).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // a's clock jumps 30 s ahead of b's; a deletes its volume; b holds the
    // delete's row back.
    r.time.advance(Duration::from_secs(30));
    delete_volume(&mut net, 0, vol).await;
    while !next_page(&net, 0, 1).await {}
    assert_eq!(b.status().held_rows, 1, "b holds the delete's row back");
    assert!(has_volume(b.database(), vol).await);

    // a loses the delete; b's clock catches up.
    restore(&mut net, 0, &r, 1).await;
    net.nodes[1].dev.time.advance(Duration::from_secs(32));
    steps::retry_held(&b).await.unwrap();
    assert_eq!(b.status().held_rows, 0, "the row is released");
    assert!(
        has_volume(b.database(), vol).await,
        "the delete is not taken"
    );
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    for n in &net.nodes {
        assert!(has_volume(n.dev.engine.database(), vol).await);
    }
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    assert_eq!(a.engine.vector(), b.engine.vector());
}

/// A device that holds a superseded change's number, and its record's newer
/// state only as a snapshot row beyond its vector (its backfill under way),
/// cannot prove the husk it would serve: a peer that lacks the number is
/// told to resync, not answered with nothing for ever. (A device asked
/// again and again and never got past the husk: the simulation, 3 devices,
/// 600 operations, seed 431 of every fault.)
#[tokio::test]
async fn a_husk_whose_newer_state_is_held_only_as_a_row_has_the_requester_resync() {
    let (_r, mut net) = net_with_restorable(1, 138).await;
    net.pair_all().await;
    net.connect_all().await;
    write_tags(&mut net, 0, 2, "kept").await;
    assert!(net.settle(3).await);
    // What a requester holds: all but the volume's changes.
    let before = net.nodes[1].dev.engine.vector();
    let vol = write_volume(&mut net, 0).await;
    assert!(net.settle(3).await);
    net.disconnect(1);
    net.nodes[1].online = true;
    rename_volume(&mut net, 0, vol, "renamed").await;
    // b resyncs from a and takes the renamed volume from a page: the
    // creation it held is a husk now, and the rename's number is not b's.
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    page_until(&net, async |d| {
        volume::Model::find_by_id(d.engine.database(), vol)
            .await
            .unwrap()
            .is_some_and(|v| v.name == "renamed")
    })
    .await;
    let request = PullRequest {
        vector: before,
        limit: 100,
        ahead: Vec::new(),
    };
    let answer = steps::serve_pull(&b, &request).await.unwrap();
    let refused = answer.expect_err("the requester is told to resync");
    assert_eq!(
        refused.code,
        ErrorCode::ResyncRequired,
        "{}",
        refused.message
    );
    // Refused for the husk, not for numbers pruned below the request.
    assert!(
        refused.message.contains("superseded"),
        "{}",
        refused.message
    );
}

/// The colour of the tag `gid` on device `d`, if the tag is there.
async fn tag_color(d: &Device, gid: Uuid) -> Option<Option<String>> {
    use sea_orm::{ColumnTrait, QueryFilter};
    tag::Entity::find()
        .filter(tag::Column::Gid.eq(gid))
        .one(d.engine.database())
        .await
        .unwrap()
        .map(|t| t.color)
}

/// An update that a snapshot given up brought, whose server lost it and
/// which no other device took, is written again by the device that holds
/// it when the snapshot starts over: its field's clock beats the older
/// state the new snapshot brings, so that device alone showed it (the
/// simulation, 3 devices, seed 532 of every fault: a tag's colour).
#[tokio::test]
async fn an_update_only_a_given_up_snapshot_brought_is_written_again() {
    let (r, mut net) = net_with_restorable(1, 122).await;
    let tag = tag_after_the_cursor(&mut net, &r, "painted").await;
    let painted = tag.gid;
    // a colours the tag, and a page brings the colour to b.
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    tx.update(tag::Model {
        color: Some("red".into()),
        ..tag
    })
    .await
    .unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    page_until(&net, async |b| {
        tag_color(b, painted).await == Some(Some("red".into()))
    })
    .await;
    assert_eq!(
        tag_color(&net.nodes[1].dev, painted).await,
        Some(Some("red".into()))
    );

    // a goes back to the copy: the update is lost there; the snapshot
    // starts over, and b writes the colour again.
    restore(&mut net, 0, &r, 1).await;
    assert_eq!(tag_color(&net.nodes[0].dev, painted).await, Some(None));
    while !next_page(&net, 0, 1).await {}
    wrote_again_then_converged(&mut net).await;
    for n in &net.nodes {
        assert_eq!(
            tag_color(&n.dev, painted).await,
            Some(Some("red".into())),
            "the colour stands everywhere"
        );
    }
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    assert_eq!(a.engine.vector(), b.engine.vector());
}

/// One page (of one row) of device `to`'s backfill, served by device
/// `from` and applied; whether the backfill is complete.
/// Pages a's snapshot to b until b `shows` what the test waits for; none
/// of those pages is the last.
async fn page_until(net: &Net, shows: impl AsyncFn(&Device) -> bool) {
    for _ in 0..100 {
        assert!(!next_page(net, 0, 1).await, "more pages follow the tag's");
        if shows(&net.nodes[1].dev).await {
            return;
        }
    }
    panic!("b did not show it within 100 pages");
}

async fn next_page(net: &Net, from: usize, to: usize) -> bool {
    let b = &net.nodes[to].dev.engine;
    let page = steps::serve_snapshot(&net.nodes[from].dev.engine, &steps::backfill_request(b, 1))
        .await
        .unwrap()
        .unwrap();
    steps::apply_snapshot(b, page).await.unwrap().1
}

/// `a` goes back to its copied files (a power loss), then `b`'s backfill,
/// started over, completes from it.
async fn restore_and_backfill(net: &mut Net, r: &Restorable, b: &sync_core::Engine) {
    restore(net, 0, r, 1).await;
    backfill_whole(&net.nodes[0].dev.engine, b).await;
    assert!(!b.needs_backfill(), "the backfill completed");
}

/// `a` and `b` connect, settle, and hold the same library.
async fn converge(net: &mut Net) {
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    assert_a_and_b_agree(net).await;
}

/// `to`'s whole backfill, served by `from` in pages of 100 rows.
async fn backfill_whole(from: &sync_core::Engine, to: &sync_core::Engine) {
    loop {
        let page = steps::serve_snapshot(from, &steps::backfill_request(to, 100))
            .await
            .unwrap()
            .unwrap();
        if steps::apply_snapshot(to, page).await.unwrap().1 {
            return;
        }
    }
}

/// A write the server of a backfill received after the snapshot's vector
/// was read comes with the last page as a change: the new device holds it
/// as one, and passes it on, even when the server loses it right after the
/// last page (a power loss). (Before, the new device held only the effect
/// of such a write, in a row, its number in no vector: it alone showed it,
/// or, with a delete, it alone hid the record; the simulation, 3 devices,
/// seeds 118 and 67 of every fault.)
#[tokio::test]
async fn the_last_snapshot_page_carries_the_changes_since_its_vector() {
    let (r, mut net) = net_with_restorable(1, 115).await;
    net.pair_all().await;
    write_tags(&mut net, 0, 4, "kept").await;
    snapshot(&net.nodes[0].dev, &r.copy).await;

    // b's backfill from a, a row a page: the first page, then a writes.
    assert!(!next_page(&net, 0, 1).await);
    write_tags(&mut net, 0, 1, "late").await;
    let with_late = net.nodes[0].dev.engine.vector();
    while !next_page(&net, 0, 1).await {}
    let b = net.nodes[1].dev.engine.clone();
    assert!(
        b.vector().covers(&with_late),
        "b holds the late write as a change: {:?} against {with_late:?}",
        b.vector()
    );

    // a loses power back to before the late write; it gets it back from b.
    restore(&mut net, 0, &r, 1).await;
    assert!(!tag_names(&net.nodes[0].dev).await.contains("late0"));
    net.connect_all().await;
    assert!(net.settle(10).await, "the two converge");
    for n in &net.nodes {
        assert!(
            tag_names(&n.dev).await.contains("late0"),
            "the late tag stays"
        );
    }
}

/// A backfill whose server loses power between two pages: the server
/// starts its snapshot over, and what the pages taken before brought of
/// the writes it lost, which no vector names, is forgotten before the new
/// snapshot applies. (It used to stay on the device that took it, alone:
/// the simulation, 3 devices, seed 168 of every fault; 5 devices, seed 71.)
#[tokio::test]
async fn rows_of_a_snapshot_its_server_lost_are_forgotten() {
    let (r, mut net) = net_with_restorable(1, 111).await;
    net.pair_all().await;
    write_tags(&mut net, 0, 3, "kept").await;
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // a writes a volume and a tag it is about to lose; b takes none of it
    // as a change, and both as snapshot rows.
    let vol = write_volume(&mut net, 0).await;
    write_tags(&mut net, 0, 1, "lost").await;
    steps::restart_backfill(&net.nodes[1].dev.engine, false)
        .await
        .unwrap();
    let b = net.nodes[1].dev.engine.clone();
    loop {
        assert!(
            !next_page(&net, 0, 1).await,
            "a goes back before the last page"
        );
        if has_volume(b.database(), vol).await
            && tag_names(&net.nodes[1].dev).await.contains("lost0")
        {
            break;
        }
    }

    // a loses power back to before those writes; b's next request gets
    // the snapshot again from its start.
    restore(&mut net, 0, &r, 1).await;
    while !next_page(&net, 0, 1).await {}
    assert!(
        !has_volume(b.database(), vol).await,
        "the lost volume is forgotten"
    );
    let names = tag_names(&net.nodes[1].dev).await;
    assert!(
        !names.contains("lost0"),
        "the lost tag is forgotten: {names:?}"
    );
    assert!(names.contains("kept0"));
    assert_eq!(b.vector(), net.nodes[0].dev.engine.vector());
    assert_eq!(
        net.nodes[0].dev.content().await,
        net.nodes[1].dev.content().await
    );
}

/// A backfill that moves to a peer holding less: a record whose creation
/// this device took as a change, and whose later update only the pages
/// given up brought, is kept (its update comes again as a change), not
/// forgotten: forgetting it lost what was taken, and the record then
/// looked deleted and collected here, so neither the new snapshot's row nor
/// the update was taken (the simulation, 8 devices, sparse, seed 67 of
/// every fault, with no power loss).
#[tokio::test]
async fn a_record_taken_before_a_snapshot_given_up_is_kept() {
    let (_r, mut net) = net_with_restorable(3, 114).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    assert!(net.settle(5).await);

    // b and d cut off; a renames the volume, which reaches c.
    for other in [0, 2, 3] {
        net.partition(1, other, true);
    }
    net.partition(3, 0, true);
    net.partition(3, 2, true);
    rename_volume(&mut net, 0, vol, "renamed").await;
    net.run(10_000).await;

    // b resyncs from c until it holds the rename, then from d, which
    // lacks it.
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    let name = |b: sync_core::Engine| async move {
        volume::Model::find_by_id(b.database(), vol)
            .await
            .unwrap()
            .map(|v| v.name)
    };
    loop {
        assert!(!next_page(&net, 2, 1).await, "the backfill moves first");
        if name(b.clone()).await.as_deref() == Some("renamed") {
            break;
        }
    }
    while !next_page(&net, 3, 1).await {}
    assert!(name(b.clone()).await.is_some(), "the volume stays on b");

    for (x, y) in [(1, 0), (1, 2), (1, 3), (3, 0), (3, 2)] {
        net.partition(x, y, false);
    }
    net.reconnect_all().await;
    assert!(net.settle(40).await, "the four converge");
    for i in 0..4 {
        let db = net.nodes[i].dev.engine.database();
        let v = volume::Model::find_by_id(db, vol).await.unwrap();
        assert_eq!(
            v.map(|v| v.name).as_deref(),
            Some("renamed"),
            "on device {i}"
        );
    }
}

/// A record forgotten with a snapshot given up is not deleted: a row that
/// needs it waits, and shows when its writes come again from a device that
/// holds them. (Forgetting it as deleted hid such rows for good: the
/// simulation, 5 devices, seed 166 of every fault.)
#[tokio::test]
async fn a_row_needing_a_forgotten_record_shows_when_its_writes_come_again() {
    let (r, mut net) = net_with_restorable(2, 112).await;
    net.pair_all().await;
    net.connect_all().await;
    write_tags(&mut net, 0, 2, "kept").await;
    assert!(net.settle(20).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;

    // b cut off; a writes a collection that reaches c only.
    net.partition(0, 1, true);
    net.partition(1, 2, true);
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    let col = tx.insert(common::new_collection("lost")).await.unwrap().gid;
    let changes = tx.commit().await.unwrap();
    net.committed(0, changes);
    net.run(10_000).await;
    let c = net.nodes[2].dev.engine.clone();
    assert!(
        common::collection::Model::find_by_id(c.database(), col)
            .await
            .unwrap()
            .is_some()
    );

    // b resyncs from a and, once the collection is here, files a
    // membership in it.
    let b = net.nodes[1].dev.engine.clone();
    steps::restart_backfill(&b, false).await.unwrap();
    let local = loop {
        assert!(
            !next_page(&net, 0, 1).await,
            "a goes back before the last page"
        );
        if let Some(m) = common::collection::Model::find_by_id(b.database(), col)
            .await
            .unwrap()
        {
            break m.id;
        }
    };
    let mut tx = b.begin().await.unwrap();
    let member = tx
        .insert(membership::ActiveModel {
            gid: Set(Uuid::new_v4()),
            collection_id: Set(local),
            tag_id: Set(None),
            note: Set("filed".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .gid;
    let changes = tx.commit().await.unwrap();
    net.committed(1, changes);

    // a loses power back to before the collection; b's snapshot starts
    // over without it.
    restore(&mut net, 0, &r, 1).await;
    while !next_page(&net, 0, 1).await {}
    assert!(
        common::collection::Model::find_by_id(b.database(), col)
            .await
            .unwrap()
            .is_none(),
        "the collection, whose write b does not hold, is forgotten"
    );
    assert!(
        membership::Model::find_by_id(b.database(), member)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.status().parked, 1, "the membership waits for it");

    // Healed: the collection's write comes from c, and the membership shows.
    net.partition(0, 1, false);
    net.partition(1, 2, false);
    net.reconnect_all().await;
    assert!(net.settle(40).await, "the three converge");
    for i in 0..3 {
        let db = net.nodes[i].dev.engine.database();
        assert!(
            membership::Model::find_by_id(db, member)
                .await
                .unwrap()
                .is_some(),
            "the membership shows on device {i}"
        );
        assert!(
            common::collection::Model::find_by_id(db, col)
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(b.status().parked, 0);
}

/// A device-owned record's write, superseded by its owner's delete with an
/// older clock (the owner lost power and its clock went back), is left out
/// of catch-up as a husk. A device that holds the delete believes the husk:
/// a delete supersedes any write, whatever its clock. (It used to hold the
/// husk back for want of a newer clock, and stay short of its number.)
#[tokio::test]
async fn a_write_superseded_by_an_older_delete_is_passed_as_a_husk() {
    let (r, mut net, vol) = volume_saved_for_restore(2, 104).await;
    let first_origin = net.nodes[0].dev.engine.origin();

    // c is away; a renames the volume four seconds later (every clock
    // moves on), and only b hears it.
    net.disconnect(2);
    for n in &net.nodes {
        n.dev.time.advance(Duration::from_secs(4));
    }
    rename_volume(&mut net, 0, vol, "renamed").await;
    assert!(net.settle(3).await);
    let renamed = net.nodes[1].dev.engine.vector().get(first_origin);

    // a loses the rename with its power, and its clock goes back (within
    // the drift bound): its delete is older, by the clock, than the rename
    // it lost.
    restore(&mut net, 0, &r, 1).await;
    r.time.set(common::EPOCH + Duration::from_secs(1));
    delete_volume(&mut net, 0, vol).await;

    // c hears the delete first, then b (which then holds the rename as a
    // husk, superseded), and only then do b and c meet.
    net.nodes[2].online = true;
    net.connect(0, 2).await;
    net.run(10_000).await;
    net.connect(0, 1).await;
    net.run(10_000).await;
    net.connect(1, 2).await;
    assert!(net.settle(5).await);
    for n in &net.nodes {
        assert_eq!(
            n.dev.engine.vector().get(first_origin),
            renamed,
            "every device passes the rename's number"
        );
        assert!(
            !has_volume(n.dev.engine.database(), vol).await,
            "the volume is deleted everywhere"
        );
    }
    let v = net.nodes[0].dev.engine.vector();
    for n in &net.nodes[1..] {
        assert_eq!(n.dev.engine.vector(), v);
    }
}

/// A device whose database went back past a delete that every device held
/// (so its tombstone was collected, and its number can no longer be served
/// as a change) is told to resync. The snapshot lacks the record; its
/// vector covers the record's state here: the device drops it, as an
/// expired device's resync does, though it was never expired. (It used to
/// keep the record for ever; the simulation found it, `power` seed 24.)
#[tokio::test]
async fn a_device_that_went_back_past_a_collected_delete_drops_the_record_on_resync() {
    let (r, mut net, vol) = volume_deleted_and_collected(107).await;

    // a goes back to before the delete: the volume is there again, and no
    // device can serve the delete as a change.
    restore(&mut net, 0, &r, 1).await;
    assert!(has_volume(net.nodes[0].dev.engine.database(), vol).await);
    net.connect_all().await;
    assert!(net.settle(5).await);
    assert_volume_stays_deleted(&net, vol).await;
}

/// The case above, with a write after going back: device `a` deleted its
/// volume, every device collected the delete, and `a` went back to before
/// it and renamed the volume. Where the delete is held, the rename loses to
/// it (a delete beats any write of its owner); `b`, which collected it,
/// holds no state of the volume, but took the state the rename replaces
/// (the rename names it), so the rename loses there too. (It used to make
/// the volume again on every device that had collected the delete, and
/// the resync then kept it: `power` seed 325.)
#[tokio::test]
async fn a_write_past_a_collected_delete_of_its_owner_does_not_bring_the_record_back() {
    let (r, mut net, vol) = volume_deleted_and_collected(109).await;

    // a goes back to before the delete and renames the volume before it
    // meets anyone.
    restore(&mut net, 0, &r, 1).await;
    rename_volume(&mut net, 0, vol, "renamed").await;
    net.connect_all().await;
    assert!(net.settle(5).await);
    assert_volume_stays_deleted(&net, vol).await;
}

/// The case above once every log was pruned: `a` cannot get the delete as
/// a change, and resyncs before `b` hears of the rename. The rename is not
/// in the snapshot's vector, but the state it replaced is, and the snapshot
/// lacks the volume: the rename lost to the delete, and `a` drops the
/// volume too, keeping the rename in its log for peers that lack its
/// number (where it loses as well). (It used to keep the volume, alone, as
/// a write of its own: the simulation, 5 devices, seed 162 of every fault.)
#[tokio::test]
async fn a_write_past_a_collected_delete_is_dropped_by_its_writers_resync() {
    let (r, mut net, vol) = volume_deleted_and_collected(116).await;
    for n in &net.nodes {
        n.dev.engine.flush_peers().await.unwrap();
        n.dev.engine.prune().await.unwrap();
        assert_eq!(n.dev.engine.status().log_len, 0, "every peer acknowledged");
    }
    restore(&mut net, 0, &r, 1).await;
    rename_volume(&mut net, 0, vol, "renamed").await;
    // a resyncs from b before b hears of the rename.
    let a = net.nodes[0].dev.engine.clone();
    steps::restart_backfill(&a, false).await.unwrap();
    while !next_page(&net, 1, 0).await {}
    assert!(
        !has_volume(a.database(), vol).await,
        "a drops the volume it renamed"
    );
    net.connect_all().await;
    assert!(net.settle(5).await);
    net.gossip(3).await;
    assert_volume_stays_deleted(&net, vol).await;
}

/// The shared form of the case above: a tag is deleted, every device
/// collects the delete and prunes its log; device `a` goes back to before
/// the delete, recolours the tag, and resyncs before anyone hears of it.
/// The snapshot lacks the tag; its vector holds every write of the tag but
/// the recolouring, which replaced a write the vector holds: it lost to
/// the delete, and `a` drops the tag (the update stays in its log, and
/// loses wherever it arrives). (It kept the tag, alone: the simulation, 3
/// devices, seed 114 of every fault.)
#[tokio::test]
async fn an_update_past_a_collected_shared_delete_is_dropped_by_its_writers_resync() {
    let (r, mut net, gid) = tag_deleted_collected_and_pruned(121).await;

    // a goes back to before the delete, recolours the tag, and resyncs
    // from b before b hears of it.
    restore(&mut net, 0, &r, 1).await;
    recolour_tag(&mut net, 0, gid).await;
    let a = net.nodes[0].dev.engine.clone();
    steps::restart_backfill(&a, false).await.unwrap();
    while !next_page(&net, 1, 0).await {}
    assert!(
        !tag_names(&net.nodes[0].dev).await.contains("doomed0"),
        "a drops the tag it recoloured"
    );
    net.connect_all().await;
    assert!(net.settle(5).await);
    net.gossip(3).await;
    assert_tag_gone(&net, "doomed0").await;
}

/// A device whose database went back past a shared delete the others
/// collected, and which filed a new row in the record since, writes the
/// delete again when its resync drops the record: the others, which took
/// the new row, hold it hidden, as this device does, instead of waiting
/// for ever for a record that never comes. (The simulation, 3 devices, 600
/// operations, seed 127 of every fault: a tag's user-metadata link.)
#[tokio::test]
async fn a_resync_writes_again_the_delete_of_a_record_a_new_row_refers_to() {
    let (r, mut net) = net_with_restorable(1, 137).await;
    net.pair_all().await;
    net.connect_all().await;
    let a = net.nodes[0].dev.engine.clone();
    let mut tx = a.begin().await.unwrap();
    let col = tx.insert(common::new_collection("doomed")).await.unwrap();
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    assert!(net.settle(5).await);
    // a's files with the collection: what its power loss leaves.
    snapshot(&net.nodes[0].dev, &r.copy).await;
    // b deletes the collection; both collect the delete.
    let mut tx = net.nodes[1].dev.engine.begin().await.unwrap();
    assert!(
        tx.delete::<common::collection::Model>(col.gid)
            .await
            .unwrap()
    );
    let c = tx.commit().await.unwrap();
    net.committed(1, c);
    net.gossip(3).await;
    for c in collect_everywhere(&net).await {
        assert_eq!(c.shared, 1, "every device held the delete");
    }

    // a goes back to before the delete and files a membership in the
    // collection; b takes it, and waits for the collection.
    restore(&mut net, 0, &r, 1).await;
    let a = net.nodes[0].dev.engine.clone();
    let mut tx = a.begin().await.unwrap();
    tx.insert(membership::ActiveModel {
        gid: Set(Uuid::new_v4()),
        collection_id: Set(col.id),
        tag_id: Set(None),
        note: Set("filed".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let created = tx.commit().await.unwrap();
    net.nodes[1].dev.receive(&created).await;
    assert_eq!(
        net.nodes[1].dev.engine.status().parked,
        1,
        "the membership waits on b"
    );

    // a resyncs from b, which no longer holds the collection.
    steps::restart_backfill(&a, false).await.unwrap();
    while !next_page(&net, 1, 0).await {}
    net.connect_all().await;
    assert!(net.settle(5).await);
    net.gossip(3).await;
    for (i, n) in net.nodes.iter().enumerate() {
        assert_eq!(n.dev.engine.status().parked, 0, "nothing waits on {i}");
    }
    assert_a_and_b_agree(&net).await;
}

/// The shared form of the case above: device `a` deleted a tag, `b`
/// collected the delete (`c` still holds it), and `a` went back to before
/// the delete and recoloured the tag. `b` holds no state of the tag, but
/// took the write the update replaces (the update names it), so the update
/// loses there, named in `b`'s conflict log. (It used to wait on `b` for
/// ever as a record with one field: the simulation, 3 devices, seed 167 of
/// every fault.)
#[tokio::test]
async fn an_update_past_a_collected_shared_delete_loses_where_no_state_is_left() {
    let (r, mut net) = net_with_restorable(2, 113).await;
    net.pair_all().await;
    net.connect_all().await;
    let gid = doomed_tag(&mut net, &r).await;

    delete_tag(&mut net, 0, gid).await;
    net.gossip(3).await;
    let (b, b_time) = (
        net.nodes[1].dev.engine.clone(),
        net.nodes[1].dev.time.clone(),
    );
    b_time.advance(Duration::from_secs(60));
    let collected = b.collect_tombstones(Duration::ZERO).await.unwrap();
    assert_eq!(collected.shared, 1, "b collects the delete");

    // a goes back to before the delete and recolours the tag before it
    // meets anyone.
    restore(&mut net, 0, &r, 1).await;
    recolour_tag(&mut net, 0, gid).await;
    net.connect_all().await;
    assert!(net.settle(10).await);
    for n in &net.nodes {
        assert!(
            !tag_names(&n.dev).await.contains("doomed0"),
            "the tag stays deleted"
        );
        assert_eq!(n.dev.engine.status().parked, 0, "nothing waits");
    }
    let lost = b.conflicts().await.unwrap();
    assert!(
        lost.iter().any(|c| c.record == gid),
        "b names the lost update: {lost:?}"
    );
}

/// The shared half of the case above. A tag is deleted by another device,
/// every device collects its tombstone and prunes its log; then device `a`
/// goes back to before the delete. No device can serve the delete, so `a`
/// resyncs; the snapshot lacks the tag and its vector holds every write
/// the tag's fields carry (by their numbers): `a` drops the tag. (It used
/// to keep it, and to serve it in its own snapshots to devices that had
/// collected it, which took it back: `power` seed 310.)
#[tokio::test]
async fn a_device_that_went_back_past_a_collected_shared_delete_drops_the_record_on_resync() {
    let (r, mut net, _) = tag_deleted_collected_and_pruned(108).await;

    // a goes back to before the delete: the tag is there again.
    restore(&mut net, 0, &r, 1).await;
    assert!(tag_names(&net.nodes[0].dev).await.contains("doomed0"));
    net.connect_all().await;
    assert!(net.settle(5).await);
    assert_tag_gone(&net, "doomed0").await;
    assert_eq!(
        net.nodes[0].dev.engine.vector(),
        net.nodes[1].dev.engine.vector()
    );
}

/// A device whose first backfill goes back mid-way (a power loss) keeps
/// the records of the pages it kept. One of them was deleted since, and
/// every device, this one too, collected its tombstone. The backfill starts
/// over on another peer, whose snapshot lacks the record while its vector
/// holds every write the record's fields carry: the device drops it, as a
/// resync does. (It kept the record, alone, for ever: the simulation, 3
/// devices, seed 114 of every fault.)
#[tokio::test]
async fn a_backfill_that_starts_over_drops_a_record_collected_since() {
    let (r, mut net) = net_with_restorable(2, 118).await;
    net.pair_all().await;
    write_tags(&mut net, 1, 3, "t").await;
    net.disconnect(0);
    net.connect(1, 2).await;
    assert!(net.settle(3).await);

    // a backfills from b, a row a page, up to its first tag; its files
    // are copied there.
    let a = net.nodes[0].dev.engine.clone();
    let mut kept = None;
    for _ in 0..100 {
        assert!(
            !next_page(&net, 1, 0).await,
            "a tag is on a page of its own"
        );
        if let Some(t) = tag::Entity::find().one(a.database()).await.unwrap() {
            kept = Some(t);
            break;
        }
    }
    let kept = kept.expect("a took a tag");
    snapshot(&net.nodes[0].dev, &r.copy).await;
    while !next_page(&net, 1, 0).await {}

    // b deletes that tag; every device holds the delete and collects it.
    net.nodes[0].online = true;
    net.connect_all().await;
    assert!(net.settle(3).await);
    delete_tag(&mut net, 1, kept.gid).await;
    net.gossip(3).await;
    for c in collect_everywhere(&net).await {
        assert_eq!(c.shared, 1, "every device held the delete");
    }

    // a goes back to mid-backfill, the tag stored; the backfill starts
    // over on c.
    restore(&mut net, 0, &r, 1).await;
    let a = net.nodes[0].dev.engine.clone();
    assert!(a.needs_backfill());
    assert!(tag_names(&net.nodes[0].dev).await.contains(&kept.name));
    while !next_page(&net, 2, 0).await {}
    assert!(
        !tag_names(&net.nodes[0].dev).await.contains(&kept.name),
        "a drops the tag collected since"
    );
    net.connect_all().await;
    assert!(net.settle(5).await);
    for n in &net.nodes {
        let names = tag_names(&n.dev).await;
        assert!(!names.contains(&kept.name), "the tag stays deleted");
        assert_eq!(names.len(), 2, "the other tags stay: {names:?}");
    }
}

/// The held form of the case above: a device holds a snapshot row back
/// (its clock behind the writer's), then takes the record's delete, which
/// every device collects; its database goes back to before the delete,
/// the row still held. Its resync's snapshot lacks the record, and its
/// vector holds every write the row carries: the held row is dropped, not
/// released once the clock allows. (Released, it brought the record back
/// on that device alone: the simulation, 3 devices, seed 114 of every
/// fault.)
#[tokio::test]
async fn a_held_row_of_a_record_collected_since_is_dropped_by_the_next_snapshot() {
    let (r, mut net) = net_with_restorable(1, 119).await;
    net.pair_all().await;
    // b writes a tag from a clock 30 s ahead of a's (bound: 5 s).
    net.nodes[1].dev.time.advance(Duration::from_secs(30));
    write_tags(&mut net, 1, 1, "ahead").await;
    let a = net.nodes[0].dev.engine.clone();
    while !next_page(&net, 1, 0).await {}
    assert_eq!(a.status().held_rows, 1, "a holds the tag's row back");
    snapshot(&net.nodes[0].dev, &r.copy).await;
    let gid = first_tag(&net.nodes[1].dev).await;

    // a's clock catches up; b deletes the tag; every device collects the
    // delete and prunes its log.
    r.time.advance(Duration::from_secs(40));
    net.connect_all().await;
    assert!(net.settle(3).await);
    delete_collect_and_prune(&mut net, gid).await;

    // a goes back: the row held again, the delete gone; it resyncs from b.
    restore(&mut net, 0, &r, 1).await;
    let a = net.nodes[0].dev.engine.clone();
    assert_eq!(a.status().held_rows, 1);
    steps::restart_backfill(&a, false).await.unwrap();
    while !next_page(&net, 1, 0).await {}
    assert_eq!(a.status().held_rows, 0, "the held row is dropped");
    net.connect_all().await;
    assert!(net.settle(5).await);
    for n in &net.nodes {
        assert!(tag_names(&n.dev).await.is_empty(), "the tag stays deleted");
    }
}

/// A device that collected a record's delete takes a snapshot from a
/// device that went back past that delete and still holds the record (a
/// resync, a backfill restarted on another peer): the snapshot's row is a
/// state this device took once, every write of it in its vector, and it
/// holds no state of the record now, so the record was deleted since; the
/// row is not taken, device-owned or shared. (It used to bring the record
/// back on that device for ever; the simulation found it, 3 devices, seed
/// 141 of every fault.)
#[tokio::test]
async fn a_snapshot_from_a_device_that_went_back_brings_no_collected_record_back() {
    let (r, mut net) = net_with_restorable(1, 110).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    let gid = doomed_tag(&mut net, &r).await;

    net.nodes[0].dev.time.advance(Duration::from_millis(5));
    delete_volume(&mut net, 0, vol).await;
    let mut tx = net.nodes[0].dev.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(gid).await.unwrap());
    let c = tx.commit().await.unwrap();
    net.committed(0, c);
    net.gossip(3).await;
    for c in collect_everywhere(&net).await {
        assert_eq!(c.owned + c.shared, 2, "every device held both deletes");
    }

    // a goes back to before both deletes; b takes a's snapshot.
    restore(&mut net, 0, &r, 1).await;
    let b = &net.nodes[1].dev;
    let a = &net.nodes[0].dev;
    assert!(tag_names(a).await.contains("doomed0"));
    let page = steps::serve_snapshot(&a.engine, &steps::backfill_request(&b.engine, 1_000))
        .await
        .unwrap()
        .unwrap();
    steps::apply_snapshot(&b.engine, page).await.unwrap();
    assert!(
        !has_volume(b.engine.database(), vol).await,
        "the volume stays deleted"
    );
    assert!(
        !tag_names(b).await.contains("doomed0"),
        "the tag stays deleted"
    );
}

/// A device-owned write superseded by its owner's delete is served as a
/// husk, believed beside its record's newer state. A device that took the
/// delete and has collected the record's tombstone since holds no state of
/// the record: the server sends the delete again beside the husk (it holds
/// its number already, so it changes nothing), and the husk is believed
/// beside a delete of its record, by its device, taken before. (It used to
/// be held back for ever, one number short; the simulation found it,
/// `power` seed 192.)
#[tokio::test]
async fn a_husk_is_believed_beside_a_delete_whose_tombstone_was_collected() {
    let (r, mut net) = net_with_restorable(2, 106).await;
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    assert!(net.settle(3).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    let first_origin = net.nodes[0].dev.engine.origin();

    // c is away; only b hears a's rename, which a then loses with its
    // power. a deletes the volume in its new incarnation: on b the rename
    // is superseded, a husk.
    net.disconnect(2);
    rename_volume(&mut net, 0, vol, "renamed").await;
    net.run(10_000).await;
    restore(&mut net, 0, &r, 1).await;
    delete_volume(&mut net, 0, vol).await;

    // c takes the delete from a alone (a lacks the rename's number too),
    // then drops the tombstone as collection does (the statement
    // `collect_tombstones` runs once every member holds the delete): it
    // holds no state of the volume.
    net.nodes[2].online = true;
    net.connect(0, 2).await;
    net.run(10_000).await;
    net.partition(0, 2, true);
    net.connect(0, 1).await;
    net.run(10_000).await;
    let c = net.nodes[2].dev.engine.clone();
    assert_eq!(
        c.vector().get(first_origin),
        1,
        "c lacks the rename's number"
    );
    assert_eq!(
        c.vector().get(net.nodes[0].dev.engine.origin()),
        1,
        "c holds the delete"
    );
    c.database()
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Sqlite,
            "DELETE FROM _sync_rows WHERE model = ? AND record = ?",
            [volume::Model::NAME.into(), vol.as_bytes().to_vec().into()],
        ))
        .await
        .unwrap();

    // c meets b, which serves the rename as a husk.
    net.partition(0, 2, false);
    net.connect(1, 2).await;
    assert!(net.settle(5).await);
    let v = net.nodes[0].dev.engine.vector();
    assert_eq!(v.get(first_origin), 2, "a has its lost number back");
    for n in &net.nodes {
        assert_eq!(n.dev.engine.vector(), v, "every device passes the husk");
        assert!(
            n.dev
                .engine
                .status()
                .peers
                .iter()
                .all(|p| p.held_back.is_empty())
        );
        assert!(!has_volume(n.dev.engine.database(), vol).await);
    }
}

/// A change whose only holder lost it (a power loss before any peer took
/// it) leaves a gap in its origin's numbers that no vector ever passes. A
/// delete numbered beyond that gap, held by every device above its vector,
/// is still collected: heartbeats report the numbers held above a vector,
/// and collection counts them. (Its tombstone used to stay for ever; the
/// simulation found it, `power` seed 114.)
#[tokio::test]
async fn a_delete_beyond_a_gap_no_one_can_fill_is_collected() {
    let (r, mut net) = net_with_restorable(1, 105).await;
    // One change per page: a page can end before a number its reader
    // never gets.
    net.config.pull_limit = 1;
    net.pair_all().await;
    net.connect_all().await;
    assert!(net.settle(2).await);
    snapshot(&net.nodes[0].dev, &r.copy).await;
    let first_origin = net.nodes[0].dev.engine.origin();

    // Cut off, a writes: 1 creates a volume, 2 and 3 tags, 4 deletes the
    // volume (which makes 1 a husk, superseded by 4).
    net.partition(0, 1, true);
    let vol = write_volume(&mut net, 0).await;
    write_tags(&mut net, 0, 1, "kept").await;
    write_tags(&mut net, 0, 1, "lost").await;
    net.nodes[0].dev.time.advance(Duration::from_millis(5));
    delete_volume(&mut net, 0, vol).await;
    net.run(10_000).await;

    // b's first page brings 1 (as a husk) and 2, and 4 beside them (the
    // state that proves the husk); the link goes before the next page.
    net.partition(0, 1, false);
    net.anti_entropy().await;
    let b = net.nodes[1].dev.engine.clone();
    while b.vector().get(first_origin) < 2 {
        assert!(net.step().await, "the page arrives");
    }
    net.partition(0, 1, true);
    net.run(10_000).await;
    assert_eq!(b.vector().get(first_origin), 2);

    // a loses everything it wrote with its power: number 3 is gone for
    // good, and 4 comes back to a from b, above the same gap.
    restore(&mut net, 0, &r, 1).await;
    net.partition(0, 1, false);
    net.connect_all().await;
    net.gossip(4).await;
    for n in &net.nodes {
        let names = tag_names(&n.dev).await;
        assert!(
            names.contains("kept0") && !names.contains("lost0"),
            "{names:?}"
        );
        assert!(
            !has_volume(n.dev.engine.database(), vol).await,
            "the volume is deleted everywhere"
        );
        assert_eq!(
            n.dev.engine.vector().get(first_origin),
            2,
            "no vector passes the lost number"
        );
        n.dev.time.advance(Duration::from_secs(60));
    }
    for (i, collected) in collect_everywhere(&net).await.iter().enumerate() {
        assert_eq!(
            collected.owned, 1,
            "device {i}: every member holds the delete above the gap"
        );
    }
}

/// A data directory copied to a second machine and run there too: both
/// copies write as the same device, and every write reaches every device.
#[tokio::test]
async fn a_copied_database_run_twice_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.sqlite");
    let copy_path = dir.path().join("a-copy.sqlite");
    let time = ManualTime::new(common::EPOCH);
    let a = device_at(&path, 1, time.clone()).await;
    let mut net = Net::new(vec![a, device(2).await], 102);
    net.pair_all().await;
    net.connect_all().await;
    let vol = write_volume(&mut net, 0).await;
    write_tags(&mut net, 0, 3, "shared").await;
    assert!(net.settle(2).await);
    snapshot(&net.nodes[0].dev, &copy_path).await;
    let twin = device_at(&copy_path, 1, time.clone()).await;
    net.nodes.push(common::sim::Node::new(twin));
    // Both copies write, as the same device, before they meet anyone.
    write_tags(&mut net, 0, 4, "first").await;
    write_tags(&mut net, 2, 4, "second").await;
    for (i, name) in [(0, "from first"), (2, "from second")] {
        rename_volume(&mut net, i, vol, name).await;
        net.nodes[i].dev.time.advance(Duration::from_millis(3));
    }
    // a and b are still connected; the twin meets b.
    net.connect(2, 1).await;
    let settled = net.settle(4).await;
    assert!(settled);
    let names = tag_names(&net.nodes[1].dev).await;
    assert_eq!(names.len(), 11, "{names:?}");
    for n in &net.nodes {
        assert_eq!(tag_names(&n.dev).await, names);
    }
    assert_eq!(
        net.nodes[0].dev.content().await,
        net.nodes[2].dev.content().await
    );
}

/// With a pool of several connections, writes, received changes,
/// acknowledgements and reads running at once never meet a busy database:
/// every write takes the engine's writer and begins IMMEDIATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_connections_never_meets_a_busy_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::file_database(&dir.path().join("pool.sqlite"), 4).await;
    let a = common::open_device(db, 1, ManualTime::new(common::EPOCH)).await;
    let b = device(2).await;
    a.engine.pair(b.id).await.unwrap();
    // Changes from b to apply while a writes.
    let mut tx = b.engine.begin().await.unwrap();
    for i in 0..200 {
        tx.insert(new_tag(&format!("b{i}"))).await.unwrap();
    }
    let from_b = tx.commit().await.unwrap();
    let engine = a.engine.clone();
    let writer = tokio::spawn(async move {
        for i in 0..100 {
            let mut tx = engine.begin().await?;
            tx.insert(new_tag(&format!("a{i}"))).await?;
            tx.commit().await?;
        }
        Ok::<_, EngineError>(())
    });
    let engine = a.engine.clone();
    let applier = tokio::spawn(async move {
        for chunk in from_b.chunks(10) {
            engine.apply(chunk.to_vec()).await?;
        }
        Ok::<_, EngineError>(())
    });
    let engine = a.engine.clone();
    let peer = b.id;
    let acker = tokio::spawn(async move {
        for _ in 0..50 {
            sync_core::__private::steps::acknowledge(&engine, peer, &engine.vector());
            engine.flush_peers().await?;
            engine.prune().await?;
            tokio::task::yield_now().await;
        }
        Ok::<_, EngineError>(())
    });
    let engine = a.engine.clone();
    let reader = tokio::spawn(async move {
        for _ in 0..100 {
            let _ = engine.status();
            let request = sync_core::PullRequest {
                vector: Default::default(),
                limit: 50,
                ahead: Vec::new(),
            };
            // A page, or "resync" once the log was pruned: both are
            // answers; only an engine error is a failure.
            let _answer = sync_core::__private::steps::serve_pull(&engine, &request).await?;
            engine.content().await?;
        }
        Ok::<_, EngineError>(())
    });
    for task in [writer, applier, acker, reader] {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        tag::Entity::find()
            .all(a.engine.database())
            .await
            .unwrap()
            .len(),
        300
    );
}

/// An open transaction holds the writer. Status never waits for it; a
/// write that needs the writer waits, and fails with a clear error after
/// the writer timeout rather than deadlocking.
#[tokio::test]
async fn an_open_transaction_blocks_writers_with_a_clear_timeout_and_never_status() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::file_database(&dir.path().join("t.sqlite"), 2).await;
    let config = sync_core::EngineConfig::new()
        .time(std::sync::Arc::new(ManualTime::new(common::EPOCH)))
        .writer_timeout(Duration::from_millis(200));
    let engine = sync_core::Engine::open(db, common::device_key(1), config)
        .await
        .unwrap();
    let b = device(2).await;
    let mut tx = b.engine.begin().await.unwrap();
    tx.insert(new_tag("from b")).await.unwrap();
    let changes = tx.commit().await.unwrap();

    let mut open = engine.begin().await.unwrap();
    open.insert(new_tag("held")).await.unwrap();
    let status = engine.status();
    assert_eq!(status.device, common::device_id(1), "status works");
    let started = std::time::Instant::now();
    let err = engine.apply(changes.clone()).await.unwrap_err();
    assert!(matches!(err, EngineError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("SyncTransaction"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let err = engine.prune().await;
    assert!(err.is_ok(), "nothing to prune needs no writer: {err:?}");
    open.commit().await.unwrap();
    // Once it ends, the writer is free again.
    assert_eq!(engine.apply(changes).await.unwrap().applied, 1);
}

/// A device-owned write that a snapshot row replaces is kept as a husk, as
/// one a change replaces is: the writer still holds its number and must
/// prove the hole in a catch-up. Here the writer's rename, made after a
/// power loss took its delete, is replaced by that delete from a peer's
/// snapshot. (Without the husk the writer could serve nothing of its new
/// incarnation's numbers, and a peer caught up from it for ever: the
/// simulation, 3 devices, seed 56 of every fault.) The delete that won
/// is then written again, under the next number (see
/// `a_write_that_loses_to_its_owners_lost_delete_has_the_delete_written_again`).
#[tokio::test]
async fn a_write_a_snapshot_row_replaces_is_kept_as_a_husk() {
    let (r, mut net, vol) = volume_saved_for_restore(1, 105).await;
    delete_volume(&mut net, 0, vol).await;
    assert!(net.settle(3).await);

    // a loses the delete with its power and renames the volume, alone,
    // its clock past the delete's.
    restore(&mut net, 0, &r, 1).await;
    net.disconnect(0);
    net.nodes[0].dev.time.advance(Duration::from_secs(1));
    rename_volume(&mut net, 0, vol, "renamed").await;
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    let origin = a.engine.origin();

    // a resyncs from b's snapshot, whose row for the volume is the delete.
    steps::restart_backfill(&a.engine, false).await.unwrap();
    loop {
        let request = steps::backfill_request(&a.engine, 100);
        let page = steps::serve_snapshot(&b.engine, &request)
            .await
            .unwrap()
            .unwrap();
        if steps::apply_snapshot(&a.engine, page).await.unwrap().1 {
            break;
        }
    }
    assert!(
        !has_volume(a.engine.database(), vol).await,
        "the delete stands on a"
    );
    assert_eq!(
        a.engine.vector().get(origin),
        2,
        "a holds its rename's number, and the delete's it wrote again"
    );

    // A peer that lacks that number is served its husk.
    let mut vector = a.engine.vector();
    vector.set(origin, 0);
    let response = steps::serve_pull(
        &a.engine,
        &sync_core::PullRequest {
            vector,
            limit: 100,
            ahead: Vec::new(),
        },
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:?}"));
    let batch = response
        .batches
        .iter()
        .find(|b| b.origin == origin)
        .unwrap_or_else(|| panic!("{response:?}"));
    assert_eq!(batch.upto, 2);
    assert!(
        batch
            .seals
            .iter()
            .any(|s| s.husks.iter().any(|h| h.seq == 1))
    );
}
