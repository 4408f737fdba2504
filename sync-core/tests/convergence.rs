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

use common::{Device, collection, device, entry, location, membership, tag, volume};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use sea_orm::{ActiveValue::Set, EntityTrait};
use sync_core::{Change, SyncModel};
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Action {
    CreateTag(u8),
    RenameTag(usize, u8),
    RecolorTag(usize, Option<u8>),
    Reweigh(usize, i64),
    Reparent(usize, Option<usize>),
    DeleteTag(usize),
    CreateCollection(u8),
    DeleteCollection(usize),
    CreateMembership(usize, Option<usize>),
    EditNote(usize, u8),
    CreateVolume(u8),
    RenameVolume(usize, u8),
    DeleteVolume(usize),
    CreateLocation(Option<usize>),
    DeleteLocation(usize),
    CreateEntry(usize, Option<usize>, u8),
    RenameEntry(usize, u8),
    DeleteEntry(usize),
    /// The writer receives everything another writer has written so far.
    Hear(usize),
}

fn action() -> impl Strategy<Value = Action> {
    let i = 0usize..8;
    prop_oneof![
        3 => any::<u8>().prop_map(Action::CreateTag),
        3 => (i.clone(), any::<u8>()).prop_map(|(a, b)| Action::RenameTag(a, b)),
        2 => (i.clone(), any::<Option<u8>>()).prop_map(|(a, b)| Action::RecolorTag(a, b)),
        2 => (i.clone(), -5i64..5).prop_map(|(a, b)| Action::Reweigh(a, b)),
        2 => (i.clone(), proptest::option::of(i.clone())).prop_map(|(a, b)| Action::Reparent(a, b)),
        1 => i.clone().prop_map(Action::DeleteTag),
        2 => any::<u8>().prop_map(Action::CreateCollection),
        1 => i.clone().prop_map(Action::DeleteCollection),
        2 => (i.clone(), proptest::option::of(i.clone())).prop_map(|(a, b)| Action::CreateMembership(a, b)),
        2 => (i.clone(), any::<u8>()).prop_map(|(a, b)| Action::EditNote(a, b)),
        2 => any::<u8>().prop_map(Action::CreateVolume),
        2 => (i.clone(), any::<u8>()).prop_map(|(a, b)| Action::RenameVolume(a, b)),
        1 => i.clone().prop_map(Action::DeleteVolume),
        1 => proptest::option::of(i.clone()).prop_map(Action::CreateLocation),
        1 => i.clone().prop_map(Action::DeleteLocation),
        3 => (i.clone(), proptest::option::of(i.clone()), any::<u8>()).prop_map(|(a, b, c)| Action::CreateEntry(a, b, c)),
        2 => (i.clone(), any::<u8>()).prop_map(|(a, b)| Action::RenameEntry(a, b)),
        1 => i.clone().prop_map(Action::DeleteEntry),
        2 => (0usize..3).prop_map(Action::Hear),
    ]
}

async fn ids<M: SyncModel>(d: &Device) -> Vec<M> {
    let mut rows: Vec<M> = <<M as SyncModel>::Entity as EntityTrait>::find()
        .all(d.engine.db())
        .await
        .unwrap();
    rows.sort_by_key(|r| r.sync_id());
    rows
}

fn pick<T: Clone>(rows: &[T], i: usize) -> Option<T> {
    (!rows.is_empty()).then(|| rows[i % rows.len()].clone())
}

