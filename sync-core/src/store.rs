//! The engine's state in the application's SQLite database: the only module
//! that speaks SQL. Every table is prefixed `_sync_`.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::Change;
use crate::clock::{ID, NTP64, Timestamp};
use crate::conflict::{Conflict, ConflictKind, Write};
use crate::vector::VersionVector;

/// The schema this engine writes. Bumped by every change to the `_sync_*`
/// tables; each bump adds a step to the migration.
pub const SCHEMA_VERSION: u32 = 1;

/// The engine's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbErr),
    /// The database was written by a newer engine.
    #[error(
        "this database's sync schema is version {found}, newer than this engine's {supported}: upgrade the application"
    )]
    NewerSchema {
        /// The version found.
        found: u32,
        /// The newest this engine knows.
        supported: u32,
    },
    /// Stored sync state does not decode.
    #[error("corrupt sync state in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn corrupt(table: &'static str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

fn blob(bytes: impl Into<Vec<u8>>) -> Value {
    Value::Bytes(Some(bytes.into()))
}

fn uuid_value(id: Uuid) -> Value {
    blob(id.as_bytes().to_vec())
}

fn get_uuid(row: &QueryResult, col: &str, table: &'static str) -> Result<Uuid, StoreError> {
    let bytes: Vec<u8> = row.try_get("", col)?;
    Uuid::from_slice(&bytes).map_err(|e| corrupt(table, e))
}

/// A timestamp as 24 sortable bytes: the time big-endian, then the id.
pub(crate) fn timestamp_bytes(ts: &Timestamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&ts.get_time().0.to_be_bytes());
    out.extend_from_slice(&ts.get_id().to_le_bytes());
    out
}

pub(crate) fn timestamp_from_bytes(bytes: &[u8]) -> Option<Timestamp> {
    let time: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let id: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
    let id = ID::try_from(&id).ok()?;
    Some(Timestamp::new(NTP64(u64::from_be_bytes(time)), id))
}

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS _sync_meta (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    )",
    // Shared changes, kept for catch-up and relay until every peer has them.
    "CREATE TABLE IF NOT EXISTS _sync_log (
        origin BLOB NOT NULL,
        seq INTEGER NOT NULL,
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        change BLOB NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID",
    // Per record: the merge state that must survive log pruning. Shared
    // records keep each field's clock; device-owned records their owner and
    // the owner's version; deleted records stay as tombstones.
    "CREATE TABLE IF NOT EXISTS _sync_rows (
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        owner BLOB,
        version INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0,
        deleted_at BLOB,
        clocks BLOB,
        hlc BLOB,
        PRIMARY KEY (model, record)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS _sync_rows_owner ON _sync_rows (owner, version)",
    // Changes waiting for a record that has not arrived. `part` is '' for a
    // whole change, or the name of one deferred nullable reference.
    // Snapshot rows travel as changes numbered 0, so a parked change is
    // named by its record as well as its number.
    "CREATE TABLE IF NOT EXISTS _sync_parked (
        origin BLOB NOT NULL,
        seq INTEGER NOT NULL,
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        part TEXT NOT NULL,
        parent_model TEXT NOT NULL,
        parent BLOB NOT NULL,
        change BLOB NOT NULL,
        PRIMARY KEY (origin, seq, model, record, part)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS _sync_parked_parent ON _sync_parked (parent_model, parent)",
    // Per origin, the highest number up to which this device holds
    // everything (its version vector).
    "CREATE TABLE IF NOT EXISTS _sync_vector (
        origin BLOB PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID",
    // Paired peers: what each has acknowledged, when it was last heard.
    "CREATE TABLE IF NOT EXISTS _sync_peers (
        peer BLOB PRIMARY KEY NOT NULL,
        acked BLOB,
        last_seen INTEGER,
        expired INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID",
    // Per origin, the number up to which log entries have been pruned.
    "CREATE TABLE IF NOT EXISTS _sync_pruned (
        origin BLOB PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS _sync_conflicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        field TEXT,
        loser BLOB NOT NULL,
        winner BLOB
    )",
];

