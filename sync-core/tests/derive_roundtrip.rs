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
use common::{database, entry, every_type, location, volume};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, TransactionTrait};
use sync_core::{ApplyError, FieldRole, FieldValue, MissingParent, Ownership, Registry, SyncModel};
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

/// Encodes the fields as they would travel and decodes them again.
fn over_the_wire(fields: &[FieldValue]) -> Vec<FieldValue> {
    let bytes = rmp_serde::to_vec(fields).unwrap();
    rmp_serde::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn every_field_type_round_trips_through_the_wire() {
    let a = database().await;
    let b = database().await;
    let gid = Uuid::new_v4();
    let original = sample(gid).insert(&a).await.unwrap();

    let fields = original.capture(&a).await.unwrap();
    assert_eq!(fields.len(), every_type::Model::META.fields.len());
    assert!(
        fields
            .iter()
            .all(|f| f.name != "id" && f.name != "local_note")
    );

    let tx = b.begin().await.unwrap();
    let applied =
        every_type::Model::apply(&tx, gid, &over_the_wire(&fields), MissingParent::Refuse)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    assert!(applied.inserted);

    let copy = every_type::Entity::find_by_id(1)
        .one(&b)
        .await
        .unwrap()
        .unwrap();
    // Everything synced is equal; the local-only field took its default.
    let expected = every_type::Model {
        local_note: String::new(),
        ..original.clone()
    };
    assert_eq!(copy, expected);
    assert_eq!(copy.f32_v.to_bits(), original.f32_v.to_bits());
    assert_eq!(copy.f64_v.to_bits(), original.f64_v.to_bits());
    // And it captures to identical wire fields.
    assert_eq!(copy.capture(&b).await.unwrap(), fields);
}

#[tokio::test]
async fn diff_names_exactly_the_changed_fields() {
    let db = database().await;
    let old = sample(Uuid::new_v4()).insert(&db).await.unwrap();
    let mut new = old.clone();
    assert!(
        every_type::Model::diff(&old, &new, &db)
            .await
            .unwrap()
            .is_empty()
    );

    new.text = "renamed".into();
    new.opt_kind = None;
    new.f32_v = 2.5;
    new.local_note = "local edits are not sync changes".into();
    let diff = every_type::Model::diff(&old, &new, &db).await.unwrap();
    let names: Vec<&str> = diff.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["f32_v", "text", "opt_kind"]);
    assert_eq!(
        diff[1].value,
        sync_core::WireValue::String(Some("renamed".into()))
    );
    assert!(diff[2].value.is_null());
}

#[tokio::test]
async fn applying_a_diff_updates_only_those_fields() {
    let a = database().await;
    let b = database().await;
    let gid = Uuid::new_v4();
    let old = sample(gid).insert(&a).await.unwrap();
    let tx = b.begin().await.unwrap();
    every_type::Model::apply(
        &tx,
        gid,
        &old.capture(&a).await.unwrap(),
        MissingParent::Refuse,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // b edits a local-only field; a edits a synced one.
    let mut local = every_type::Entity::find_by_id(1)
        .one(&b)
        .await
        .unwrap()
        .unwrap();
    local.local_note = "b's note".into();
    let mut am: every_type::ActiveModel = local.clone().into();
    am.local_note = Set(local.local_note.clone());
    am.update(&b).await.unwrap();

    let mut new = old.clone();
    new.i64_v = 99;
    let diff = every_type::Model::diff(&old, &new, &a).await.unwrap();
    let tx = b.begin().await.unwrap();
    let applied = every_type::Model::apply(&tx, gid, &over_the_wire(&diff), MissingParent::Refuse)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!applied.inserted);
    let after = every_type::Entity::find_by_id(1)
        .one(&b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.i64_v, 99);
    assert_eq!(
        after.local_note, "b's note",
        "a peer never overwrites a local-only field"
    );
    assert_eq!(after.text, old.text);
}

#[tokio::test]
async fn a_partial_record_cannot_create_a_row() {
    let db = database().await;
    let tx = db.begin().await.unwrap();
    let err = every_type::Model::apply(
        &tx,
        Uuid::new_v4(),
        &[FieldValue::new(
            "text",
            sync_core::WireValue::String(Some("x".into())),
        )],
        MissingParent::Refuse,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ApplyError::Incomplete { .. }), "{err}");
}

