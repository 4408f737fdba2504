//! A file library, the way a desktop file manager keeps one: devices, their
//! volumes, indexed locations and entries, and the user's tags, collections
//! and metadata. Seven models and two join tables, all synced.
//!
//! Three things here are hard for any sync engine, and kept on purpose:
//! a reference cycle broken only by a nullable edge (a location's root entry,
//! an entry's location), unique constraints on synced data (a device's slug;
//! an entry's name within its parent), and shared rows that reference
//! device-owned rows whose owner may delete them (collection entries).
#![allow(dead_code, unreachable_pub)]

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, Schema};

pub mod device {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    /// A machine in the library. Shared: any device may rename another.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "devices")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub name: String,
        /// Unique: two devices that pick the same slug concurrently are
        /// settled by the engine (the later write keeps it).
        #[sea_orm(unique)]
        pub slug: String,
        pub os: String,
        pub os_version: Option<String>,
        pub addresses: Json,
        pub is_online: bool,
        pub last_seen_at: DateTimeUtc,
        pub sync_enabled: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod volume {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    /// A disk, share or bucket seen by one device.
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
        #[sea_orm(unique)]
        pub fingerprint: String,
        pub display_name: String,
        pub mount_point: String,
        pub volume_type: Option<String>,
        pub capacity: Option<i64>,
        pub free: Option<i64>,
        /// Whether it is mounted now: this device's business only.
        #[sync(skip)]
        pub is_online: bool,
        #[sync(skip)]
        pub last_seen_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod location {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum IndexMode {
        #[sea_orm(string_value = "shallow")]
        Shallow,
        #[sea_orm(string_value = "deep")]
        Deep,
    }

    /// An indexed root folder on a device.
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
        /// The entry of the root folder: with `entry.location_id` a cycle
        /// that only this nullable edge breaks.
        #[sync(references = super::entry::Entity)]
        pub root_entry_id: Option<i64>,
        pub name: String,
        pub path: String,
        pub index_mode: IndexMode,
        pub total_file_count: i64,
        pub total_byte_size: i64,
        #[sync(skip)]
        pub scan_state: String,
        #[sync(skip)]
        pub error_message: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod entry {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum Kind {
        #[sea_orm(string_value = "file")]
        File,
        #[sea_orm(string_value = "directory")]
        Directory,
        #[sea_orm(string_value = "symlink")]
        Symlink,
    }

    /// A file, directory or symlink in a location's index. Unique among a
    /// location's entries by (parent, name, extension): see `create_schema`.
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
        #[sync(references = super::user_metadata::Entity)]
        pub user_metadata_id: Option<i32>,
        pub name: String,
        pub kind: Kind,
        pub extension: Option<String>,
        pub size: i64,
        pub modified_at: DateTimeUtc,
        #[sync(skip)]
        pub indexed_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tag {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    /// A label. Not unique by name: two devices may create the same name.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "tags")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub canonical_name: String,
        pub display_name: String,
        pub namespace: Option<String>,
        pub tag_type: String,
        pub color: Option<String>,
        pub aliases: Option<Json>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod collection {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

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
        pub description: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod user_metadata {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    /// Notes, flags and custom data a user attaches to an entry or content.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "user_metadata")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub scope: String,
        pub notes: Option<String>,
        pub favorite: bool,
        pub hidden: bool,
        pub custom_data: Json,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod collection_entry {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    /// An entry in a collection: a shared row that needs a device-owned one.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "collection_entries")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::collection::Entity)]
        pub collection_id: i32,
        #[sync(references = super::entry::Entity)]
        pub entry_id: i64,
        pub added_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod user_metadata_tag {
    use sea_orm::entity::prelude::*;
    use syncable::Syncable;

    #[derive(Clone, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
    #[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
    pub enum Source {
        #[sea_orm(string_value = "user")]
        User,
        #[sea_orm(string_value = "import")]
        Import,
        #[sea_orm(string_value = "sync")]
        Sync,
    }

    /// A tag applied to a user-metadata record.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "user_metadata_tags")]
    #[sync(shared)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        #[sync(references = super::user_metadata::Entity)]
        pub user_metadata_id: i32,
        #[sync(references = super::tag::Entity)]
        pub tag_id: i32,
        pub source: Source,
        pub confidence: f32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

async fn create<E: EntityTrait>(db: &DatabaseConnection, entity: E) -> Result<(), DbErr> {
    let schema = Schema::new(db.get_database_backend());
    let mut stmt = schema.create_table_from_entity(entity);
    stmt.if_not_exists();
    db.execute(&stmt).await?;
    Ok(())
}

/// Creates the application's tables (the engine creates its own).
pub async fn create_schema(db: &DatabaseConnection) -> Result<(), DbErr> {
    create(db, device::Entity).await?;
    create(db, volume::Entity).await?;
    create(db, location::Entity).await?;
    create(db, entry::Entity).await?;
    create(db, tag::Entity).await?;
    create(db, collection::Entity).await?;
    create(db, user_metadata::Entity).await?;
    create(db, collection_entry::Entity).await?;
    create(db, user_metadata_tag::Entity).await?;
    db.execute_unprepared(
        "CREATE UNIQUE INDEX IF NOT EXISTS entries_name_in_parent
         ON entries (location_id, parent_id, name, extension)",
    )
    .await?;
    Ok(())
}

/// Opens (or creates) a device's database file.
pub async fn open_database(path: &std::path::Path) -> Result<DatabaseConnection, DbErr> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut options = sea_orm::ConnectOptions::new(url);
    // WAL: a commit is one write to the log, and readers never wait for the
    // writer. NORMAL: no fsync per commit. A power loss can take back the
    // last commits; the engine starts a new incarnation when it opens, so it
    // never reuses a change number, and gets back from its peers whatever of
    // those commits they had received (docs/operations.md).
    // wal_autocheckpoint=0: no commit pays for a checkpoint (an fsync of the
    // database file, the slowest 1% of commits on a busy machine); the node
    // checkpoints in the background every second (Engine::checkpoint).
    // No ping before each use of a pooled connection: a local SQLite file
    // does not drop connections, and the ping is a round trip to the
    // connection's thread on every transaction.
    options
        .max_connections(4)
        .min_connections(1)
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .pragma("wal_autocheckpoint", "0")
        });
    let db = sea_orm::Database::connect(options).await?;
    create_schema(&db).await?;
    Ok(db)
}

use std::collections::HashMap;
use std::path::Path;

use sea_orm::ActiveValue::Set;
use syncable::core::{Engine, EngineError, SyncModel};
use uuid::Uuid;

/// Indexes the directory tree under `root` into a location and its entries,
/// written by `engine`'s device in transactions of up to 500 entries (each
/// pushed to peers as it commits). `progress` is told each entry. Returns the
/// location's id and the number of entries.
pub async fn index_directory(
    engine: &Engine,
    root: &Path,
    mut progress: impl FnMut(u64),
) -> Result<(Uuid, u64), EngineError> {
    let device = engine.device();
    let now = chrono::Utc::now();
    let mut tx = engine.begin().await?;
    let volume = tx
        .insert(volume::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(device),
            fingerprint: Set(format!("vol-{device}-{}", Uuid::new_v4().simple())),
            display_name: Set("Macintosh HD".into()),
            mount_point: Set("/".into()),
            volume_type: Set(Some("internal".into())),
            capacity: Set(Some(1 << 40)),
            free: Set(Some(1 << 39)),
            is_online: Set(true),
            last_seen_at: Set(Some(now)),
            ..Default::default()
        })
        .await?;
    let mut location = tx
        .insert(location::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(device),
            volume_id: Set(Some(volume.id)),
            root_entry_id: Set(None),
            name: Set(root
                .file_name()
                .map_or("root".into(), |n| n.to_string_lossy().into_owned())),
            path: Set(root.display().to_string()),
            index_mode: Set(location::IndexMode::Deep),
            total_file_count: Set(0),
            total_byte_size: Set(0),
            scan_state: Set("scanning".into()),
            error_message: Set(None),
            ..Default::default()
        })
        .await?;
    let mut ids: HashMap<std::path::PathBuf, i64> = HashMap::new();
    let (mut files, mut bytes, mut count) = (0i64, 0i64, 0u64);
    let mut root_entry = None;
    for item in walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
    {
        let path = item.path();
        let meta = item.metadata().ok();
        let kind = if item.file_type().is_dir() {
            entry::Kind::Directory
        } else if item.file_type().is_symlink() {
            entry::Kind::Symlink
        } else {
            entry::Kind::File
        };
        let (name, extension) = match (&kind, path.file_stem(), path.extension()) {
            (entry::Kind::File, Some(stem), Some(ext)) => (
                stem.to_string_lossy().into_owned(),
                Some(ext.to_string_lossy().into_owned()),
            ),
            _ => (item.file_name().to_string_lossy().into_owned(), None),
        };
        let size = meta.as_ref().map_or(0, |m| m.len() as i64);
        let modified = meta
            .and_then(|m| m.modified().ok())
            .map_or(now, chrono::DateTime::<chrono::Utc>::from);
        let parent_id = path.parent().and_then(|p| ids.get(p).copied());
        let row = tx
            .insert(entry::ActiveModel {
                gid: Set(Uuid::new_v4()),
                device: Set(device),
                location_id: Set(location.id),
                parent_id: Set(parent_id),
                user_metadata_id: Set(None),
                name: Set(name),
                kind: Set(kind.clone()),
                extension: Set(extension),
                size: Set(size),
                modified_at: Set(modified),
                indexed_at: Set(Some(now)),
                ..Default::default()
            })
            .await?;
        if kind == entry::Kind::Directory {
            ids.insert(path.to_owned(), row.id);
        } else {
            files += 1;
            bytes += size;
        }
        root_entry.get_or_insert(row.id);
        count += 1;
        progress(count);
        if count % 500 == 0 {
            tx.commit().await?;
            tx = engine.begin().await?;
        }
    }
    // Close the location <-> entry cycle.
    location = location::Model::find_by_id(tx.connection(), location.gid)
        .await?
        .unwrap_or(location);
    location.root_entry_id = root_entry;
    location.total_file_count = files;
    location.total_byte_size = bytes;
    location.scan_state = "idle".into();
    let gid = location.gid;
    tx.update(location).await?;
    tx.commit().await?;
    Ok((gid, count))
}