/// Creates or upgrades the `_sync_*` tables.
pub(crate) async fn migrate<C: ConnectionTrait>(db: &C) -> Result<(), StoreError> {
    for sql in TABLES {
        db.execute_unprepared(sql).await?;
    }
    match get_meta(db, "schema_version").await? {
        None => set_meta(db, "schema_version", SCHEMA_VERSION.to_be_bytes().to_vec()).await?,
        Some(bytes) => {
            let found = u32::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("_sync_meta", "schema_version is not 4 bytes"))?,
            );
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
        }
    }
    Ok(())
}

/// A value of `_sync_meta`.
pub(crate) async fn get_meta<C: ConnectionTrait>(
    db: &C,
    key: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT value FROM _sync_meta WHERE key = ?",
            vec![key.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get("", "value")?),
        None => None,
    })
}

/// Sets a value of `_sync_meta`.
pub(crate) async fn set_meta<C: ConnectionTrait>(
    db: &C,
    key: &str,
    value: Vec<u8>,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "INSERT INTO _sync_meta (key, value) VALUES (?, ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        vec![key.into(), blob(value)],
    ))
    .await?;
    Ok(())
}

/// A `u64` of `_sync_meta`, 0 when absent.
pub(crate) async fn get_meta_u64<C: ConnectionTrait>(db: &C, key: &str) -> Result<u64, StoreError> {
    match get_meta(db, key).await? {
        None => Ok(0),
        Some(bytes) => {
            Ok(u64::from_be_bytes(bytes.as_slice().try_into().map_err(
                |_| corrupt("_sync_meta", format!("{key} is not 8 bytes")),
            )?))
        }
    }
}

/// Sets a `u64` of `_sync_meta`.
pub(crate) async fn set_meta_u64<C: ConnectionTrait>(
    db: &C,
    key: &str,
    value: u64,
) -> Result<(), StoreError> {
    set_meta(db, key, value.to_be_bytes().to_vec()).await
}

/// The clock of a shared record's field: the write that set it, and the
/// version that write overwrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FieldClock {
    /// The winning write's timestamp.
    pub(crate) hlc: Timestamp,
    /// The field version that write replaced.
    pub(crate) base: Option<Timestamp>,
}

/// A record's merge state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RowState {
    /// The owning device (device-owned records).
    pub(crate) owner: Option<Uuid>,
    /// The owner's change number of the state held (device-owned records).
    pub(crate) version: Option<u64>,
    /// Whether the record is deleted (a tombstone).
    pub(crate) deleted: bool,
    /// The delete's timestamp.
    pub(crate) deleted_at: Option<Timestamp>,
    /// Per-field clocks (shared records).
    pub(crate) clocks: BTreeMap<String, FieldClock>,
    /// The timestamp of the state held (device-owned records).
    pub(crate) hlc: Option<Timestamp>,
}

/// The merge state of a record, if any.
pub(crate) async fn load_row<C: ConnectionTrait>(
    db: &C,
    model: &str,
    record: Uuid,
) -> Result<Option<RowState>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT owner, version, deleted, deleted_at, clocks, hlc FROM _sync_rows WHERE model = ? AND record = ?",
            vec![model.into(), uuid_value(record)],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    row_state(&row).map(Some)
}

