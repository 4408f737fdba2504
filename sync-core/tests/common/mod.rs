//! Models and helpers shared by sync-core's integration tests.
#![allow(dead_code, missing_docs, unreachable_pub)]

pub mod sim;
pub mod workload;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait, Schema};

pub mod every_type {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum Kind {
        #[sea_orm(string_value = "file")]
        File,
        #[sea_orm(string_value = "directory")]
        Directory,
    }

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "i32", db_type = "Integer")]
    pub enum Priority {
        Low = 1,
        High = 9,
    }

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "every_type")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub i8_v: i8,
        pub i16_v: i16,
        pub i32_v: i32,
        pub i64_v: i64,
        pub u8_v: u8,
        pub u16_v: u16,
        pub u32_v: u32,
        pub char_v: String,
        pub f32_v: f32,
        pub f64_v: f64,
        pub bool_v: bool,
        pub text: String,
        pub opt_text: Option<String>,
        pub opt_i64: Option<i64>,
        pub opt_f64: Option<f64>,
        pub bytes: Vec<u8>,
        pub opt_bytes: Option<Vec<u8>>,
        pub other_id: Uuid,
        pub opt_uuid: Option<Uuid>,
        pub date: Date,
        pub time: Time,
        pub naive: DateTime,
        pub utc: DateTimeUtc,
        pub offset: DateTimeWithTimeZone,
        pub opt_utc: Option<DateTimeUtc>,
        pub json: Json,
        pub opt_json: Option<Json>,
        pub kind: Kind,
        pub opt_kind: Option<Kind>,
        pub priority: Priority,
        #[sync(skip)]
        pub local_note: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod volume {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "volumes")]
    #[sync(device_owned)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(owner)]
        pub device: Uuid,
        pub name: String,
        pub capacity: Option<i64>,
        #[sync(skip)]
        pub is_online: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod location {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "locations")]
    #[sync(device_owned)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(owner)]
        pub device: Uuid,
        #[sync(references = super::volume::Entity)]
        pub volume_id: Option<i32>,
        /// Closes the location <-> entry cycle; nullable, so it breaks it.
        #[sync(references = super::entry::Entity)]
        pub root_entry_id: Option<i64>,
        pub path: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod entry {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "entries")]
    #[sync(device_owned)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(owner)]
        pub device: Uuid,
        #[sync(references = super::location::Entity)]
        pub location_id: i32,
        #[sync(references = super::entry::Entity)]
        pub parent_id: Option<i64>,
        /// A device-owned row referencing a shared one.
        #[sync(references = super::tag::Entity)]
        pub tag_id: Option<i32>,
        pub name: String,
        pub size: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A fresh in-memory database with the test models' tables.
pub async fn database() -> DatabaseConnection {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await.unwrap();
    create_all(&db).await;
    db
}

pub async fn create_table<E: EntityTrait>(db: &DatabaseConnection, entity: E) {
    let schema = Schema::new(db.get_database_backend());
    let stmt = schema.create_table_from_entity(entity);
    db.execute(&stmt).await.unwrap();
}

pub mod tag {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

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
        pub weight: i64,
        #[sync(references = super::tag::Entity)]
        pub parent_id: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod collection {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "collections")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A new top-level tag named `name`.
pub fn new_tag(name: &str) -> tag::ActiveModel {
    use sea_orm::ActiveValue::Set;
    tag::ActiveModel {
        gid: Set(Uuid::new_v4()),
        name: Set(name.into()),
        color: Set(None),
        weight: Set(0),
        parent_id: Set(None),
        ..Default::default()
    }
}

/// A new collection named `name`.
pub fn new_collection(name: &str) -> collection::ActiveModel {
    use sea_orm::ActiveValue::Set;
    collection::ActiveModel {
        gid: Set(Uuid::new_v4()),
        name: Set(name.into()),
        ..Default::default()
    }
}

/// A shared row that needs a collection and may name a tag.
pub mod membership {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "memberships")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::collection::Entity)]
        pub collection_id: i32,
        #[sync(references = super::tag::Entity)]
        pub tag_id: Option<i32>,
        pub note: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A shared model with a unique text column.
pub mod label {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "labels")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sea_orm(unique)]
        pub slug: String,
        pub title: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A device-owned model with a unique text column.