/// Performs one action on writer `w`; returns the changes it committed.
async fn perform(
    writers: &[Device],
    w: usize,
    action: &Action,
    heard: &mut [usize],
    log: &[Vec<Change>],
) -> Vec<Change> {
    let d = &writers[w];
    if let Action::Hear(from) = action {
        let from = from % writers.len();
        let new = &log[from][heard[from]..];
        d.receive(new).await;
        heard[from] = log[from].len();
        return Vec::new();
    }
    let tags: Vec<tag::Model> = ids(d).await;
    let colls: Vec<collection::Model> = ids(d).await;
    let members: Vec<membership::Model> = ids(d).await;
    let vols: Vec<volume::Model> = ids::<volume::Model>(d)
        .await
        .into_iter()
        .filter(|v| v.device == d.id)
        .collect();
    let locs: Vec<location::Model> = ids::<location::Model>(d)
        .await
        .into_iter()
        .filter(|l| l.device == d.id)
        .collect();
    let entries: Vec<entry::Model> = ids::<entry::Model>(d)
        .await
        .into_iter()
        .filter(|e| e.device == d.id)
        .collect();
    let mut tx = d.engine.begin().await.unwrap();
    match action.clone() {
        Action::CreateLocation(v) => {
            let loc = tx
                .insert(location::ActiveModel {
                    gid: Set(Uuid::new_v4()),
                    device: Set(d.id),
                    volume_id: Set(v.and_then(|v| pick(&vols, v)).map(|v| v.id)),
                    root_entry_id: Set(None),
                    path: Set("/".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            // Close the location <-> entry cycle through its root entry.
            let root = tx
                .insert(entry::ActiveModel {
                    gid: Set(Uuid::new_v4()),
                    device: Set(d.id),
                    location_id: Set(loc.id),
                    parent_id: Set(None),
                    name: Set("root".into()),
                    size: Set(0),
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut loc = loc;
            loc.root_entry_id = Some(root.id);
            tx.update(loc).await.unwrap();
        }
        Action::DeleteLocation(i) => {
            if let Some(l) = pick(&locs, i) {
                tx.delete::<location::Model>(l.gid).await.unwrap();
            }
        }
        Action::CreateEntry(l, p, n) => {
            if let Some(l) = pick(&locs, l) {
                let parent = p
                    .and_then(|p| pick(&entries, p))
                    .filter(|e| e.location_id == l.id)
                    .map(|e| e.id);
                tx.insert(entry::ActiveModel {
                    gid: Set(Uuid::new_v4()),
                    device: Set(d.id),
                    location_id: Set(l.id),
                    parent_id: Set(parent),
                    name: Set(format!("e{n}")),
                    size: Set(i64::from(n)),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
        Action::RenameEntry(i, n) => {
            if let Some(mut e) = pick(&entries, i) {
                e.name = format!("f{n}");
                tx.update(e).await.unwrap();
            }
        }
        Action::DeleteEntry(i) => {
            if let Some(e) = pick(&entries, i) {
                tx.delete::<entry::Model>(e.gid).await.unwrap();
            }
        }
        Action::CreateTag(n) => {
            tx.insert(tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set(format!("t{n}")),
                color: Set(None),
                weight: Set(0),
                parent_id: Set(None),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        Action::RenameTag(i, n) => {
            if let Some(mut t) = pick(&tags, i) {
                t.name = format!("r{n}");
                tx.update(t).await.unwrap();
            }
        }
        Action::RecolorTag(i, c) => {
            if let Some(mut t) = pick(&tags, i) {
                t.color = c.map(|c| format!("c{c}"));
                tx.update(t).await.unwrap();
            }
        }
        Action::Reweigh(i, by) => {
            if let Some(mut t) = pick(&tags, i) {
                t.weight += by;
                tx.update(t).await.unwrap();
            }
        }
        Action::Reparent(i, p) => {
            if let Some(mut t) = pick(&tags, i) {
                t.parent_id = p.and_then(|p| pick(&tags, p)).map(|p| p.id);
                tx.update(t).await.unwrap();
            }
        }
        Action::DeleteTag(i) => {
            if let Some(t) = pick(&tags, i) {
                tx.delete::<tag::Model>(t.gid).await.unwrap();
            }
        }
        Action::CreateCollection(n) => {
            tx.insert(collection::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set(format!("c{n}")),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        Action::DeleteCollection(i) => {
            if let Some(c) = pick(&colls, i) {
                tx.delete::<collection::Model>(c.gid).await.unwrap();
            }
        }
        Action::CreateMembership(c, t) => {
            if let Some(c) = pick(&colls, c) {
                tx.insert(membership::ActiveModel {
                    gid: Set(Uuid::new_v4()),
                    collection_id: Set(c.id),
                    tag_id: Set(t.and_then(|t| pick(&tags, t)).map(|t| t.id)),
                    note: Set(String::new()),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
        Action::EditNote(i, n) => {
            if let Some(mut m) = pick(&members, i) {
                m.note = format!("n{n}");
                tx.update(m).await.unwrap();
            }
        }
        Action::CreateVolume(n) => {
            tx.insert(volume::ActiveModel {
                gid: Set(Uuid::new_v4()),
                device: Set(d.id),
                name: Set(format!("v{n}")),
                capacity: Set(Some(i64::from(n))),
                is_online: Set(true),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        Action::RenameVolume(i, n) => {
            if let Some(mut v) = pick(&vols, i) {
                v.name = format!("w{n}");
                tx.update(v).await.unwrap();
            }
        }
        Action::DeleteVolume(i) => {
            if let Some(v) = pick(&vols, i) {
                tx.delete::<volume::Model>(v.gid).await.unwrap();
            }
        }
        Action::Hear(_) => unreachable!(),
    }
    tx.commit().await.unwrap()
}

async fn run(steps: Vec<(usize, Action, u8)>, writers_n: usize, seed: u64) {
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
        let changes = perform(&writers, w, action, &mut heard[w], &log).await;
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
            d.engine.parked_len().await.unwrap(),
            0,
            "device {} has changes waiting forever",
            d.id
        );
    }
    // No deleted record is present anywhere.
    let deleted: Vec<Uuid> = all.iter().filter(|c| c.is_delete()).map(|c| c.id).collect();
    assert!(expected.iter().all(|row| !deleted.contains(&row.id)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_batching_and_duplication_converges(
        steps in prop::collection::vec((0usize..3, action(), any::<u8>()), 10..80),
        writers_n in 2usize..4,
        seed in any::<u64>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(steps, writers_n, seed));
    }
}