fn optional_timestamp(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<Timestamp>, StoreError> {
    match bytes {
        Some(b) => {
            Ok(Some(timestamp_from_bytes(&b).ok_or_else(|| {
                corrupt("_sync_rows", format!("bad {what}"))
            })?))
        }
        None => Ok(None),
    }
}

fn row_state(row: &QueryResult) -> Result<RowState, StoreError> {
    let owner: Option<Vec<u8>> = row.try_get("", "owner")?;
    let version: Option<i64> = row.try_get("", "version")?;
    let deleted: i64 = row.try_get("", "deleted")?;
    let deleted_at: Option<Vec<u8>> = row.try_get("", "deleted_at")?;
    let clocks: Option<Vec<u8>> = row.try_get("", "clocks")?;
    let hlc: Option<Vec<u8>> = row.try_get("", "hlc")?;
    Ok(RowState {
        owner: owner
            .map(|b| Uuid::from_slice(&b))
            .transpose()
            .map_err(|e| corrupt("_sync_rows", e))?,
        version: version.map(|v| v as u64),
        deleted: deleted != 0,
        deleted_at: optional_timestamp(deleted_at, "deleted_at")?,
        clocks: match clocks {
            Some(b) => rmp_serde::from_slice(&b).map_err(|e| corrupt("_sync_rows", e))?,
            None => BTreeMap::new(),
        },
        hlc: optional_timestamp(hlc, "hlc")?,
    })
}

/// Stores the merge state of a record.
pub(crate) async fn save_row<C: ConnectionTrait>(
    db: &C,
    model: &str,
    record: Uuid,
    state: &RowState,
) -> Result<(), StoreError> {
    let clocks = if state.clocks.is_empty() {
        Value::Bytes(None)
    } else {
        blob(rmp_serde::to_vec(&state.clocks).map_err(|e| corrupt("_sync_rows", e))?)
    };
    db.execute_raw(stmt(
        "INSERT INTO _sync_rows (model, record, owner, version, deleted, deleted_at, clocks, hlc)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (model, record) DO UPDATE SET owner = excluded.owner, version = excluded.version,
           deleted = excluded.deleted, deleted_at = excluded.deleted_at, clocks = excluded.clocks,
           hlc = excluded.hlc",
        vec![
            model.into(),
            uuid_value(record),
            state.owner.map_or(Value::Bytes(None), uuid_value),
            Value::BigInt(state.version.map(|v| v as i64)),
            Value::BigInt(Some(i64::from(state.deleted))),
            state
                .deleted_at
                .as_ref()
                .map_or(Value::Bytes(None), |t| blob(timestamp_bytes(t))),
            clocks,
            state.hlc.as_ref().map_or(Value::Bytes(None), |t| blob(timestamp_bytes(t))),
        ],
    ))
    .await?;
    Ok(())
}

/// Whether the log holds change `seq` of `origin`.
pub(crate) async fn log_contains<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    seq: u64,
) -> Result<bool, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT 1 AS present FROM _sync_log WHERE origin = ? AND seq = ?",
            vec![uuid_value(origin), Value::BigInt(Some(seq as i64))],
        ))
        .await?;
    Ok(row.is_some())
}

/// Appends changes to the log, in one statement per batch of rows.
pub(crate) async fn append_log<C: ConnectionTrait>(
    db: &C,
    changes: &[&Change],
) -> Result<(), StoreError> {
    // SQLite allows 32766 bound values; five per row.
    for chunk in changes.chunks(1_000) {
        let mut sql = String::from(
            "INSERT OR IGNORE INTO _sync_log (origin, seq, model, record, change) VALUES ",
        );
        let mut values = Vec::with_capacity(chunk.len() * 5);
        for (i, change) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?, ?, ?)");
            values.push(uuid_value(change.origin));
            values.push(Value::BigInt(Some(change.seq as i64)));
            values.push(change.model.as_str().into());
            values.push(uuid_value(change.id));
            values.push(blob(change.encode().map_err(|e| corrupt("_sync_log", e))?));
        }
        db.execute_raw(stmt(&sql, values)).await?;
    }
    Ok(())
}

/// The number of log entries.
pub(crate) async fn log_len<C: ConnectionTrait>(db: &C) -> Result<u64, StoreError> {
    count(db, "SELECT COUNT(*) AS n FROM _sync_log").await
}

async fn count<C: ConnectionTrait>(db: &C, sql: &str) -> Result<u64, StoreError> {
    let row = db.query_one_raw(stmt(sql, vec![])).await?;
    let n: i64 = match row {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(n as u64)
}

/// All log entries, in (origin, seq) order.
pub(crate) async fn log_entries<C: ConnectionTrait>(db: &C) -> Result<Vec<Change>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT change FROM _sync_log ORDER BY origin, seq",
            vec![],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get("", "change")?;
            Change::decode(&bytes).map_err(|e| corrupt("_sync_log", e))
        })
        .collect()
}

