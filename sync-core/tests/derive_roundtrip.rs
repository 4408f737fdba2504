//! What `#[derive(Syncable)]` generates, exercised against real SQLite.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use chrono::{FixedOffset, NaiveDate, TimeZone, Utc};
use common::{Device, device, entry, every_type, location, volume};
use sea_orm::ActiveValue::Set;
use sync_core::{Change, FieldChange, FieldRole, Op, Ownership, Registry, SyncModel};
use uuid::Uuid;

fn sample(gid: Uuid) -> every_type::ActiveModel {
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    every_type::ActiveModel {
        gid: Set(gid),
        i8_v: Set(i8::MIN),
        i16_v: Set(i16::MAX),
        i32_v: Set(-123_456),
        i64_v: Set(i64::MIN + 1),
        u8_v: Set(u8::MAX),
        u16_v: Set(u16::MAX),
        u32_v: Set(u32::MAX),
        char_v: Set("x".into()),
        f32_v: Set(0.1_f32),
        f64_v: Set(std::f64::consts::PI),
        bool_v: Set(true),
        text: Set("naïve café ✓".into()),
        opt_text: Set(None),
        opt_i64: Set(Some(-7)),
        opt_f64: Set(Some(1e-300)),
        bytes: Set(vec![0, 1, 2, 255]),
        opt_bytes: Set(Some(vec![])),
        other_id: Set(Uuid::from_u128(42)),
        opt_uuid: Set(None),
        date: Set(date),
        time: Set(chrono::NaiveTime::from_hms_micro_opt(23, 59, 58, 123_456).unwrap()),
        naive: Set(date.and_hms_milli_opt(1, 2, 3, 4).unwrap()),
        utc: Set(Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap()),
        offset: Set(FixedOffset::east_opt(5 * 3600 + 1800)
            .unwrap()
            .with_ymd_and_hms(2023, 6, 7, 8, 9, 10)
            .unwrap()),
        opt_utc: Set(None),
        json: Set(
            serde_json::json!({"a": [1, 2.5, "x", null, {"deep": true}], "big": 9007199254740993_u64}),
        ),
        opt_json: Set(Some(serde_json::Value::Null)),
        kind: Set(every_type::Kind::Directory),
        opt_kind: Set(Some(every_type::Kind::File)),
        priority: Set(every_type::Priority::High),
        local_note: Set("only here".into()),
        ..Default::default()
    }
}

fn names<M: SyncModel>(indices: &[usize]) -> Vec<&'static str> {
    indices.iter().map(|i| M::META.fields[*i].name).collect()
}

#[tokio::test]
async fn every_field_type_round_trips_through_the_wire() {
    let a = device(1).await;
    let b = device(2).await;
    let gid = Uuid::new_v4();
    let mut tx = a.engine.begin().await.unwrap();
    let original = tx.insert(sample(gid)).await.unwrap();
    let changes = tx.commit().await.unwrap();
    let Op::Upsert(fields) = &changes[0].op else {
        panic!("an insert is an upsert")
    };
    assert_eq!(fields.len(), every_type::Model::META.fields.len());
    assert!(
        fields
            .iter()
            .all(|f| f.name != "id" && f.name != "local_note"),
        "neither the local key nor a local-only field travels"
    );

    // Through the wire format and into another database.
    let bytes = changes[0].encode().unwrap();
    let received = bytes.decode().unwrap();
    assert_eq!(received, changes[0]);
    assert_eq!(b.receive(&[received]).await.applied, 1);

    let copy = every_type::Model::find_by_id(b.engine.database(), gid)
        .await
        .unwrap()
        .unwrap();
    // Everything synced is equal; the local-only field took its default.
    let expected = every_type::Model {
        id: copy.id,
        local_note: String::new(),
        ..original.clone()
    };
    assert_eq!(copy, expected);
    assert_eq!(copy.f32_v.to_bits(), original.f32_v.to_bits());
    assert_eq!(copy.f64_v.to_bits(), original.f64_v.to_bits());
    // And it reads back to identical wire values.
    assert_eq!(copy.wire().unwrap(), original.wire().unwrap());
    assert_eq!(a.content().await, b.content().await);
}

#[tokio::test]
async fn changed_fields_names_exactly_the_changed_fields() {
    let a = device(1).await;
    let mut tx = a.engine.begin().await.unwrap();
    let old = tx.insert(sample(Uuid::new_v4())).await.unwrap();
    tx.commit().await.unwrap();
    let mut new = old.clone();
    assert!(every_type::Model::changed_fields(&old, &new).is_empty());

    new.text = "renamed".into();
    new.opt_kind = None;
    new.f32_v = 2.5;
    new.local_note = "local edits are not sync changes".into();
    let changed = every_type::Model::changed_fields(&old, &new);
    assert_eq!(
        names::<every_type::Model>(&changed),
        ["f32_v", "text", "opt_kind"]
    );

    // An update sends exactly those, and writes the local-only one too.
    let mut tx = a.engine.begin().await.unwrap();
    tx.update(new.clone()).await.unwrap();
    let changes = tx.commit().await.unwrap();
    let Op::Upsert(fields) = &changes[0].op else {
        panic!()
    };
    let sent: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(sent, ["f32_v", "text", "opt_kind"]);
    assert!(fields[2].value.is_null());
    let stored = every_type::Model::find_by_id(a.engine.database(), new.gid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, new);
}

