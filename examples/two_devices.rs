//! Two devices, each with its own SQLite database, edit the same library
//! while apart, then exchange what they wrote. Concurrent edits of different
//! fields both survive, the same field takes the later write everywhere and
//! the loser is in the conflict log, a delete beats a concurrent edit, and a
//! child that arrives before its parent waits for it. Both devices end with
//! identical synced tables.
//!
//! Run with `cargo run --release --example two_devices`.
#![allow(unreachable_pub)]

use std::time::Duration;

use sea_orm::{
    ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Schema,
};
use syncable::core::{Change, DeviceKey, Engine, EngineConfig, SyncModel};
use uuid::Uuid;

mod tag {
    use syncable::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "tags")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub name: String,
        pub color: Option<String>,
        /// Local-only: never sent, never overwritten by a peer.
        #[sync(skip)]
        pub pinned: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod tagging {
    use syncable::prelude::*;

    /// A tag applied to a file name; it cannot exist without its tag.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "taggings")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::tag::Entity)]
        pub tag_id: i32,
        pub file: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

type Error = Box<dyn std::error::Error>;

async fn open_device(name: &str) -> Result<Engine, Error> {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).sqlx_logging(false);
    let db: DatabaseConnection = Database::connect(options).await?;
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(tag::Entity))
        .await?;
    db.execute(&schema.create_table_from_entity(tagging::Entity))
        .await?;
    let (key, _) = DeviceKey::generate()?;
    println!("{name:>6} is device {}", key.device());
    Ok(Engine::open(db, key, EngineConfig::new()).await?)
}

fn new_tag(name: &str) -> tag::ActiveModel {
    tag::ActiveModel {
        gid: Set(Uuid::new_v4()),
        name: Set(name.into()),
        color: Set(None),
        pinned: Set(false),
        ..Default::default()
    }
}

/// Applies changes one by one, as they would trickle in.
async fn deliver_one_by_one(engine: &Engine, changes: Vec<Change>) -> Result<(), Error> {
    for change in changes {
        let waiting = engine.parked_len();
        let report = engine.apply(vec![change]).await?;
        if report.waiting > 0 {
            println!("  laptop: a tagging arrived before its tag; it waits");
        }
        if engine.parked_len() < waiting {
            println!("  laptop: the tag arrived; the waiting tagging is shown");
        }
    }
    Ok(())
}

/// Ships changes as they would travel: encoded, then decoded.
fn over_the_wire(changes: &[Change]) -> Result<(Vec<Change>, usize), Error> {
    let bytes = rmp_serde::to_vec(changes)?;
    Ok((rmp_serde::from_slice(&bytes)?, bytes.len()))
}

async fn edit<F: FnOnce(&mut tag::Model)>(
    d: &Engine,
    id: Uuid,
    f: F,
) -> Result<Vec<Change>, Error> {
    let mut tx = d.begin().await?;
    let mut row = tag::Model::find_by_id(tx.connection(), id)
        .await?
        .ok_or("tag missing")?;
    f(&mut row);
    tx.update(row).await?;
    Ok(tx.commit().await?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let laptop = open_device("laptop").await?;
    let phone = open_device("phone").await?;

    // The laptop creates three tags; the phone receives them.
    let mut tx = laptop.begin().await?;
    let music = tx.insert(new_tag("music")).await?;
    let photos = tx.insert(new_tag("photos")).await?;
    let old = tx.insert(new_tag("old stuff")).await?;
    let created = tx.commit().await?;
    let (received, bytes) = over_the_wire(&created)?;
    phone.apply(received).await?;
    println!("\nlaptop created 3 tags ({bytes} bytes on the wire); phone has them");

    // Apart, both edit. Different fields of `music`, the same field of
    // `photos`, and the laptop deletes `old stuff` while the phone renames it.
    let mut from_laptop = Vec::new();
    let mut from_phone = Vec::new();
    from_laptop.extend(edit(&laptop, music.gid, |t| t.name = "Music".into()).await?);
    from_phone.extend(edit(&phone, music.gid, |t| t.color = Some("teal".into())).await?);
    from_laptop.extend(edit(&laptop, photos.gid, |t| t.name = "Pictures".into()).await?);
    tokio::time::sleep(Duration::from_millis(5)).await;
    from_phone.extend(edit(&phone, photos.gid, |t| t.name = "Camera roll".into()).await?);
    from_phone.extend(edit(&phone, old.gid, |t| t.name = "keep me?".into()).await?);
    let mut tx = laptop.begin().await?;
    tx.delete::<tag::Model>(old.gid).await?;
    from_laptop.extend(tx.commit().await?);

    // The phone also tags a file, and sends the tagging before the tag: the
    // tagging waits, durably, until its tag arrives.
    let mut tx = phone.begin().await?;
    let jazz = tx.insert(new_tag("jazz")).await?;
    tx.insert(tagging::ActiveModel {
        gid: Set(Uuid::new_v4()),
        tag_id: Set(jazz.id),
        file: Set("so-what.flac".into()),
        ..Default::default()
    })
    .await?;
    let mut tagged = tx.commit().await?;
    tagged.reverse();
    from_phone.extend(tagged);

    let (to_phone, laptop_bytes) = over_the_wire(&from_laptop)?;
    let (to_laptop, phone_bytes) = over_the_wire(&from_phone)?;
    phone.apply(to_phone).await?;
    deliver_one_by_one(&laptop, to_laptop).await?;
    println!(
        "they exchange {} + {} changes ({laptop_bytes} + {phone_bytes} bytes)",
        from_laptop.len(),
        from_phone.len()
    );

    println!("\nconflict log on the laptop:");
    for c in laptop.conflicts().await? {
        let value =
            |v: Option<syncable::core::WireValue>| v.map_or("the delete".into(), |v| v.to_string());
        println!(
            "  {:?} {}.{}: {} from {} lost to {}",
            c.kind,
            c.model,
            c.field.as_deref().unwrap_or("*"),
            value(c.loser.value),
            c.loser.device,
            value(c.winner.and_then(|w| w.value))
        );
    }

    let on_laptop = laptop.content().await?;
    let on_phone = phone.content().await?;
    println!("\nsynced rows, identical on both devices:");
    for row in &on_laptop {
        let fields: Vec<String> = row
            .fields
            .iter()
            .filter(|f| f.name != "gid")
            .map(|f| format!("{}={}", f.name, f.value))
            .collect();
        println!("  {} {}: {}", row.model, row.id, fields.join(", "));
    }
    if on_laptop != on_phone {
        return Err("the devices did not converge".into());
    }
    println!("\nconverged: {} rows on each device", on_laptop.len());
    Ok(())
}