/// Parks `change` (or one deferred reference of it, `part`) until the record
/// `parent` of `parent_model` arrives.
pub(crate) async fn park<C: ConnectionTrait>(
    db: &C,
    change: &Change,
    part: &str,
    parent_model: &str,
    parent: Uuid,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "INSERT OR REPLACE INTO _sync_parked (origin, seq, model, record, part, parent_model, parent, change)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            uuid_value(change.origin),
            Value::BigInt(Some(change.seq as i64)),
            change.model.as_str().into(),
            uuid_value(change.id),
            part.into(),
            parent_model.into(),
            uuid_value(parent),
            blob(change.encode().map_err(|e| corrupt("_sync_parked", e))?),
        ],
    ))
    .await?;
    Ok(())
}

/// Whether a whole change is parked.
pub(crate) async fn is_parked<C: ConnectionTrait>(
    db: &C,
    change: &Change,
) -> Result<bool, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT 1 AS present FROM _sync_parked
             WHERE origin = ? AND seq = ? AND model = ? AND record = ? AND part = ''",
            vec![
                uuid_value(change.origin),
                Value::BigInt(Some(change.seq as i64)),
                change.model.as_str().into(),
                uuid_value(change.id),
            ],
        ))
        .await?;
    Ok(row.is_some())
}

/// A parked change, or one deferred reference of it.
#[derive(Debug, Clone)]
pub(crate) struct Parked {
    /// The change.
    pub(crate) change: Change,
    /// `""` for the whole change, else the deferred reference's field.
    pub(crate) part: String,
}

/// Removes and returns what waits for `parent`, in (origin, seq) order.
pub(crate) async fn take_parked<C: ConnectionTrait>(
    db: &C,
    parent_model: &str,
    parent: Uuid,
) -> Result<Vec<Parked>, StoreError> {
    let values = vec![parent_model.into(), uuid_value(parent)];
    let rows = db
        .query_all_raw(stmt(
            "SELECT change, part FROM _sync_parked WHERE parent_model = ? AND parent = ? ORDER BY origin, seq, part",
            values.clone(),
        ))
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    db.execute_raw(stmt(
        "DELETE FROM _sync_parked WHERE parent_model = ? AND parent = ?",
        values,
    ))
    .await?;
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get("", "change")?;
            Ok(Parked {
                change: Change::decode(&bytes).map_err(|e| corrupt("_sync_parked", e))?,
                part: row.try_get("", "part")?,
            })
        })
        .collect()
}

/// The number of parked changes.
pub(crate) async fn parked_len<C: ConnectionTrait>(db: &C) -> Result<u64, StoreError> {
    count(db, "SELECT COUNT(*) AS n FROM _sync_parked").await
}

/// A conflict to record.
pub(crate) struct NewConflict<'a> {
    pub(crate) kind: ConflictKind,
    pub(crate) model: &'a str,
    pub(crate) record: Uuid,
    pub(crate) field: Option<&'a str>,
    pub(crate) loser: Write,
    pub(crate) winner: Option<Write>,
}

/// Appends to the conflict log.
pub(crate) async fn record_conflict<C: ConnectionTrait>(
    db: &C,
    c: NewConflict<'_>,
) -> Result<(), StoreError> {
    let encode = |w: &Write| rmp_serde::to_vec(w).map_err(|e| corrupt("_sync_conflicts", e));
    db.execute_raw(stmt(
        "INSERT INTO _sync_conflicts (kind, model, record, field, loser, winner) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            c.kind.as_str().into(),
            c.model.into(),
            uuid_value(c.record),
            Value::String(c.field.map(str::to_owned)),
            blob(encode(&c.loser)?),
            match &c.winner {
                Some(w) => blob(encode(w)?),
                None => Value::Bytes(None),
            },
        ],
    ))
    .await?;
    Ok(())
}

