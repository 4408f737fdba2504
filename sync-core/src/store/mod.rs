//! The engine's state in the application's SQLite database: the only module
//! that speaks SQL. Every table of the engine is prefixed `_sync_`.
//!
//! Reads and writes are set-oriented: a batch costs a few statements per
//! model, each over many rows ([`in_chunks`], [`insert_many`]), not several
//! statements per change. Statement texts depend only on the model and the
//! chunk's row count, so SQLite's prepared statements are reused.

mod log;
mod rows;
mod side;
mod table;
mod trust;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};
use uuid::Uuid;

pub(crate) use log::*;
pub(crate) use rows::*;
pub(crate) use side::*;
pub(crate) use table::*;
pub(crate) use trust::*;

/// The schema this engine writes. Bumped by every change to the `_sync_*`
/// tables.
pub const SCHEMA_VERSION: u32 = 5;

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
    /// The database was written by an engine too old to upgrade from.
    #[error(
        "this database's sync schema is version {found}, from a pre-release engine this one cannot upgrade; \
         open a new database (or delete its `_sync_*` tables) and let the device backfill from its peers"
    )]
    OlderSchema {
        /// The version found.
        found: u32,
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

pub(crate) fn corrupt(table: &'static str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: reason.to_string(),
    }
}

pub(crate) fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

pub(crate) fn blob(bytes: impl Into<Vec<u8>>) -> Value {
    Value::Bytes(Some(bytes.into()))
}

pub(crate) fn uuid_value(id: Uuid) -> Value {
    blob(id.as_bytes().to_vec())
}

pub(crate) fn int(v: u64) -> Result<Value, StoreError> {
    i64::try_from(v)
        .map(|v| Value::BigInt(Some(v)))
        .map_err(|_| {
            corrupt(
                "_sync_*",
                format!("{v} does not fit a 64-bit signed integer"),
            )
        })
}

pub(crate) fn get_uuid(
    row: &QueryResult,
    col: &str,
    table: &'static str,
) -> Result<Uuid, StoreError> {
    let bytes: Vec<u8> = row.try_get("", col)?;
    Uuid::from_slice(&bytes).map_err(|e| corrupt(table, e))
}

pub(crate) fn get_u64(
    row: &QueryResult,
    col: &str,
    table: &'static str,
) -> Result<u64, StoreError> {
    let v: i64 = row.try_get("", col)?;
    u64::try_from(v).map_err(|e| corrupt(table, e))
}

/// The most bound values SQLite takes in one statement.
pub(crate) const MAX_VARIABLES: usize = 32_000;
/// The most rows one statement writes or names.
pub(crate) const MAX_ROWS: usize = 500;

/// How many rows of `width` values fit one statement.
pub(crate) fn chunk_rows(width: usize) -> usize {
    (MAX_VARIABLES / width.max(1)).clamp(1, MAX_ROWS)
}

/// `?, ?, ?` with `n` placeholders.
pub(crate) fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// Statements to run in one transaction, sent to SQLite in as few round
/// trips as they fit: a statement costs a hop to the database's worker
/// thread (tens of microseconds), whatever its size, so the small
/// statements of a commit (its states, log entries, vector, clock) travel
/// together, joined with `;`, their values bound in order.
#[derive(Debug, Default)]
pub(crate) struct Script {
    statements: Vec<(String, Vec<Value>)>,
}

/// Statements joined into one round trip hold at most this many values.
const JOIN_VALUES: usize = 4_000;

impl Script {
    pub(crate) fn push(&mut self, sql: String, values: Vec<Value>) {
        self.statements.push((sql, values));
    }