#[tokio::test]
async fn malformed_records_are_refused_without_writing() {
    let db = database().await;
    let gid = Uuid::new_v4();
    let original = sample(gid).insert(&db).await.unwrap();
    let mut fields = original.capture(&db).await.unwrap();

    type Expect = fn(&ApplyError) -> bool;
    let cases: Vec<(Vec<FieldValue>, Expect)> = vec![
        (
            vec![FieldValue::new(
                "no_such_field",
                sync_core::WireValue::Bool(Some(true)),
            )],
            |e| matches!(e, ApplyError::UnknownField { .. }),
        ),
        (
            vec![FieldValue::new(
                "i8_v",
                sync_core::WireValue::String(Some("seven".into())),
            )],
            |e| matches!(e, ApplyError::Value { field: "i8_v", .. }),
        ),
        (
            vec![FieldValue::new("text", sync_core::WireValue::String(None))],
            |e| matches!(e, ApplyError::Value { field: "text", .. }),
        ),
        (
            vec![
                FieldValue::new("text", sync_core::WireValue::String(Some("a".into()))),
                FieldValue::new("text", sync_core::WireValue::String(Some("b".into()))),
            ],
            |e| matches!(e, ApplyError::DuplicateField { .. }),
        ),
        (
            vec![FieldValue::new(
                "gid",
                sync_core::WireValue::Uuid(Some(Uuid::new_v4())),
            )],
            |e| matches!(e, ApplyError::IdMismatch { .. }),
        ),
        (
            // A value SQLite cannot hold is refused before it reaches the driver.
            vec![FieldValue::new(
                "u32_v",
                sync_core::WireValue::U64(Some(u64::MAX)),
            )],
            |e| {
                matches!(
                    e,
                    ApplyError::Value {
                        field: "u32_v",
                        source: sync_core::ValueError::OutOfRange(_),
                        ..
                    }
                )
            },
        ),
        (
            vec![FieldValue::new(
                "json",
                sync_core::WireValue::Json(Some("{not json".into())),
            )],
            |e| matches!(e, ApplyError::Value { field: "json", .. }),
        ),
    ];
    for (record, expected) in cases {
        let tx = db.begin().await.unwrap();
        let err = every_type::Model::apply(&tx, gid, &record, MissingParent::Refuse)
            .await
            .unwrap_err();
        assert!(expected(&err), "unexpected error: {err}");
        tx.rollback().await.unwrap();
    }
    let unchanged = every_type::Entity::find_by_id(1)
        .one(&db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(unchanged, original);
    fields.clear();
}

async fn seed_tree(
    db: &sea_orm::DatabaseConnection,
    device: Uuid,
) -> (volume::Model, location::Model, entry::Model, entry::Model) {
    let vol = volume::ActiveModel {
        gid: Set(Uuid::new_v4()),
        device: Set(device),
        name: Set("disk".into()),
        capacity: Set(Some(1 << 40)),
        is_online: Set(true),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    let loc = location::ActiveModel {
        gid: Set(Uuid::new_v4()),
        device: Set(device),
        volume_id: Set(Some(vol.id)),
        root_entry_id: Set(None),
        path: Set("/home/me".into()),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    let dir = entry::ActiveModel {
        gid: Set(Uuid::new_v4()),
        device: Set(device),
        location_id: Set(loc.id),
        parent_id: Set(None),
        name: Set("photos".into()),
        size: Set(0),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    let file = entry::ActiveModel {
        gid: Set(Uuid::new_v4()),
        device: Set(device),
        location_id: Set(loc.id),
        parent_id: Set(Some(dir.id)),
        name: Set("cat.jpg".into()),
        size: Set(12_345),
        ..Default::default()
    }
    .insert(db)
    .await
    .unwrap();
    (vol, loc, dir, file)
}

#[tokio::test]
async fn references_travel_as_global_ids_and_map_back_to_local_keys() {
    let a = database().await;
    let b = database().await;
    let device = Uuid::new_v4();
    let (vol, loc, dir, file) = seed_tree(&a, device).await;

    // Give b an unrelated row first so local keys differ between devices.
    seed_tree(&b, Uuid::new_v4()).await;

    let file_fields = file.capture(&a).await.unwrap();
    let parent = file_fields.iter().find(|f| f.name == "parent_id").unwrap();
    assert_eq!(parent.value, sync_core::WireValue::Uuid(Some(dir.gid)));
    let location = file_fields
        .iter()
        .find(|f| f.name == "location_id")
        .unwrap();
    assert_eq!(location.value, sync_core::WireValue::Uuid(Some(loc.gid)));

    // The child first: its parent has not arrived.
    let tx = b.begin().await.unwrap();
    let err = entry::Model::apply(&tx, file.gid, &file_fields, MissingParent::Refuse)
        .await
        .unwrap_err();
    match err {
        ApplyError::MissingParent {
            parent,
            target,
            field,
            ..
        } => {
            assert_eq!(
                (parent, target, field),
                (loc.gid, "locations", "location_id")
            );
        }
        other => panic!("expected MissingParent, got {other}"),
    }
    tx.rollback().await.unwrap();

    // Then in dependency order.
    let tx = b.begin().await.unwrap();
    volume::Model::apply(
        &tx,
        vol.gid,
        &vol.capture(&a).await.unwrap(),
        MissingParent::Refuse,
    )
    .await
    .unwrap();
    location::Model::apply(
        &tx,
        loc.gid,
        &loc.capture(&a).await.unwrap(),
        MissingParent::Refuse,
    )
    .await
    .unwrap();
    entry::Model::apply(
        &tx,
        dir.gid,
        &dir.capture(&a).await.unwrap(),
        MissingParent::Refuse,
    )
    .await
    .unwrap();
    entry::Model::apply(&tx, file.gid, &file_fields, MissingParent::Refuse)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let b_file = entry::Model::find_by_id(&b, file.gid)
        .await
        .unwrap()
        .unwrap();
    let b_dir = entry::Model::find_by_id(&b, dir.gid)
        .await
        .unwrap()
        .unwrap();
    let b_loc = location::Model::find_by_id(&b, loc.gid)
        .await
        .unwrap()
        .unwrap();
    let b_vol = volume::Model::find_by_id(&b, vol.gid)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(b_file.id, file.id, "local keys are the receiver's own");
    assert_eq!(b_file.parent_id, Some(b_dir.id));
    assert_eq!(b_file.location_id, b_loc.id);
    assert_eq!(b_loc.volume_id, Some(b_vol.id));
    assert!(!b_vol.is_online, "local-only field starts at its default");
    assert_eq!(b_file.capture(&b).await.unwrap(), file_fields);
}

#[tokio::test]
async fn a_nullable_reference_can_be_deferred() {
    let a = database().await;
    let b = database().await;
    let (vol, loc, _, _) = seed_tree(&a, Uuid::new_v4()).await;
    let fields = loc.capture(&a).await.unwrap();
    let tx = b.begin().await.unwrap();
    let applied = location::Model::apply(&tx, loc.gid, &fields, MissingParent::DeferNullable)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.deferred.len(), 1);
    assert_eq!(applied.deferred[0].parent, vol.gid);
    assert_eq!(applied.deferred[0].field, "volume_id");
    let b_loc = location::Model::find_by_id(&b, loc.gid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_loc.volume_id, None);
}

#[tokio::test]
async fn delete_by_global_id() {
    let db = database().await;
    let (vol, _, _, _) = seed_tree(&db, Uuid::new_v4()).await;
    let tx = db.begin().await.unwrap();
    assert!(volume::Model::delete_by_id(&tx, vol.gid).await.unwrap());
    assert!(!volume::Model::delete_by_id(&tx, vol.gid).await.unwrap());
    tx.commit().await.unwrap();
    assert!(
        volume::Model::find_by_id(&db, vol.gid)
            .await
            .unwrap()
            .is_none()
    );
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
            ("parent_id", "entries", true)
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
    assert_eq!(names.len(), 9);
    assert!(pos("collections") < pos("memberships"));
    assert!(pos("tags") < pos("memberships"));
    assert!(pos("volumes") < pos("locations"));
    // locations <-> entries is a cycle broken by the nullable root_entry_id.
    assert!(pos("locations") < pos("entries"));
    assert_eq!(registry.get("entries").unwrap().meta().name, "entries");
}