#[tokio::test]
async fn an_update_before_its_creation_waits_for_it() {
    let a = device(1).await;
    let b = device(2).await;
    let gid = Uuid::new_v4();
    let mut tx = a.engine.begin().await.unwrap();
    let row = tx.insert(sample(gid)).await.unwrap();
    let create = tx.commit().await.unwrap();
    let mut tx = a.engine.begin().await.unwrap();
    tx.update(every_type::Model {
        text: "later".into(),
        ..row
    })
    .await
    .unwrap();
    let update = tx.commit().await.unwrap();

    let report = b.receive(&update).await;
    assert_eq!(report.waiting, 1, "a partial record cannot make a row");
    assert!(b.content().await.is_empty());
    assert_eq!(b.engine.parked_len(), 1);
    let report = b.receive(&create).await;
    assert_eq!(report.applied, 1);
    assert_eq!(b.engine.parked_len(), 0);
    assert_eq!(a.content().await, b.content().await);
}

#[test]
fn values_that_do_not_fit_their_field_are_refused() {
    use sync_core::{ValueError, WireValue};
    let index = |name: &str| every_type::Model::META.field_index(name).unwrap();
    let bad: Vec<(&str, WireValue)> = vec![
        ("i8_v", WireValue::String(Some("seven".into()))),
        ("text", WireValue::String(None)),
        // A value SQLite cannot hold is refused before it reaches the driver.
        ("u32_v", WireValue::U64(Some(u64::MAX))),
        ("json", WireValue::Json(Some("{not json".into()))),
        ("kind", WireValue::String(Some("neither".into()))),
    ];
    for (field, value) in bad {
        let err = every_type::Model::to_sql(index(field), &value).unwrap_err();
        assert!(
            matches!(
                err,
                ValueError::TypeMismatch { .. } | ValueError::OutOfRange(_) | ValueError::Json(_)
            ),
            "{field}: {err}"
        );
    }
    assert!(every_type::Model::to_sql(index("i8_v"), &WireValue::I8(Some(-3))).is_ok());
}

#[tokio::test]
async fn malformed_records_are_refused_without_writing() {
    let a = device(1).await;
    let b = device(2).await;
    let gid = Uuid::new_v4();
    let mut tx = a.engine.begin().await.unwrap();
    tx.insert(sample(gid)).await.unwrap();
    let create = tx.commit().await.unwrap();
    let with = |seq: u64, f: &dyn Fn(&mut Vec<FieldChange>)| {
        let mut c = create[0].clone();
        c.seq = seq;
        if let Op::Upsert(fields) = &mut c.op {
            f(fields);
        }
        c
    };
    let set = |name: &'static str, v: sync_core::WireValue| {
        move |fields: &mut Vec<FieldChange>| {
            for f in fields.iter_mut() {
                if f.name == name {
                    f.value = v.clone();
                }
            }
        }
    };
    let cases = vec![
        with(
            2,
            &set("i8_v", sync_core::WireValue::String(Some("seven".into()))),
        ),
        with(3, &set("text", sync_core::WireValue::String(None))),
        with(4, &|f: &mut Vec<FieldChange>| {
            let first = f[0].clone();
            f.push(first);
        }),
        with(
            5,
            &set("gid", sync_core::WireValue::Uuid(Some(Uuid::new_v4()))),
        ),
        with(6, &set("u32_v", sync_core::WireValue::U64(Some(u64::MAX)))),
        with(
            7,
            &set("json", sync_core::WireValue::Json(Some("{not json".into()))),
        ),
    ];
    let report = b.engine.apply(cases).await.unwrap();
    assert_eq!(report.rejected.len(), 6, "{report:?}");
    assert!(
        report
            .rejected
            .iter()
            .all(|r| matches!(r.reason, sync_core::RejectReason::Malformed(_)))
    );
    assert!(b.content().await.is_empty(), "nothing was written");
}

async fn seed_tree(
    d: &Device,
) -> (
    volume::Model,
    location::Model,
    entry::Model,
    entry::Model,
    Vec<Change>,
) {
    let device = d.id;
    let mut tx = d.engine.begin().await.unwrap();
    let vol = tx
        .insert(volume::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(device),
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
            device: Set(device),
            volume_id: Set(Some(vol.id)),
            root_entry_id: Set(None),
            path: Set("/home/me".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tx
        .insert(entry::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(device),
            location_id: Set(loc.id),
            parent_id: Set(None),
            name: Set("photos".into()),
            size: Set(0),
            ..Default::default()
        })
        .await
        .unwrap();
    let file = tx
        .insert(entry::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(device),
            location_id: Set(loc.id),
            parent_id: Set(Some(dir.id)),
            name: Set("cat.jpg".into()),
            size: Set(12_345),
            ..Default::default()
        })
        .await
        .unwrap();
    let changes = tx.commit().await.unwrap();
    (vol, loc, dir, file, changes)
}