pub mod file {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "files")]
    #[sync(device_owned)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(owner)]
        pub device: Uuid,
        #[sea_orm(unique)]
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A shared model with a unique column that is not text: a collision can
/// only be settled by not showing the loser.
pub mod seat {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "seats")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sea_orm(unique)]
        pub number: i32,
        pub holder: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub async fn create_all(db: &DatabaseConnection) {
    create_table(db, seat::Entity).await;
    create_table(db, label::Entity).await;
    create_table(db, file::Entity).await;
    create_table(db, every_type::Entity).await;
    create_table(db, volume::Entity).await;
    create_table(db, location::Entity).await;
    create_table(db, entry::Entity).await;
    create_table(db, tag::Entity).await;
    create_table(db, collection::Entity).await;
    create_table(db, membership::Entity).await;
}

use std::sync::Arc;
use std::time::Duration;
use sync_core::clock::ManualTime;
use sync_core::{Change, Engine, EngineConfig};
use uuid::Uuid;

/// The physical time every test device starts at.
pub const EPOCH: Duration = Duration::from_secs(1_750_000_000);

/// One simulated device: an engine over its own database, with a clock the
/// test moves.
pub struct Device {
    pub engine: Engine,
    pub time: ManualTime,
    pub id: Uuid,
}

/// Device `n`'s key: the same for every run, so ids are stable.
pub fn device_key(n: u128) -> sync_core::DeviceKey {
    let mut seed = [0xD0; 32];
    seed[..16].copy_from_slice(&n.to_le_bytes());
    sync_core::DeviceKey::from_seed(seed).unwrap()
}

pub fn device_id(n: u128) -> Uuid {
    device_key(n).device()
}

/// A device over a fresh in-memory database.
pub async fn device(n: u128) -> Device {
    let db = database().await;
    open_device(db, n, ManualTime::new(EPOCH)).await
}

/// A device over the SQLite file at `path` (created if missing).
pub async fn device_at(path: &std::path::Path, n: u128, time: ManualTime) -> Device {
    let db = file_database(path, 1).await;
    open_device(db, n, time).await
}

/// The SQLite file at `path` (created if missing) in WAL mode with
/// synchronous=NORMAL, over a pool of `connections`.
pub async fn file_database(path: &std::path::Path, connections: u32) -> DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(connections)
        .min_connections(1)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
        });
    let db = Database::connect(options).await.unwrap();
    create_all_if_missing(&db).await;
    db
}

async fn create_all_if_missing(db: &DatabaseConnection) {
    let schema = Schema::new(db.get_database_backend());
    macro_rules! create {
        ($($e:expr),*) => {$(
            let mut stmt = schema.create_table_from_entity($e);
            stmt.if_not_exists();
            db.execute(&stmt).await.unwrap();
        )*};
    }
    create!(
        seat::Entity,
        label::Entity,
        file::Entity,
        every_type::Entity,
        volume::Entity,
        location::Entity,
        entry::Entity,
        tag::Entity,
        collection::Entity,
        membership::Entity
    );
}

pub async fn open_device(db: DatabaseConnection, n: u128, time: ManualTime) -> Device {
    let key = device_key(n);
    let id = key.device();
    let config = EngineConfig::new()
        .time(Arc::new(time.clone()))
        .max_drift(Duration::from_secs(5))
        .origin(workload::fresh_id());
    let engine = Engine::open(db, key, config).await.unwrap();
    Device { engine, time, id }
}

/// Pairs every device with every other.
pub async fn pair_each(devices: &[&Device]) {
    for x in devices {
        for y in devices {
            if x.id != y.id {
                x.engine.pair(y.id).await.unwrap();
            }
        }
    }
}

impl Device {
    /// Applies changes as received from a peer; panics on a refused one.
    pub async fn receive(&self, changes: &[Change]) -> sync_core::ApplyReport {
        let report = self.engine.apply(changes.to_vec()).await.unwrap();
        assert!(
            report.rejected.is_empty(),
            "rejected: {:?}",
            report.rejected
        );
        report
    }

    pub async fn content(&self) -> Vec<sync_core::SyncedRow> {
        self.engine.content().await.unwrap()
    }
}

/// A copy of `change` made to look as if `by` wrote it as its change `seq`:
/// its device, origin and clock are `by`'s.
pub fn forge(change: &Change, by: &Device, seq: u64) -> Change {
    let mut forged = change.clone();
    forged.device = by.id;
    forged.origin = by.engine.origin();
    forged.seq = seq;
    // One clock names one write: each forgery gets its own.
    forged.hlc = sync_core::clock::Timestamp::new(
        sync_core::clock::NTP64(change.hlc.get_time().0 + (seq << 4)),
        sync_core::clock::clock_id(by.engine.origin()).unwrap(),
    );
    forged
}