/// The conflict log, oldest first.
pub(crate) async fn conflicts<C: ConnectionTrait>(db: &C) -> Result<Vec<Conflict>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT id, kind, model, record, field, loser, winner FROM _sync_conflicts ORDER BY id",
            vec![],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get("", "kind")?;
            let loser: Vec<u8> = row.try_get("", "loser")?;
            let winner: Option<Vec<u8>> = row.try_get("", "winner")?;
            Ok(Conflict {
                id: row.try_get("", "id")?,
                kind: ConflictKind::parse(&kind)
                    .ok_or_else(|| corrupt("_sync_conflicts", format!("unknown kind {kind}")))?,
                model: row.try_get("", "model")?,
                record: get_uuid(row, "record", "_sync_conflicts")?,
                field: row.try_get("", "field")?,
                loser: rmp_serde::from_slice(&loser).map_err(|e| corrupt("_sync_conflicts", e))?,
                winner: winner
                    .map(|w| rmp_serde::from_slice(&w))
                    .transpose()
                    .map_err(|e| corrupt("_sync_conflicts", e))?,
            })
        })
        .collect()
}

/// The number of recorded conflicts.
pub(crate) async fn conflicts_len<C: ConnectionTrait>(db: &C) -> Result<u64, StoreError> {
    count(db, "SELECT COUNT(*) AS n FROM _sync_conflicts").await
}

/// This device's version vector.
pub(crate) async fn load_vector<C: ConnectionTrait>(db: &C) -> Result<VersionVector, StoreError> {
    let rows = db
        .query_all_raw(stmt("SELECT origin, seq FROM _sync_vector", vec![]))
        .await?;
    let mut vector = VersionVector::new();
    for row in &rows {
        let seq: i64 = row.try_get("", "seq")?;
        vector.advance(get_uuid(row, "origin", "_sync_vector")?, seq as u64);
    }
    Ok(vector)
}

/// Raises the vector's entry for `origin` to `seq` (never lowers it).
pub(crate) async fn advance_vector<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    seq: u64,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "INSERT INTO _sync_vector (origin, seq) VALUES (?, ?)
         ON CONFLICT (origin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        vec![uuid_value(origin), Value::BigInt(Some(seq as i64))],
    ))
    .await?;
    Ok(())
}

/// Per origin, the number up to which the log was pruned.
pub(crate) async fn load_pruned<C: ConnectionTrait>(db: &C) -> Result<VersionVector, StoreError> {
    let rows = db
        .query_all_raw(stmt("SELECT origin, seq FROM _sync_pruned", vec![]))
        .await?;
    let mut vector = VersionVector::new();
    for row in &rows {
        let seq: i64 = row.try_get("", "seq")?;
        vector.advance(get_uuid(row, "origin", "_sync_pruned")?, seq as u64);
    }
    Ok(vector)
}

/// Drops the log entries of `origin` up to `seq`.
pub(crate) async fn prune_log<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    seq: u64,
) -> Result<u64, StoreError> {
    let result = db
        .execute_raw(stmt(
            "DELETE FROM _sync_log WHERE origin = ? AND seq <= ?",
            vec![uuid_value(origin), Value::BigInt(Some(seq as i64))],
        ))
        .await?;
    db.execute_raw(stmt(
        "INSERT INTO _sync_pruned (origin, seq) VALUES (?, ?)
         ON CONFLICT (origin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        vec![uuid_value(origin), Value::BigInt(Some(seq as i64))],
    ))
    .await?;
    Ok(result.rows_affected())
}

/// A paired peer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerRecord {
    pub(crate) peer: Uuid,
    /// What it acknowledged, `None` if it never did.
    pub(crate) acked: Option<VersionVector>,
    /// When it was last heard from (ms since the Unix epoch).
    pub(crate) last_seen: Option<u64>,
    /// Away beyond the retention horizon: it must resync from a snapshot.
    pub(crate) expired: bool,
}

