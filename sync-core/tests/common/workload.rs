//! A random workload over the test models: the actions a device's user
//! takes, chosen by proptest, performed through the engine.

use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};
use sea_orm::{ActiveValue::Set, EntityTrait};
use sync_core::{Change, SyncModel};
use uuid::Uuid;

use super::{Device, collection, entry, label, location, membership, tag, volume};

thread_local! {
    /// Where new records' ids and devices' incarnations come from once a
    /// case has seeded it, so that the case replays with the same ids (and
    /// so picks the same records and breaks clock ties the same way).
    static IDS: std::cell::RefCell<Option<StdRng>> = const { std::cell::RefCell::new(None) };
}

/// Seeds the ids this thread hands out; a case calls it first.
pub fn seed_ids(seed: u64) {
    IDS.with(|ids| *ids.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// A new id: from the seeded ids if this thread has them, else random.
pub fn fresh_id() -> Uuid {
    IDS.with(|ids| match ids.borrow_mut().as_mut() {
        Some(rng) => uuid::Builder::from_random_bytes(rng.random()).into_uuid(),
        None => Uuid::new_v4(),
    })
}

#[derive(Debug, Clone)]
pub enum Action {
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
    /// A label whose slug is one of a few, so that devices collide on it.
    CreateLabel(u8),
    RelabelTo(usize, u8),
    /// The writer receives everything another writer has written so far.
    Hear(usize),
}

pub fn action() -> impl Strategy<Value = Action> {
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
        2 => any::<u8>().prop_map(Action::CreateLabel),
        1 => (i.clone(), any::<u8>()).prop_map(|(a, b)| Action::RelabelTo(a, b)),
        2 => (0usize..3).prop_map(Action::Hear),
    ]
}

pub async fn ids<M: SyncModel>(d: &Device) -> Vec<M>
where
    <M as sea_orm::ModelTrait>::Entity: EntityTrait<Model = M>,
{
    let mut rows: Vec<M> = <<M as sea_orm::ModelTrait>::Entity as EntityTrait>::find()
        .all(d.engine.database())
        .await
        .unwrap();
    rows.sort_by_key(|r| r.sync_id());
    rows
}

pub fn pick<T: Clone>(rows: &[T], i: usize) -> Option<T> {
    (!rows.is_empty()).then(|| rows[i % rows.len()].clone())
}

/// Performs one write action on `d`; returns the changes it committed.
/// (`Hear` needs the other devices: the caller performs it.)
pub async fn perform(d: &Device, action: &Action) -> Vec<Change> {
    if let Action::Hear(_) = action {
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
    let labels: Vec<label::Model> = ids(d).await;
    // Like an application, a device only picks a slug it does not hold.
    let free = |n: u8| {
        let slug = format!("s{}", n % 3);
        (!labels.iter().any(|l| l.slug == slug)).then_some(slug)
    };
    let mut tx = d.engine.begin().await.unwrap();
    match action.clone() {
        Action::CreateLabel(n) => {
            if let Some(slug) = free(n) {
                tx.insert(label::ActiveModel {
                    gid: Set(fresh_id()),
                    slug: Set(slug),
                    title: Set(String::new()),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
        Action::RelabelTo(i, n) => {
            if let (Some(mut l), Some(slug)) = (pick(&labels, i), free(n)) {
                l.slug = slug;
                tx.update(l).await.unwrap();
            }
        }
        Action::CreateLocation(v) => {
            let loc = tx
                .insert(location::ActiveModel {
                    gid: Set(fresh_id()),
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
                    gid: Set(fresh_id()),
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
                    gid: Set(fresh_id()),
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
                gid: Set(fresh_id()),
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
                gid: Set(fresh_id()),
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
                    gid: Set(fresh_id()),
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
                gid: Set(fresh_id()),
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
        Action::Hear(_) => {}
    }
    tx.commit().await.unwrap()
}
