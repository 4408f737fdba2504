//! `_sync_log`: shared changes as their origin encoded them, kept until
//! every peer has them.

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use super::{Script, StoreError, blob, count, get_u64, int, stmt, uuid_value};
use crate::change::EncodedChange;

const TABLE: &str = "_sync_log";

/// Appends changes (origin, number, bytes); one already there is kept.
pub(crate) fn append_log(
    script: &mut Script,
    entries: &[(Uuid, u64, &EncodedChange)],
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(entries.len() * 3);
    for (origin, seq, bytes) in entries {
        values.push(uuid_value(*origin));
        values.push(int(*seq)?);
        values.push(blob(bytes.0.clone()));
    }
    script.insert_many(
        "INSERT OR IGNORE INTO _sync_log (origin, seq, change)",
        3,
        "",
        values,
    );
    Ok(())
}

/// The log entries of `origin` with numbers in `(after, upto]`, by number.
pub(crate) async fn log_since<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    after: u64,
    upto: u64,
    limit: u64,
) -> Result<Vec<(u64, EncodedChange)>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT seq, change FROM _sync_log WHERE origin = ? AND seq > ? AND seq <= ?
             ORDER BY seq LIMIT ?",
            vec![uuid_value(origin), int(after)?, int(upto)?, int(limit)?],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                get_u64(row, "seq", TABLE)?,
                EncodedChange(row.try_get("", "change")?),
            ))
        })
        .collect()
}

/// Every log entry, by origin and number.
pub(crate) async fn log_all<C: ConnectionTrait>(db: &C) -> Result<Vec<EncodedChange>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT change FROM _sync_log ORDER BY origin, seq",
            vec![],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok(EncodedChange(row.try_get("", "change")?)))
        .collect()
}

/// The number of log entries.
pub(crate) async fn log_len<C: ConnectionTrait>(db: &C) -> Result<u64, StoreError> {
    count(db, "SELECT COUNT(*) AS n FROM _sync_log", vec![]).await
}

/// Drops the log entries of an origin numbered `start..=end`; bound to
/// [`range_values`].
const DELETE_RANGE: &str = "DELETE FROM _sync_log WHERE origin = ? AND seq >= ? AND seq <= ?";

fn range_values(origin: Uuid, start: u64, end: u64) -> Result<Vec<Value>, StoreError> {
    Ok(vec![uuid_value(origin), int(start)?, int(end)?])
}

/// Drops the log entries of `origin` numbered `start..=end` (held beyond a
/// gap; the caller records the range).
pub(crate) async fn prune_log_range<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    start: u64,
    end: u64,
) -> Result<u64, StoreError> {
    let result = db
        .execute_raw(stmt(DELETE_RANGE, range_values(origin, start, end)?))
        .await?;
    Ok(result.rows_affected())
}

/// Drops the log entries of `origin` numbered `start..=end`, in a script.
pub(crate) fn drop_log_range(
    script: &mut Script,
    origin: Uuid,
    start: u64,
    end: u64,
) -> Result<(), StoreError> {
    script.push(DELETE_RANGE.into(), range_values(origin, start, end)?);
    Ok(())
}

/// Drops the log entries of `origin` up to `seq`, and records the floor.
pub(crate) async fn prune_log<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    seq: u64,
) -> Result<u64, StoreError> {
    let result = db
        .execute_raw(stmt(
            "DELETE FROM _sync_log WHERE origin = ? AND seq <= ?",
            vec![uuid_value(origin), int(seq)?],
        ))
        .await?;
    db.execute_raw(stmt(
        "INSERT INTO _sync_pruned (origin, seq) VALUES (?, ?)
         ON CONFLICT (origin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        vec![uuid_value(origin), int(seq)?],
    ))
    .await?;
    Ok(result.rows_affected())
}