/// Adds a paired peer, as if heard from at `now_ms` (nothing if it is
/// already paired).
pub(crate) async fn add_peer<C: ConnectionTrait>(
    db: &C,
    peer: Uuid,
    now_ms: u64,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "INSERT OR IGNORE INTO _sync_peers (peer, last_seen) VALUES (?, ?)",
        vec![uuid_value(peer), Value::BigInt(Some(now_ms as i64))],
    ))
    .await?;
    Ok(())
}

/// Removes a peer.
pub(crate) async fn remove_peer<C: ConnectionTrait>(db: &C, peer: Uuid) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "DELETE FROM _sync_peers WHERE peer = ?",
        vec![uuid_value(peer)],
    ))
    .await?;
    Ok(())
}

/// Every paired peer.
pub(crate) async fn peers<C: ConnectionTrait>(db: &C) -> Result<Vec<PeerRecord>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT peer, acked, last_seen, expired FROM _sync_peers ORDER BY peer",
            vec![],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let acked: Option<Vec<u8>> = row.try_get("", "acked")?;
            let last_seen: Option<i64> = row.try_get("", "last_seen")?;
            let expired: i64 = row.try_get("", "expired")?;
            Ok(PeerRecord {
                peer: get_uuid(row, "peer", "_sync_peers")?,
                acked: acked
                    .map(|b| rmp_serde::from_slice(&b))
                    .transpose()
                    .map_err(|e| corrupt("_sync_peers", e))?,
                last_seen: last_seen.map(|t| t as u64),
                expired: expired != 0,
            })
        })
        .collect()
}

/// Stores a peer's acknowledgement (raising, never lowering, each entry).
pub(crate) async fn record_ack<C: ConnectionTrait>(
    db: &C,
    peer: Uuid,
    vector: &VersionVector,
) -> Result<(), StoreError> {
    let current = peers(db).await?.into_iter().find(|p| p.peer == peer);
    let mut merged = current.and_then(|p| p.acked).unwrap_or_default();
    for (origin, seq) in vector.iter() {
        merged.advance(origin, seq);
    }
    let bytes = rmp_serde::to_vec(&merged).map_err(|e| corrupt("_sync_peers", e))?;
    db.execute_raw(stmt(
        "UPDATE _sync_peers SET acked = ? WHERE peer = ?",
        vec![blob(bytes), uuid_value(peer)],
    ))
    .await?;
    Ok(())
}

/// Marks a peer as heard from at `now_ms`, and no longer expired if
/// `resynced`.
pub(crate) async fn touch_peer<C: ConnectionTrait>(
    db: &C,
    peer: Uuid,
    now_ms: u64,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "UPDATE _sync_peers SET last_seen = ? WHERE peer = ?",
        vec![Value::BigInt(Some(now_ms as i64)), uuid_value(peer)],
    ))
    .await?;
    Ok(())
}

/// Sets whether a peer is expired.
pub(crate) async fn set_expired<C: ConnectionTrait>(
    db: &C,
    peer: Uuid,
    expired: bool,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "UPDATE _sync_peers SET expired = ? WHERE peer = ?",
        vec![Value::BigInt(Some(i64::from(expired))), uuid_value(peer)],
    ))
    .await?;
    Ok(())
}

/// A stored change or row state of one origin, by number.
pub(crate) enum Held {
    /// A change kept whole (log or parked).
    Change(Change),
    /// A device-owned record's state: capture it to send it.
    Owned {
        model: String,
        record: Uuid,
        version: u64,
        state: RowState,
    },
}

impl Held {
    fn seq(&self) -> u64 {
        match self {
            Held::Change(c) => c.seq,
            Held::Owned { version, .. } => *version,
        }
    }
}