    /// `INSERT ... VALUES (row), ... <suffix>` over `values`, `width` values
    /// a row, cut into statements that fit.
    pub(crate) fn insert_many(
        &mut self,
        head: &str,
        width: usize,
        suffix: &str,
        values: Vec<Value>,
    ) {
        if values.is_empty() {
            return;
        }
        let row = format!("({})", placeholders(width));
        let per = chunk_rows(width);
        let mut values = values.into_iter().peekable();
        while values.peek().is_some() {
            let chunk: Vec<Value> = values.by_ref().take(per * width).collect();
            let rows = chunk.len() / width;
            let mut sql = String::with_capacity(head.len() + rows * (row.len() + 2) + suffix.len());
            sql.push_str(head);
            sql.push_str(" VALUES ");
            for i in 0..rows {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&row);
            }
            sql.push(' ');
            sql.push_str(suffix);
            self.push(sql, chunk);
        }
    }

    /// A statement (containing one `{}` for a list of placeholders) over
    /// `items` in chunks, with `fixed` values bound before each chunk's.
    pub(crate) fn in_chunks(&mut self, query: &str, fixed: &[Value], items: Vec<Value>) {
        for chunk in items.chunks(MAX_ROWS) {
            let sql = query.replacen("{}", &placeholders(chunk.len()), 1);
            let mut values = fixed.to_vec();
            values.extend_from_slice(chunk);
            self.push(sql, values);
        }
    }

    /// Runs every statement, joining consecutive small ones.
    pub(crate) async fn run<C: ConnectionTrait>(self, db: &C) -> Result<(), StoreError> {
        let mut sql = String::new();
        let mut values: Vec<Value> = Vec::new();
        for (s, v) in self.statements {
            if !sql.is_empty() && values.len() + v.len() > JOIN_VALUES {
                db.execute_raw(stmt(&sql, std::mem::take(&mut values)))
                    .await?;
                sql.clear();
            }
            if !sql.is_empty() {
                sql.push_str(";\n");
            }
            sql.push_str(&s);
            values.extend(v);
        }
        if !sql.is_empty() {
            db.execute_raw(stmt(&sql, values)).await?;
        }
        Ok(())
    }
}

/// Runs `INSERT ... VALUES (row), (row), ... <suffix>` over `values`, `width`
/// values a row, in as few statements as fit.
pub(crate) async fn insert_many<C: ConnectionTrait>(
    db: &C,
    head: &str,
    width: usize,
    suffix: &str,
    values: Vec<Value>,
) -> Result<u64, StoreError> {
    if values.is_empty() {
        return Ok(0);
    }
    let row = format!("({})", placeholders(width));
    let per = chunk_rows(width);
    let mut affected = 0;
    let mut values = values.into_iter().peekable();
    while values.peek().is_some() {
        let chunk: Vec<Value> = values.by_ref().take(per * width).collect();
        let rows = chunk.len() / width;
        let mut sql = String::with_capacity(head.len() + rows * (row.len() + 2) + suffix.len());
        sql.push_str(head);
        sql.push_str(" VALUES ");
        for i in 0..rows {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&row);
        }
        sql.push(' ');
        sql.push_str(suffix);
        affected += db.execute_raw(stmt(&sql, chunk)).await?.rows_affected();
    }
    Ok(affected)
}

/// Runs `query` (which contains one `{}` for a list of placeholders) for
/// `items` in chunks, with `fixed` values bound before each chunk's.
pub(crate) async fn in_chunks<C: ConnectionTrait>(
    db: &C,
    query: &str,
    fixed: &[Value],
    items: Vec<Value>,
) -> Result<Vec<QueryResult>, StoreError> {
    let mut out = Vec::new();
    for chunk in items.chunks(MAX_ROWS) {
        let sql = query.replacen("{}", &placeholders(chunk.len()), 1);
        let mut values = fixed.to_vec();
        values.extend_from_slice(chunk);
        out.extend(db.query_all_raw(stmt(&sql, values)).await?);
    }
    Ok(out)
}

