//! The engine's data side, scenario by scenario, against SQLite.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::time::Duration;

use common::{Device, device, entry, location, membership, tag, volume};
use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait};
use sync_core::{Change, ConflictKind, EngineError, Op, RejectReason, SyncModel, WireValue};
use uuid::Uuid;

use common::new_tag;

async fn create_tag(d: &Device, name: &str) -> (tag::Model, Vec<Change>) {
    let mut tx = d.engine.begin().await.unwrap();
    let row = tx.insert(new_tag(name)).await.unwrap();
    (row, tx.commit().await.unwrap())
}

async fn edit_tag(d: &Device, id: Uuid, f: impl FnOnce(&mut tag::Model)) -> Vec<Change> {
    let mut tx = d.engine.begin().await.unwrap();
    let mut row = tag::Model::find_by_id(tx.connection(), id)
        .await
        .unwrap()
        .unwrap();
    f(&mut row);
    tx.update(row).await.unwrap();
    tx.commit().await.unwrap()
}

async fn delete_tag(d: &Device, id: Uuid) -> Vec<Change> {
    let mut tx = d.engine.begin().await.unwrap();
    assert!(tx.delete::<tag::Model>(id).await.unwrap());
    tx.commit().await.unwrap()
}

async fn get_tag(d: &Device, id: Uuid) -> Option<tag::Model> {
    tag::Model::find_by_id(d.engine.database(), id)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_write_commits_its_row_state_and_log_entry_together() {
    let a = device(1).await;
    let (row, changes) = create_tag(&a, "music").await;
    assert_eq!(changes.len(), 1);
    let change = &changes[0];
    assert_eq!((change.device, change.seq, change.id), (a.id, 1, row.gid));
    assert_eq!(
        change.origin,
        a.engine.origin(),
        "numbered by this incarnation"
    );
    let Op::Upsert(fields) = &change.op else {
        panic!("an insert is an upsert")
    };
    assert_eq!(fields.len(), tag::Model::META.fields.len());
    assert!(fields.iter().all(|f| f.base.is_none()));
    assert_eq!(a.engine.log().await.unwrap(), changes);

    let changes = edit_tag(&a, row.gid, |t| t.color = Some("red".into())).await;
    let Op::Upsert(fields) = &changes[0].op else {
        panic!()
    };
    assert_eq!(fields.len(), 1, "an update carries only the changed field");
    assert_eq!(fields[0].name, "color");
    assert_eq!(changes[0].seq, 2);
    assert!(
        fields[0].base.is_some(),
        "it names the version it overwrote"
    );
    assert_eq!(a.engine.log_len(), 2);
}

#[tokio::test]
async fn committed_changes_are_published_to_subscribers() {
    let a = device(1).await;
    let mut sub = a.engine.subscribe();
    let (_, changes) = create_tag(&a, "x").await;
    let published = sub.recv().await.unwrap();
    assert_eq!(published.changes, changes);
    // A rolled-back transaction publishes nothing.
    let mut tx = a.engine.begin().await.unwrap();
    tx.insert(new_tag("y")).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(sub.try_recv().is_err());
    assert_eq!(a.engine.stats().written, 1);
}

/// Subscribers to applied changes get each change whole, fields and all,
/// though the merge moves the received values into the record's state.
#[tokio::test]
async fn applied_changes_reach_subscribers_whole() {
    let (a, b) = (device(1).await, device(2).await);
    let mut applied = b.engine.subscribe_applied();
    let (row, made) = create_tag(&a, "whole").await;
    let edited = edit_tag(&a, row.gid, |t| t.color = Some("blue".into())).await;
    let both: Vec<Change> = made.iter().chain(&edited).cloned().collect();
    b.receive(&both).await;
    let got = applied.recv().await.unwrap();
    assert_eq!(got.as_ref(), both.as_slice());
    // A change already held is not applied again, so not published again.
    b.receive(&both).await;
    assert!(applied.try_recv().is_err());
}

/// A received row takes a local key the table never gave: in an
/// AUTOINCREMENT table, not the key of a row deleted since, even when that
/// row held the highest key.
#[tokio::test]
async fn a_received_row_never_reuses_a_deleted_rows_key() {
    let (a, b) = (device(1).await, device(2).await);
    let (first, _) = create_tag(&a, "first").await;
    let (last, _) = create_tag(&a, "last").await;
    assert!(last.id > first.id);
    delete_tag(&a, last.gid).await;
    let (_, made) = create_tag(&b, "from b").await;
    a.receive(&made).await;
    let received = get_tag(&a, made[0].id).await.unwrap();
    assert!(
        received.id > last.id,
        "key {} reuses the deleted row's {}",
        received.id,
        last.id
    );
}

#[tokio::test]
async fn concurrent_edits_of_different_fields_both_survive() {
    let a = device(1).await;
    let b = device(2).await;
    let (row, create) = create_tag(&a, "photos").await;
    b.receive(&create).await;

    let from_a = edit_tag(&a, row.gid, |t| t.name = "pictures".into()).await;
    let from_b = edit_tag(&b, row.gid, |t| t.color = Some("blue".into())).await;
    a.receive(&from_b).await;
    b.receive(&from_a).await;

    for d in [&a, &b] {
        let t = get_tag(d, row.gid).await.unwrap();
        assert_eq!(
            (t.name.as_str(), t.color.as_deref()),
            ("pictures", Some("blue"))
        );
        assert!(
            d.engine.conflicts().await.unwrap().is_empty(),
            "different fields do not conflict"
        );
    }
    assert_eq!(a.content().await, b.content().await);
}

#[tokio::test]
async fn the_same_field_edited_concurrently_takes_the_higher_clock_everywhere() {
    let a = device(1).await;
    let b = device(2).await;
    let (row, create) = create_tag(&a, "draft").await;
    b.receive(&create).await;

    let from_a = edit_tag(&a, row.gid, |t| t.name = "from a".into()).await;
    b.time.advance(Duration::from_millis(10));
    let from_b = edit_tag(&b, row.gid, |t| t.name = "from b".into()).await;
    assert!(from_b[0].hlc > from_a[0].hlc);
    a.receive(&from_b).await;
    b.receive(&from_a).await;

    for d in [&a, &b] {
        assert_eq!(get_tag(d, row.gid).await.unwrap().name, "from b");
        let conflicts = d.engine.conflicts().await.unwrap();
        assert_eq!(
            conflicts.len(),
            1,
            "the losing write is recorded on {}",
            d.id
        );
        let c = &conflicts[0];
        assert_eq!(c.field.as_deref(), Some("name"));
        assert_eq!(c.loser.device, a.id);
        assert_eq!(
            c.loser.value,
            Some(WireValue::String(Some("from a".into())))
        );
        let winner = c.winner.as_ref().unwrap();
        assert_eq!(winner.device, b.id);
        assert_eq!(winner.value, Some(WireValue::String(Some("from b".into()))));
    }
    assert_eq!(
        a.engine.conflicts().await.unwrap()[0].kind,
        ConflictKind::Overwritten
    );
    assert_eq!(
        b.engine.conflicts().await.unwrap()[0].kind,
        ConflictKind::Outdated
    );
}

#[tokio::test]
async fn a_sequential_edit_is_not_a_conflict() {
    let a = device(1).await;
    let b = device(2).await;
    let (row, create) = create_tag(&a, "v1").await;
    b.receive(&create).await;
    let e1 = edit_tag(&a, row.gid, |t| t.name = "v2".into()).await;
    b.receive(&e1).await;
    let e2 = edit_tag(&b, row.gid, |t| t.name = "v3".into()).await;
    a.receive(&e2).await;
    for d in [&a, &b] {
        assert_eq!(get_tag(d, row.gid).await.unwrap().name, "v3");
        assert!(d.engine.conflicts().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn applying_the_same_changes_twice_changes_nothing() {
    let a = device(1).await;
    let b = device(2).await;
    let (row, mut all) = create_tag(&a, "once").await;
    all.extend(edit_tag(&a, row.gid, |t| t.weight = 7).await);
    let first = b.receive(&all).await;
    assert_eq!(first.applied, 2);
    let before = b.content().await;
    let again = b.receive(&all).await;
    assert_eq!((again.applied, again.duplicates), (0, 2));
    assert_eq!(b.content().await, before);
    assert_eq!(b.engine.log_len(), 2);
    // A device's own changes coming back are duplicates too.
    assert_eq!(a.receive(&all).await.duplicates, 2);
}

#[tokio::test]
async fn delete_wins_over_a_concurrent_update_in_either_order() {
    for delete_first in [true, false] {
        let a = device(1).await;
        let b = device(2).await;
        let c = device(3).await;
        let (row, create) = create_tag(&a, "doomed").await;
        b.receive(&create).await;
        c.receive(&create).await;

        // b's update has the higher clock; the delete still wins.
        let delete = delete_tag(&a, row.gid).await;
        b.time.advance(Duration::from_secs(1));
        let update = edit_tag(&b, row.gid, |t| t.name = "saved?".into()).await;
        assert!(update[0].hlc > delete[0].hlc);

        if delete_first {
            c.receive(&delete).await;
            c.receive(&update).await;
        } else {
            c.receive(&update).await;
            c.receive(&delete).await;
        }
        a.receive(&update).await;
        b.receive(&delete).await;

        for d in [&a, &b, &c] {
            assert!(
                get_tag(d, row.gid).await.is_none(),
                "deleted on {} (delete first: {delete_first})",
                d.id
            );
        }
        assert_eq!(a.content().await, c.content().await);
        assert_eq!(b.content().await, c.content().await);
        // Where the update arrived after the delete, its loss is recorded.
        let lost = a.engine.conflicts().await.unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].kind, ConflictKind::Deleted);
        assert_eq!(lost[0].loser.device, b.id);
        // And the record cannot be written again, even by its creator.
        // (the engine checks a transaction's records at commit, in one
        // query for all of them).
        let mut tx = a.engine.begin().await.unwrap();
        tx.insert(tag::ActiveModel {
            gid: Set(row.gid),
            ..new_tag("again")
        })
        .await
        .unwrap();
        let err = tx.commit().await;
        assert!(matches!(err, Err(EngineError::Deleted { .. })), "{err:?}");
        assert!(get_tag(&a, row.gid).await.is_none(), "rolled back");
    }
}

#[tokio::test]
async fn a_late_create_of_a_deleted_record_never_brings_it_back() {
    let a = device(1).await;
    let b = device(2).await;
    let (row, create) = create_tag(&a, "ghost").await;
    let delete = delete_tag(&a, row.gid).await;
    b.receive(&delete).await;
    b.receive(&create).await;
    assert!(get_tag(&b, row.gid).await.is_none());
    assert_eq!(a.content().await, b.content().await);
}

#[tokio::test]
async fn shared_children_arriving_before_their_parents_wait_for_them() {
    let a = device(1).await;
    let b = device(2).await;
    // Three levels: tag <- tag (parent_id) <- membership (tag_id); and the
    // membership also needs its collection.
    let mut tx = a.engine.begin().await.unwrap();
    let root = tx.insert(new_tag("root")).await.unwrap();
    let child = tx
        .insert(tag::ActiveModel {
            parent_id: Set(Some(root.id)),
            ..new_tag("child")
        })
        .await
        .unwrap();
    let coll = tx.insert(common::new_collection("trip")).await.unwrap();
    let member = tx
        .insert(membership::ActiveModel {
            gid: Set(Uuid::new_v4()),
            collection_id: Set(coll.id),
            tag_id: Set(Some(child.id)),
            note: Set("n".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let changes = tx.commit().await.unwrap();
    assert_eq!(changes.len(), 4);

    // Each arrives alone, children first.
    for change in changes.iter().rev() {
        b.receive(std::slice::from_ref(change)).await;
    }
    assert_eq!(b.engine.parked_len(), 0);
    assert_eq!(a.content().await, b.content().await);
    let m = membership::Model::find_by_id(b.engine.database(), member.gid)
        .await
        .unwrap()
        .unwrap();
    let c = tag::Model::find_by_id(b.engine.database(), child.gid)
        .await
        .unwrap()
        .unwrap();
    let r = tag::Model::find_by_id(b.engine.database(), root.gid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.tag_id, Some(c.id));
    assert_eq!(c.parent_id, Some(r.id));
}

async fn index_tree(d: &Device) -> (Vec<Change>, [Uuid; 4]) {
    let mut tx = d.engine.begin().await.unwrap();
    let vol = tx
        .insert(volume::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(d.id),
            name: Set("disk".into()),
            capacity: Set(Some(1 << 40)),
            is_online: Set(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let loc = tx
        .insert(location::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(d.id),
            volume_id: Set(Some(vol.id)),
            root_entry_id: Set(None),
            path: Set("/home".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tx
        .insert(entry::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(d.id),
            location_id: Set(loc.id),
            parent_id: Set(None),
            name: Set("docs".into()),
            size: Set(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let file = tx
        .insert(entry::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(d.id),
            location_id: Set(loc.id),
            parent_id: Set(Some(dir.id)),
            name: Set("cv.pdf".into()),
            size: Set(1234),
            ..Default::default()
        })
        .await
        .unwrap();
    // Close the cycle: the location's root entry.
    let mut loc = loc;
    loc.root_entry_id = Some(dir.id);
    tx.update(loc.clone()).await.unwrap();
    (
        tx.commit().await.unwrap(),
        [vol.gid, loc.gid, dir.gid, file.gid],
    )
}

#[tokio::test]
async fn device_owned_rows_arriving_in_reverse_order_are_parked_then_applied() {
    let a = device(1).await;
    let b = device(2).await;
    let (changes, [_, loc, dir, file]) = index_tree(&a).await;
    let mut reversed = changes.clone();
    reversed.reverse();
    for change in &reversed {
        b.receive(std::slice::from_ref(change)).await;
    }
    assert_eq!(b.engine.parked_len(), 0);
    assert_eq!(a.content().await, b.content().await);
    let db = b.engine.database();
    let l = location::Model::find_by_id(db, loc).await.unwrap().unwrap();
    let d = entry::Model::find_by_id(db, dir).await.unwrap().unwrap();
    let f = entry::Model::find_by_id(db, file).await.unwrap().unwrap();
    assert_eq!(l.root_entry_id, Some(d.id));
    assert_eq!(f.parent_id, Some(d.id));
    assert_eq!(f.location_id, l.id);
}

#[tokio::test]
async fn parked_changes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sqlite");
    let a = device(1).await;
    let (changes, [vol, loc, d, f]) = index_tree(&a).await;
    let (parents, children): (Vec<Change>, Vec<Change>) =
        changes.into_iter().partition(|c| c.model == "locations");
    {
        let b = common::device_at(&path, 2, sync_core::clock::ManualTime::new(common::EPOCH)).await;
        b.receive(&children).await;
        assert!(b.engine.parked_len() > 0);
        assert!(
            entry::Model::find_by_id(b.engine.database(), f)
                .await
                .unwrap()
                .is_none()
        );
    }
    let b = common::device_at(&path, 2, sync_core::clock::ManualTime::new(common::EPOCH)).await;
    assert!(b.engine.parked_len() > 0, "still parked after the restart");
    b.receive(&parents).await;
    assert_eq!(b.engine.parked_len(), 0);
    for id in [vol, loc, d, f] {
        assert!(b.content().await.iter().any(|r| r.id == id));
    }
    assert_eq!(a.content().await, b.content().await);
}

#[tokio::test]
async fn a_change_from_a_device_that_does_not_own_the_row_is_rejected() {
    let a = device(1).await;
    let b = device(2).await;
    let mallory = device(3).await;
    let (changes, [vol, ..]) = index_tree(&a).await;
    b.receive(&changes).await;
    let before = b.content().await;

    // Mallory replays a's volume state as its own, then under a's name but
    // with itself as owner.
    let original = changes.iter().find(|c| c.id == vol).unwrap().clone();
    let forged = common::forge(&original, &mallory, 100);
    let mut stolen = common::forge(&original, &mallory, 101);
    if let Op::Upsert(fields) = &mut stolen.op {
        for f in fields.iter_mut() {
            if f.name == "device" {
                f.value = WireValue::Uuid(Some(mallory.id));
            }
        }
    }
    let mut delete = common::forge(&original, &mallory, 102);
    delete.op = Op::Delete { seen: None };

    let report = b.engine.apply(vec![forged, stolen, delete]).await.unwrap();
    assert_eq!(report.rejected.len(), 3);
    assert!(
        report
            .rejected
            .iter()
            .all(|r| r.reason == RejectReason::NotOwner { owner: a.id })
    );
    assert_eq!(b.content().await, before, "nothing was written");
    assert_eq!(b.engine.stats().rejected, 3);
    let conflicts = b.engine.conflicts().await.unwrap();
    assert_eq!(conflicts.len(), 3);
    assert!(
        conflicts
            .iter()
            .all(|c| c.kind == ConflictKind::NotOwner && c.loser.device == mallory.id)
    );
}

#[tokio::test]
async fn a_device_cannot_write_a_row_another_device_owns() {
    let a = device(1).await;
    let b = device(2).await;
    let (changes, [vol, ..]) = index_tree(&a).await;
    b.receive(&changes).await;
    let mut row = volume::Model::find_by_id(b.engine.database(), vol)
        .await
        .unwrap()
        .unwrap();
    row.name = "mine now".into();
    let mut tx = b.engine.begin().await.unwrap();
    let err = tx.update(row).await.unwrap_err();
    assert!(
        matches!(err, EngineError::NotOwner { owner, .. } if owner == a.id),
        "{err}"
    );
    assert!(matches!(tx.commit().await, Err(EngineError::Poisoned)));

    let mut tx = b.engine.begin().await.unwrap();
    let err = tx.delete::<volume::Model>(vol).await.unwrap_err();
    assert!(matches!(err, EngineError::NotOwner { .. }), "{err}");
    drop(tx);

    let mut tx = b.engine.begin().await.unwrap();
    let err = tx
        .insert(volume::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(a.id),
            name: Set("not yours".into()),
            capacity: Set(None),
            is_online: Set(false),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotOwner { .. }), "{err}");
    drop(tx);
    assert_eq!(a.content().await, b.content().await);
}

#[tokio::test]
async fn an_older_device_owned_state_never_replaces_a_newer_one() {
    let a = device(1).await;
    let b = device(2).await;
    let (changes, [vol, ..]) = index_tree(&a).await;
    b.receive(&changes).await;
    let mut row = volume::Model::find_by_id(a.engine.database(), vol)
        .await
        .unwrap()
        .unwrap();
    row.name = "renamed".into();
    let mut tx = a.engine.begin().await.unwrap();
    tx.update(row).await.unwrap();
    let newer = tx.commit().await.unwrap();
    b.receive(&newer).await;
    let report = b.receive(&changes).await;
    assert_eq!(report.applied, 0);
    assert_eq!(
        volume::Model::find_by_id(b.engine.database(), vol)
            .await
            .unwrap()
            .unwrap()
            .name,
        "renamed"
    );
}

#[tokio::test]
async fn deleting_a_parent_deletes_rows_that_need_it_and_clears_rows_that_may_lose_it() {
    let a = device(1).await;
    let b = device(2).await;
    let (changes, [vol, loc, dir, file]) = index_tree(&a).await;
    b.receive(&changes).await;

    let mut tx = a.engine.begin().await.unwrap();
    assert!(tx.delete::<location::Model>(loc).await.unwrap());
    let delete = tx.commit().await.unwrap();
    assert_eq!(
        delete.len(),
        1,
        "the cascade is derived on every device, not shipped"
    );
    b.receive(&delete).await;

    for d in [&a, &b] {
        let db = d.engine.database();
        assert!(volume::Model::find_by_id(db, vol).await.unwrap().is_some());
        for gone in [loc, dir, file] {
            assert!(entry::Model::find_by_id(db, gone).await.unwrap().is_none());
            assert!(
                location::Model::find_by_id(db, gone)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
    assert_eq!(a.content().await, b.content().await);

    // A child whose required parent is deleted by the time it arrives is
    // deleted with it.
    let c = device(3).await;
    let (mut tree, _) = (changes.clone(), ());
    tree.extend(delete.clone());
    let (deletes, writes): (Vec<Change>, Vec<Change>) =
        tree.into_iter().partition(Change::is_delete);
    c.receive(&deletes).await;
    c.receive(&writes).await;
    assert_eq!(c.content().await, a.content().await);
    assert_eq!(
        c.engine.parked_len(),
        0,
        "nothing waits forever for a deleted parent"
    );
}

#[tokio::test]
async fn a_nullable_reference_to_a_deleted_record_becomes_null() {
    let a = device(1).await;
    let b = device(2).await;
    let (parent, create_parent) = create_tag(&a, "parent").await;
    b.receive(&create_parent).await;
    // b points a new child at the parent while a deletes the parent.
    let mut tx = b.engine.begin().await.unwrap();
    let local_parent = tag::Model::find_by_id(tx.connection(), parent.gid)
        .await
        .unwrap()
        .unwrap();
    let child = tx
        .insert(tag::ActiveModel {
            parent_id: Set(Some(local_parent.id)),
            ..new_tag("child")
        })
        .await
        .unwrap();
    let create_child = tx.commit().await.unwrap();
    let delete = delete_tag(&a, parent.gid).await;

    a.receive(&create_child).await;
    b.receive(&delete).await;
    for d in [&a, &b] {
        let c = tag::Model::find_by_id(d.engine.database(), child.gid)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.parent_id, None);
    }
    assert_eq!(a.content().await, b.content().await);
}

#[tokio::test]
async fn a_clock_too_far_ahead_is_refused_counted_and_changes_nothing() {
    let a = device(1).await;
    let b = device(2).await;
    a.time.advance(Duration::from_secs(60)); // beyond b's 5 s bound
    let (row, changes) = create_tag(&a, "future").await;
    let report = b.engine.apply(changes.clone()).await.unwrap();
    assert_eq!(report.applied, 0);
    assert!(report.rejected.is_empty(), "refused for now, not for good");
    assert!(matches!(
        report.held_back[0].reason,
        RejectReason::ClockAhead(_)
    ));
    assert_eq!(b.engine.stats().held_back, 1);
    assert!(get_tag(&b, row.gid).await.is_none());
    assert_eq!(b.engine.log_len(), 0, "refused, not recorded as received");
    let clock_before = b.engine.clock_time();
    assert!(clock_before < *changes[0].hlc.get_time());

    // Once b's clock has caught up, the same change is accepted.
    b.time.advance(Duration::from_secs(58));
    assert_eq!(b.receive(&changes).await.applied, 1);
}

#[tokio::test]
async fn the_clock_stays_monotonic_when_the_wall_clock_steps_back_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.sqlite");
    let time = sync_core::clock::ManualTime::new(common::EPOCH);
    let c1_origin;
    let first = {
        let a = common::device_at(&path, 1, time.clone()).await;
        let (_, c1) = create_tag(&a, "one").await;
        c1_origin = c1[0].origin;
        time.set(common::EPOCH - Duration::from_secs(3_600));
        let (_, c2) = create_tag(&a, "two").await;
        assert!(
            c2[0].hlc > c1[0].hlc,
            "a step back does not move the clock back"
        );
        c2[0].hlc
    };
    // Restarted with the wall clock even further back.
    time.set(common::EPOCH - Duration::from_secs(7_200));
    let a = common::device_at(&path, 1, time.clone()).await;
    let (_, c3) = create_tag(&a, "three").await;
    assert!(c3[0].hlc > first, "the persisted clock is resumed");
    assert_ne!(c3[0].origin, c1_origin, "a new incarnation numbers afresh");
    assert_eq!(c3[0].seq, 1);
}

#[tokio::test]
async fn an_injected_failure_between_the_row_and_the_log_leaves_neither() {
    let a = device(1).await;
    let faults = sync_core::__private::Faults::default();
    let db = a.engine.database().clone();
    let engine = sync_core::Engine::open(
        db,
        common::device_key(1),
        sync_core::EngineConfig::new().faults(faults.clone()),
    )
    .await
    .unwrap();
    faults
        .fail_before_log_write
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut tx = engine.begin().await.unwrap();
    let row = tx.insert(new_tag("lost")).await.unwrap();
    assert!(matches!(tx.commit().await, Err(EngineError::Injected(_))));
    assert!(
        tag::Model::find_by_id(engine.database(), row.gid)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        tag::Entity::find().count(engine.database()).await.unwrap(),
        0
    );
    assert_eq!(engine.log_len(), 0);

    faults
        .fail_before_log_write
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let mut tx = engine.begin().await.unwrap();
    tx.insert(new_tag("kept")).await.unwrap();
    let changes = tx.commit().await.unwrap();
    assert_eq!(changes[0].seq, 1, "the failed write used no number");
    assert_eq!(engine.log_len(), 1);
}

#[tokio::test]
async fn a_database_knows_its_device_and_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sqlite");
    let time = sync_core::clock::ManualTime::new(common::EPOCH);
    let d = common::device_at(&path, 1, time.clone()).await;
    let db = d.engine.database().clone();
    let err = sync_core::Engine::open(
        db.clone(),
        common::device_key(99),
        sync_core::EngineConfig::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EngineError::WrongDevice { .. }), "{err}");

    use sea_orm::ConnectionTrait;
    db.execute_unprepared("UPDATE _sync_meta SET value = X'000003E7' WHERE key = 'schema_version'")
        .await
        .unwrap();
    let err = sync_core::Engine::open(db, common::device_key(1), sync_core::EngineConfig::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// A version-3 database (one held snapshot row per record) opens: its
/// held rows carry over into the table that keeps every row held. An older
/// version is refused.
#[tokio::test]
async fn a_version_3_database_is_upgraded_and_older_ones_refused() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sqlite");
    let time = sync_core::clock::ManualTime::new(common::EPOCH);
    let d = common::device_at(&path, 1, time.clone()).await;
    let db = d.engine.database().clone();
    drop(d);
    for sql in [
        "DROP TABLE _sync_held",
        "CREATE TABLE _sync_held (model TEXT NOT NULL, record BLOB NOT NULL, row BLOB NOT NULL, \
         reason TEXT NOT NULL, PRIMARY KEY (model, record)) WITHOUT ROWID",
        "INSERT INTO _sync_held VALUES ('tags', X'00000000000000000000000000000001', X'90', 'clock')",
        "UPDATE _sync_meta SET value = X'00000003' WHERE key = 'schema_version'",
    ] {
        db.execute_unprepared(sql).await.unwrap();
    }
    let engine = sync_core::Engine::open(
        db.clone(),
        common::device_key(1),
        sync_core::EngineConfig::new(),
    )
    .await
    .unwrap();
    assert_eq!(engine.status().held_rows, 1, "the held row carried over");
    let version = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT hex(value) AS v FROM _sync_meta WHERE key = 'schema_version'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<String>("", "v")
        .unwrap();
    assert_eq!(version, format!("{:08X}", sync_core::SCHEMA_VERSION));
    drop(engine);

    db.execute_unprepared("UPDATE _sync_meta SET value = X'00000002' WHERE key = 'schema_version'")
        .await
        .unwrap();
    let err = sync_core::Engine::open(db, common::device_key(1), sync_core::EngineConfig::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot upgrade"), "{err}");
}

#[tokio::test]
async fn malformed_and_unknown_changes_are_rejected_without_writing() {
    let a = device(1).await;
    let b = device(2).await;
    let (_, changes) = create_tag(&a, "ok").await;
    let mut unknown = changes[0].clone();
    unknown.model = "no_such_model".into();
    unknown.seq = 50;
    let mut wrong_type = changes[0].clone();
    wrong_type.seq = 51;
    wrong_type.id = Uuid::new_v4();
    if let Op::Upsert(fields) = &mut wrong_type.op {
        fields.retain(|f| f.name != "gid");
        for f in fields.iter_mut() {
            if f.name == "weight" {
                f.value = WireValue::String(Some("heavy".into()));
            }
        }
    }
    let report = b.engine.apply(vec![unknown, wrong_type]).await.unwrap();
    assert_eq!(report.rejected.len(), 1, "a malformed change, for good");
    assert_eq!(report.held_back.len(), 1, "an unknown model, for now");
    let reason = |seq: u64| {
        &report
            .rejected
            .iter()
            .chain(&report.held_back)
            .find(|r| r.seq == seq)
            .unwrap()
            .reason
    };
    assert!(matches!(reason(50), RejectReason::UnknownModel));
    assert!(
        matches!(reason(51), RejectReason::Malformed(_)),
        "{:?}",
        reason(51)
    );
    assert!(b.content().await.is_empty());
    // Handed over by the application, not relayed: nothing is logged.
    assert_eq!(b.engine.log_len(), 0);
}

#[tokio::test]
async fn update_fields_sends_exactly_what_the_active_model_sets() {
    let a = device(1).await;
    let b = device(2).await;
    let (row, create) = create_tag(&a, "plain").await;
    b.receive(&create).await;
    // Shared: only the set field travels, with the clock it overwrote.
    let mut tx = a.engine.begin().await.unwrap();
    let written = tx
        .update_fields(tag::ActiveModel {
            id: Set(row.id),
            color: Set(Some("green".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(written.name, "plain", "the rest of the row is untouched");
    let changes = tx.commit().await.unwrap();
    let Op::Upsert(fields) = &changes[0].op else {
        panic!()
    };
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].name, "color");
    assert!(fields[0].base.is_some());
    b.receive(&changes).await;
    assert_eq!(a.content().await, b.content().await);

    // Device-owned: the whole state travels, and only the owner may write.
    let (changes, [vol, ..]) = index_tree(&a).await;
    b.receive(&changes).await;
    let key = volume::Model::find_by_id(a.engine.database(), vol)
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut tx = a.engine.begin().await.unwrap();
    tx.update_fields(volume::ActiveModel {
        id: Set(key),
        name: Set("renamed disk".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let changes = tx.commit().await.unwrap();
    let Op::Upsert(fields) = &changes[0].op else {
        panic!()
    };
    assert_eq!(fields.len(), volume::Model::META.fields.len());
    b.receive(&changes).await;
    assert_eq!(a.content().await, b.content().await);
    let b_key = volume::Model::find_by_id(b.engine.database(), vol)
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut tx = b.engine.begin().await.unwrap();
    let err = tx
        .update_fields(volume::ActiveModel {
            id: Set(b_key),
            name: Set("not mine".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::NotOwner { .. }), "{err}");
}

/// A device whose `tags` table declares its parent as a foreign key, as an
/// application's schema may.
async fn device_with_foreign_keys(n: u128) -> Device {
    use sea_orm::ConnectionTrait;
    let db = common::database().await;
    let one = |sql: &'static str| {
        db.query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            sql,
        ))
    };
    let row = one("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tags'")
        .await
        .unwrap()
        .unwrap();
    let sql: String = row.try_get("", "sql").unwrap();
    let with_key = format!(
        "{}, FOREIGN KEY (parent_id) REFERENCES tags (id))",
        sql.trim_end().trim_end_matches(')')
    );
    db.execute_unprepared("DROP TABLE tags").await.unwrap();
    db.execute_unprepared(&with_key).await.unwrap();
    let on = one("PRAGMA foreign_keys").await.unwrap().unwrap();
    assert_eq!(on.try_get_by_index::<i64>(0).unwrap(), 1, "keys enforced");
    common::open_device(db, n, sync_core::clock::ManualTime::new(common::EPOCH)).await
}

/// The application's foreign keys hold whatever a received batch writes:
/// a chain of tags longer than one statement (a row may name a parent
/// written by a later statement, so the keys are checked at commit), a
/// parent and child in one statement (checked after it), and deletes.
/// Keys are deferred only when a batch needs it: the pragma that defers
/// them makes SQLite prepare every statement again.
#[tokio::test]
async fn received_batches_keep_the_applications_foreign_keys() {
    use sea_orm::ConnectionTrait;
    let (a, b) = (
        device_with_foreign_keys(1).await,
        device_with_foreign_keys(2).await,
    );
    // A chain of 1,200 tags, each the parent of the next: more rows than
    // one statement holds.
    let mut tx = a.engine.begin().await.unwrap();
    let mut parent: Option<i32> = None;
    let mut chain = Vec::new();
    for i in 0..1_200 {
        let mut t = new_tag(&format!("t{i}"));
        t.parent_id = Set(parent);
        let row = tx.insert(t).await.unwrap();
        parent = Some(row.id);
        chain.push(row.gid);
    }
    let changes = tx.commit().await.unwrap();
    b.receive(&changes).await;
    assert_eq!(
        tag::Entity::find()
            .count(b.engine.database())
            .await
            .unwrap(),
        1_200
    );

    // A parent and its child in one small batch.
    let mut tx = a.engine.begin().await.unwrap();
    let p = tx.insert(new_tag("p")).await.unwrap();
    let mut c = new_tag("c");
    c.parent_id = Set(Some(p.id));
    tx.insert(c).await.unwrap();
    let changes = tx.commit().await.unwrap();
    b.receive(&changes).await;

    // The chain's last ten deleted, children first.
    let mut tx = a.engine.begin().await.unwrap();
    for gid in chain.iter().rev().take(10) {
        assert!(tx.delete::<tag::Model>(*gid).await.unwrap());
    }
    let changes = tx.commit().await.unwrap();
    b.receive(&changes).await;

    assert_eq!(a.content().await, b.content().await);
    let broken = b
        .engine
        .database()
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "PRAGMA foreign_key_check",
        ))
        .await
        .unwrap();
    assert!(broken.is_empty(), "no key is broken");
    assert_eq!(
        tag::Entity::find()
            .count(b.engine.database())
            .await
            .unwrap(),
        1_192
    );
}

#[tokio::test]
async fn a_checkpoint_truncates_a_write_ahead_log_grown_past_its_bound() {
    use sea_orm::ConnectionTrait;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.sqlite");
    let a = common::device_at(&path, 1, sync_core::clock::ManualTime::new(common::EPOCH)).await;
    let db = a.engine.database();
    // 10,000 pages of 4 KiB in one transaction: past the bound, as a
    // backfill or an indexing run gets between two background checkpoints.
    db.execute_unprepared("CREATE TABLE bulk (b BLOB)")
        .await
        .unwrap();
    db.execute_unprepared(
        "INSERT INTO bulk SELECT randomblob(4000) FROM (WITH RECURSIVE n(x) AS \
         (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) SELECT x FROM n)",
    )
    .await
    .unwrap();
    let wal = dir.path().join("a.sqlite-wal");
    let grown = std::fs::metadata(&wal).unwrap().len();
    assert!(
        grown > 4096 * sync_core::WAL_RESTART_FRAMES as u64,
        "{grown}"
    );

    let (frames, _) = a.engine.checkpoint().await.unwrap();
    assert_eq!(frames, 0, "the log starts over");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        0,
        "and its file is emptied"
    );
    let (_, tags) = create_tag(&a, "after").await;
    assert_eq!(tags.len(), 1, "writes go on");
    let rows = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) FROM bulk",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap();
    assert_eq!(rows, 10_000, "nothing the log held is lost");

    // Below the bound the log is only copied: the file stays for reuse.
    let (_, copied) = a.engine.checkpoint().await.unwrap();
    assert!(copied > 0);
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
}