/// What this device holds of `origin` with numbers in `(after, upto]`, by
/// number, at most `limit` of them: log entries, parked changes and
/// device-owned record states.
pub(crate) async fn held_since<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    after: u64,
    upto: u64,
    limit: u64,
) -> Result<Vec<Held>, StoreError> {
    let range = || {
        vec![
            uuid_value(origin),
            Value::BigInt(Some(after as i64)),
            Value::BigInt(Some(upto as i64)),
            Value::BigInt(Some(limit as i64)),
        ]
    };
    let mut out = Vec::new();
    for sql in [
        "SELECT change FROM _sync_log WHERE origin = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
        "SELECT change FROM _sync_parked WHERE origin = ? AND seq > ? AND seq <= ? AND part = '' ORDER BY seq LIMIT ?",
    ] {
        for row in db.query_all_raw(stmt(sql, range())).await? {
            let bytes: Vec<u8> = row.try_get("", "change")?;
            out.push(Held::Change(
                Change::decode(&bytes).map_err(|e| corrupt("_sync_log", e))?,
            ));
        }
    }
    let rows = db
        .query_all_raw(stmt(
            "SELECT model, record, owner, version, deleted, deleted_at, clocks, hlc FROM _sync_rows
             WHERE owner = ? AND version > ? AND version <= ? ORDER BY version LIMIT ?",
            range(),
        ))
        .await?;
    for row in &rows {
        let version: i64 = row.try_get("", "version")?;
        out.push(Held::Owned {
            model: row.try_get("", "model")?,
            record: get_uuid(row, "record", "_sync_rows")?,
            version: version as u64,
            state: row_state(row)?,
        });
    }
    out.sort_by_key(Held::seq);
    out.truncate(limit as usize);
    Ok(out)
}

/// Tombstones of `model` with record ids above `after`, by id.
pub(crate) async fn tombstones<C: ConnectionTrait>(
    db: &C,
    model: &str,
    after: &[u8],
    limit: u64,
) -> Result<Vec<(Uuid, RowState)>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT record, owner, version, deleted, deleted_at, clocks, hlc FROM _sync_rows
             WHERE model = ? AND deleted = 1 AND record > ? ORDER BY record LIMIT ?",
            vec![
                model.into(),
                blob(after.to_vec()),
                Value::BigInt(Some(limit as i64)),
            ],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((get_uuid(row, "record", "_sync_rows")?, row_state(row)?)))
        .collect()
}

/// The position of a parked change in a scan of all of them.
pub(crate) type ParkedKey = (Uuid, u64, String, Uuid);

/// Whole parked changes after `after`, in key order.
pub(crate) async fn parked_after<C: ConnectionTrait>(
    db: &C,
    after: Option<&ParkedKey>,
    limit: u64,
) -> Result<Vec<(ParkedKey, Change)>, StoreError> {
    let (origin, seq, model, record) = match after {
        Some((o, s, m, r)) => (uuid_value(*o), *s as i64, m.clone(), uuid_value(*r)),
        None => (blob(Vec::new()), -1, String::new(), blob(Vec::new())),
    };
    let rows = db
        .query_all_raw(stmt(
            "SELECT origin, seq, model, record, change FROM _sync_parked
             WHERE part = '' AND (origin, seq, model, record) > (?, ?, ?, ?)
             ORDER BY origin, seq, model, record LIMIT ?",
            vec![
                origin,
                Value::BigInt(Some(seq)),
                model.into(),
                record,
                Value::BigInt(Some(limit as i64)),
            ],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get("", "seq")?;
            let key = (
                get_uuid(row, "origin", "_sync_parked")?,
                seq as u64,
                row.try_get("", "model")?,
                get_uuid(row, "record", "_sync_parked")?,
            );
            let bytes: Vec<u8> = row.try_get("", "change")?;
            Ok((
                key,
                Change::decode(&bytes).map_err(|e| corrupt("_sync_parked", e))?,
            ))
        })
        .collect()
}

/// Rows in the snapshot: every record state plus every parked change.
pub(crate) async fn snapshot_size<C: ConnectionTrait>(db: &C) -> Result<u64, StoreError> {
    Ok(count(db, "SELECT COUNT(*) AS n FROM _sync_rows").await?
        + count(db, "SELECT COUNT(*) AS n FROM _sync_parked WHERE part = ''").await?)
}