/// Quotes an SQL identifier.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS _sync_meta (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    )",
    // Per record, its canonical state (what this device merges into and
    // serves): a shared record's fields with their clocks, or a device-owned
    // record's newest change as its owner encoded it. `presence` is what the
    // application's table shows of it (see `project::Presence`), `local_key`
    // its row there. Device-owned states keep their change's number, for
    // catch-up by origin.
    // A rowid table: its rows hold a state blob of a few hundred bytes,
    // which a WITHOUT ROWID table would move around on every page split of
    // its (random) key; the unique index holds the key alone.
    "CREATE TABLE IF NOT EXISTS _sync_rows (
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        presence INTEGER NOT NULL,
        local_key INTEGER,
        aside INTEGER NOT NULL DEFAULT 0,
        origin BLOB,
        seq INTEGER,
        state BLOB NOT NULL,
        UNIQUE (model, record)
    )",
    "CREATE INDEX IF NOT EXISTS _sync_rows_origin ON _sync_rows (origin, seq) WHERE origin IS NOT NULL",
    // Deleted (2) and hidden (3) records, read whole by tombstone collection
    // and at the end of a backfill: a few among many, found without reading
    // the table. Queries name the presence as a literal so that the planner
    // can prove the index covers them.
    "CREATE INDEX IF NOT EXISTS _sync_rows_deleted ON _sync_rows (presence) WHERE presence = 2",
    "CREATE INDEX IF NOT EXISTS _sync_rows_hidden ON _sync_rows (presence) WHERE presence = 3",
    // Records waiting (5) or refused (6), counted when the engine opens: the
    // count reads this index alone, not the table (its query names the same
    // literal list).
    "CREATE INDEX IF NOT EXISTS _sync_rows_waiting ON _sync_rows (presence) WHERE presence IN (5, 6)",
    // Shared changes as their origin encoded them, for catch-up and relay
    // until every peer has them.
    "CREATE TABLE IF NOT EXISTS _sync_log (
        origin BLOB NOT NULL,
        seq INTEGER NOT NULL,
        change BLOB NOT NULL,
        UNIQUE (origin, seq)
    )",
    // Records not shown (or shown with a null reference) until another
    // record's presence changes.
    "CREATE TABLE IF NOT EXISTS _sync_waiting (
        parent_model TEXT NOT NULL,
        parent BLOB NOT NULL,
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (parent_model, parent, model, record)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS _sync_waiting_record ON _sync_waiting (model, record)",
    // Records that gave up a unique key, by the key's hash.
    "CREATE TABLE IF NOT EXISTS _sync_aside (
        model TEXT NOT NULL,
        hash INTEGER NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (model, hash, record)
    ) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS _sync_aside_record ON _sync_aside (model, record)",
    // Snapshot rows refused for now (clock ahead, model unknown), retried.
    // Every row held is kept, however many arrive for one record: snapshots
    // from different peers may carry different states of it, and only the
    // merge may choose between them.
    HELD_TABLE,
    // While a snapshot is applied: the records of held rows that were held
    // when it started and that no page of it has brought yet (see
    // `collect`, snapshots and held rows).
    "CREATE TABLE IF NOT EXISTS _sync_held_unseen (
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (model, record)
    ) WITHOUT ROWID",
    // While a backfill runs: the records it forgot, pages of a snapshot
    // given up having brought their states (see `collect`,
    // `forget_given_up`). Their numbers in the vector prove no state taken
    // and deleted since: a row or change of one is merged as of a record
    // not here yet. Emptied when the backfill completes.
    "CREATE TABLE IF NOT EXISTS _sync_forgotten (
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (model, record)
    ) WITHOUT ROWID",
    // Per origin, the highest number up to which this device holds
    // everything (its version vector), and ranges held beyond it.
    "CREATE TABLE IF NOT EXISTS _sync_vector (
        origin BLOB PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS _sync_ahead (
        origin BLOB NOT NULL,
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        PRIMARY KEY (origin, start)
    ) WITHOUT ROWID",
    // Per origin, the number up to which log entries were pruned (or came
    // in a snapshot, as states, and cannot be served as changes).
    "CREATE TABLE IF NOT EXISTS _sync_pruned (
        origin BLOB PRIMARY KEY NOT NULL,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID",
    // Per origin, ranges above its prune floor whose log entries were
    // pruned too: held beyond a gap that never filled (the only holder of
    // the gap's numbers lost them), acknowledged by every peer.
    "CREATE TABLE IF NOT EXISTS _sync_pruned_ahead (
        origin BLOB NOT NULL,
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        PRIMARY KEY (origin, start)
    ) WITHOUT ROWID",
    // Which device each origin is an incarnation of.
    "CREATE TABLE IF NOT EXISTS _sync_origins (
        origin BLOB PRIMARY KEY NOT NULL,
        device BLOB NOT NULL
    ) WITHOUT ROWID",
    // Paired peers: what each has acknowledged, when it was last heard.
    "CREATE TABLE IF NOT EXISTS _sync_peers (
        peer BLOB PRIMARY KEY NOT NULL,
        acked BLOB,
        last_seen INTEGER,
        expired INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID",
    // Every write that lost, once: the same loss met again (a replayed
    // snapshot row, or the loser arriving after its winner where it was
    // once the other way round) is not recorded twice.
    "CREATE TABLE IF NOT EXISTS _sync_conflicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        field TEXT,
        loser_hlc BLOB NOT NULL,
        loser BLOB NOT NULL,
        winner BLOB
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS _sync_conflicts_once
        ON _sync_conflicts (model, record, coalesce(field, ''), loser_hlc)",
    // Seals of commits (this device's and relayed ones), with what is known
    // of each one's Merkle tree, until every peer has the commit.
    "CREATE TABLE IF NOT EXISTS _sync_seals (
        origin BLOB NOT NULL,
        last INTEGER NOT NULL,
        first INTEGER NOT NULL,
        seal BLOB NOT NULL,
        skeleton BLOB NOT NULL,
        UNIQUE (origin, last)
    )",
    // Device-owned changes a newer state superseded: what proves them in
    // a catch-up that skips them.
    "CREATE TABLE IF NOT EXISTS _sync_husks (
        origin BLOB NOT NULL,
        seq INTEGER NOT NULL,
        husk BLOB NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID",
    // While a resync runs: the records held when it started that no
    // snapshot page has brought yet (see `collect`).
    "CREATE TABLE IF NOT EXISTS _sync_unseen (
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (model, record)
    ) WITHOUT ROWID",
    // The library's membership records, by hash.
    "CREATE TABLE IF NOT EXISTS _sync_members (
        id BLOB PRIMARY KEY NOT NULL,
        record BLOB NOT NULL
    ) WITHOUT ROWID",
];

