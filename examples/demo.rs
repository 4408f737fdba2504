//! Two devices, each with its own SQLite database, and one tag that travels
//! between them through what `#[derive(Syncable)]` generates: capture on the
//! writer, the wire encoding, apply on the reader, then an edit that travels
//! as a diff of exactly the changed fields.
//!
//! Run with `cargo run --release --example demo`.
#![allow(unreachable_pub)]

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DbErr, EntityTrait, Schema, TransactionTrait,
};
use syncable::core::{FieldValue, MissingParent, Registry, SyncModel};
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

async fn open_device() -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await?;
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(tag::Entity))
        .await?;
    Ok(db)
}

fn encode(fields: &[FieldValue]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    Ok(rmp_serde::to_vec(fields)?)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::global()?;
    println!("registered models, in dependency order:");
    for model in registry.models() {
        let meta = model.meta();
        let fields: Vec<&str> = meta.fields.iter().map(|f| f.name).collect();
        println!(
            "  {} ({:?}): synced {:?}, local only {:?}",
            meta.name, meta.ownership, fields, meta.local_only
        );
    }

    let laptop = open_device().await?;
    let phone = open_device().await?;

    let gid = Uuid::new_v4();
    let written = tag::ActiveModel {
        gid: Set(gid),
        name: Set("holidays".into()),
        color: Set(Some("teal".into())),
        pinned: Set(true),
        ..Default::default()
    }
    .insert(&laptop)
    .await?;

    let record = written.capture(&laptop).await?;
    let bytes = encode(&record)?;
    println!(
        "\nlaptop wrote {gid}; its record is {} bytes on the wire",
        bytes.len()
    );
    let received: Vec<FieldValue> = rmp_serde::from_slice(&bytes)?;
    let tx = phone.begin().await?;
    tag::Model::apply(&tx, gid, &received, MissingParent::Refuse).await?;
    tx.commit().await?;

    let mut edited = written.clone();
    edited.color = Some("orange".into());
    let diff = tag::Model::diff(&written, &edited, &laptop).await?;
    println!(
        "laptop recolours it; the diff carries {:?} ({} bytes)",
        diff.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        encode(&diff)?.len()
    );
    let received: Vec<FieldValue> = rmp_serde::from_slice(&encode(&diff)?)?;
    let tx = phone.begin().await?;
    tag::Model::apply(&tx, gid, &received, MissingParent::Refuse).await?;
    tx.commit().await?;

    let on_phone = tag::Model::find_by_id(&phone, gid)
        .await?
        .ok_or("the tag did not reach the phone")?;
    let on_laptop = tag::Entity::find_by_id(written.id)
        .one(&laptop)
        .await?
        .ok_or("the laptop lost its tag")?;
    println!("\nphone has: {on_phone:?}");
    let same = on_phone.capture(&phone).await? == edited.capture(&laptop).await?;
    println!(
        "synced fields equal: {same}; local-only `pinned`: laptop {}, phone {}",
        on_laptop.pinned, on_phone.pinned
    );
    if !same {
        return Err("devices differ".into());
    }
    Ok(())
}