#[tokio::test]
async fn references_travel_as_global_ids_and_map_back_to_local_keys() {
    let a = device(1).await;
    let b = device(2).await;
    let (vol, loc, dir, file, changes) = seed_tree(&a).await;
    // Give b rows of its own first, so local keys differ between devices.
    seed_tree(&b).await;

    let file_change = changes.iter().find(|c| c.id == file.gid).unwrap();
    assert_eq!(
        file_change.field("parent_id"),
        Some(&sync_core::WireValue::Uuid(Some(dir.gid)))
    );
    assert_eq!(
        file_change.field("location_id"),
        Some(&sync_core::WireValue::Uuid(Some(loc.gid)))
    );

    // The child first: its location has not arrived, so it waits.
    let report = b.receive(std::slice::from_ref(file_change)).await;
    assert_eq!(report.waiting, 1);
    assert!(
        entry::Model::find_by_id(b.engine.database(), file.gid)
            .await
            .unwrap()
            .is_none()
    );
    // Then everything, in reverse order: the engine orders it.
    let mut reversed = changes.clone();
    reversed.reverse();
    b.receive(&reversed).await;

    let find_entry = |id| entry::Model::find_by_id(b.engine.database(), id);
    let b_file = find_entry(file.gid).await.unwrap().unwrap();
    let b_dir = find_entry(dir.gid).await.unwrap().unwrap();
    let b_loc = location::Model::find_by_id(b.engine.database(), loc.gid)
        .await
        .unwrap()
        .unwrap();
    let b_vol = volume::Model::find_by_id(b.engine.database(), vol.gid)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(b_file.id, file.id, "local keys are the receiver's own");
    assert_eq!(b_file.parent_id, Some(b_dir.id));
    assert_eq!(b_file.location_id, b_loc.id);
    assert_eq!(b_loc.volume_id, Some(b_vol.id));
    assert!(!b_vol.is_online, "local-only field starts at its default");
    assert_eq!(b.engine.parked_len(), 0);
}

#[tokio::test]
async fn a_nullable_reference_waits_as_null_and_is_filled_in() {
    let a = device(1).await;
    let b = device(2).await;
    let (vol, loc, _, _, changes) = seed_tree(&a).await;
    let loc_change = changes.iter().find(|c| c.id == loc.gid).unwrap();
    let report = b.receive(std::slice::from_ref(loc_change)).await;
    assert_eq!(report.applied, 1, "shown, with the reference null for now");
    let b_loc = location::Model::find_by_id(b.engine.database(), loc.gid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_loc.volume_id, None);
    let vol_change = changes.iter().find(|c| c.id == vol.gid).unwrap();
    b.receive(std::slice::from_ref(vol_change)).await;
    let b_vol = volume::Model::find_by_id(b.engine.database(), vol.gid)
        .await
        .unwrap()
        .unwrap();
    let b_loc = location::Model::find_by_id(b.engine.database(), loc.gid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_loc.volume_id, Some(b_vol.id), "filled in when it arrived");
}

#[test]
fn metadata_describes_the_model() {
    let meta = entry::Model::META;
    assert_eq!(meta.name, "entries");
    assert_eq!(meta.ownership, Ownership::DeviceOwned);
    assert_eq!(meta.local_key, "id");
    assert_eq!(meta.id_field().unwrap().name, "gid");
    assert_eq!(meta.owner_field().unwrap().name, "device");
    let refs: Vec<_> = meta
        .references()
        .map(|r| (r.field, r.target, r.nullable))
        .collect();
    assert_eq!(
        refs,
        [
            ("location_id", "locations", false),
            ("parent_id", "entries", true),
            ("tag_id", "tags", true)
        ]
    );
    assert_eq!(meta.field("size").unwrap().role, FieldRole::Data);
    assert_eq!(every_type::Model::META.ownership, Ownership::Shared);
    assert_eq!(every_type::Model::META.local_only, ["local_note"]);
    assert!(every_type::Model::META.owner_field().is_none());
}

#[test]
fn the_registry_lists_models_in_dependency_order() {
    let registry = Registry::global().unwrap();
    let names: Vec<&str> = registry.models().iter().map(|m| m.name()).collect();
    let pos = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert_eq!(names.len(), 10);
    assert!(pos("collections") < pos("memberships"));
    assert!(pos("tags") < pos("memberships"));
    assert!(pos("volumes") < pos("locations"));
    // locations <-> entries is a cycle broken by the nullable root_entry_id.
    assert!(pos("locations") < pos("entries"));
    assert_eq!(registry.get("entries").unwrap().meta().name, "entries");
}