const HELD_TABLE: &str = "CREATE TABLE IF NOT EXISTS _sync_held (
        model TEXT NOT NULL,
        record BLOB NOT NULL,
        row BLOB NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (model, record, row)
    )";

/// Steps from a schema version to the next, where the state carries over.
async fn upgrade<C: ConnectionTrait>(db: &C, from: u32) -> Result<(), StoreError> {
    match from {
        // Version 3 kept one held row per record, the last to arrive.
        3 => {
            db.execute_unprepared("ALTER TABLE _sync_held RENAME TO _sync_held_v3")
                .await?;
            db.execute_unprepared(HELD_TABLE).await?;
            db.execute_unprepared(
                "INSERT INTO _sync_held (model, record, row, reason) \
                 SELECT model, record, row, reason FROM _sync_held_v3",
            )
            .await?;
            db.execute_unprepared("DROP TABLE _sync_held_v3").await?;
            Ok(())
        }
        // Version 5 adds `_sync_pruned_ahead`, created with the other
        // tables; an engine of version 4 would not know of the ranges it
        // holds, and would serve a peer that lacks one nothing.
        4 => Ok(()),
        found => Err(StoreError::OlderSchema { found }),
    }
}

/// Creates the `_sync_*` tables, or checks the ones there.
pub(crate) async fn migrate<C: ConnectionTrait>(db: &C) -> Result<(), StoreError> {
    let exists = db
        .query_one_raw(stmt(
            "SELECT 1 AS present FROM sqlite_master WHERE type = 'table' AND name = '_sync_meta'",
            vec![],
        ))
        .await?
        .is_some();
    let version = if exists {
        get_meta(db, "schema_version").await?
    } else {
        None
    };
    if let Some(bytes) = version {
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
        for from in found..SCHEMA_VERSION {
            upgrade(db, from).await?;
        }
    }
    for sql in TABLES {
        db.execute_unprepared(sql).await?;
    }
    set_meta(db, "schema_version", SCHEMA_VERSION.to_be_bytes().to_vec()).await?;
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

/// Sets a value of `_sync_meta`, in a script.
pub(crate) fn set_meta_in(script: &mut Script, key: &str, value: Vec<u8>) {
    script.push(
        "INSERT INTO _sync_meta (key, value) VALUES (?, ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            .into(),
        vec![key.into(), blob(value)],
    );
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

/// `SELECT COUNT(*) AS n ...`
pub(crate) async fn count<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, StoreError> {
    let row = db.query_one_raw(stmt(sql, values)).await?;
    let n: i64 = match row {
        Some(row) => row.try_get("", "n")?,
        None => 0,
    };
    Ok(n.max(0) as u64)
}
