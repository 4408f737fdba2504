//! `_sync_rows`: every record's canonical state and what the application's
//! table shows of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use super::{StoreError, blob, corrupt, get_uuid, in_chunks, insert_many, int, stmt, uuid_value};
use crate::change::EncodedChange;
use crate::project::{Presence, RecordKey, Stored};
use crate::registry::Registry;
use crate::state::RecordState;

const TABLE: &str = "_sync_rows";

fn stored_of(
    registry: &Registry,
    rank: usize,
    row: &sea_orm::QueryResult,
) -> Result<Stored, StoreError> {
    let desc = registry
        .at(rank)
        .ok_or_else(|| corrupt(TABLE, "a model rank out of range"))?;
    let presence: i64 = row.try_get("", "presence")?;
    let local_key: Option<i64> = row.try_get("", "local_key")?;
    let aside: i64 = row.try_get("", "aside")?;
    let bytes: Vec<u8> = row.try_get("", "state")?;
    Ok(Stored {
        state: RecordState::decode(desc.meta().ownership, &bytes).map_err(|e| corrupt(TABLE, e))?,
        presence: Presence::from_code(presence)
            .ok_or_else(|| corrupt(TABLE, format!("presence {presence}")))?,
        key: local_key,
        aside: aside != 0,
    })
}

/// The stored rows of `keys` (`None` for a record with no row).
pub(crate) async fn load_rows<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    keys: &BTreeSet<RecordKey>,
) -> Result<HashMap<RecordKey, Option<Stored>>, StoreError> {
    let mut out: HashMap<RecordKey, Option<Stored>> = keys.iter().map(|k| (*k, None)).collect();
    let mut by_rank: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for k in keys {
        by_rank.entry(k.rank).or_default().push(uuid_value(k.id));
    }
    for (rank, ids) in by_rank {
        let Some(desc) = registry.at(rank) else {
            continue;
        };
        let rows = in_chunks(
            db,
            "SELECT record, presence, local_key, aside, state FROM _sync_rows
             WHERE model = ? AND record IN ({})",
            &[desc.name().into()],
            ids,
        )
        .await?;
        for row in &rows {
            let id = get_uuid(row, "record", TABLE)?;
            out.insert(
                RecordKey { rank, id },
                Some(stored_of(registry, rank, row)?),
            );
        }
    }
    Ok(out)
}

/// Writes the stored rows given (inserting or replacing).
pub(crate) async fn write_rows<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    rows: &[(RecordKey, &Stored)],
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(rows.len() * 8);
    for (key, stored) in rows {
        let desc = registry
            .at(key.rank)
            .ok_or_else(|| corrupt(TABLE, "a model rank out of range"))?;
        let (origin, seq) = match &stored.state {
            RecordState::Owned(o) => (uuid_value(o.change.origin), int(o.change.seq)?),
            RecordState::Shared(_) => (Value::Bytes(None), Value::BigInt(None)),
        };
        values.push(desc.name().into());
        values.push(uuid_value(key.id));
        values.push(Value::BigInt(Some(stored.presence.code())));
        values.push(Value::BigInt(stored.key));
        values.push(Value::BigInt(Some(i64::from(stored.aside))));
        values.push(origin);
        values.push(seq);
        values.push(blob(stored.state.encode().map_err(|e| corrupt(TABLE, e))?));
    }
    insert_many(
        db,
        "INSERT INTO _sync_rows (model, record, presence, local_key, aside, origin, seq, state)",
        8,
        "ON CONFLICT (model, record) DO UPDATE SET presence = excluded.presence,
           local_key = excluded.local_key, aside = excluded.aside, origin = excluded.origin,
           seq = excluded.seq, state = excluded.state",
        values,
    )
    .await?;
    Ok(())
}

/// How many records of each model are stored (states and tombstones).
pub(crate) async fn row_counts<C: ConnectionTrait>(
    db: &C,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT model, COUNT(*) AS n FROM _sync_rows GROUP BY model",
            vec![],
        ))
        .await?;
    let mut out = BTreeMap::new();
    for row in &rows {
        let model: String = row.try_get("", "model")?;
        let n: i64 = row.try_get("", "n")?;
        out.insert(model, n.max(0) as u64);
    }
    Ok(out)
}

/// How many stored records wait for another or are refused.
pub(crate) async fn count_waiting<C: ConnectionTrait>(db: &C) -> Result<u64, StoreError> {
    super::count(
        db,
        "SELECT COUNT(*) AS n FROM _sync_rows WHERE presence IN (5, 6)",
        vec![],
    )
    .await
}

/// A page of one model's stored records, by id: (id, state bytes).
pub(crate) async fn rows_page<C: ConnectionTrait>(
    db: &C,
    model: &str,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<(Uuid, Vec<u8>)>, StoreError> {
    let after = after.map_or_else(|| blob(Vec::new()), uuid_value);
    let rows = db
        .query_all_raw(stmt(
            "SELECT record, state FROM _sync_rows WHERE model = ? AND record > ?
             ORDER BY record LIMIT ?",
            vec![model.into(), after, int(limit)?],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((get_uuid(row, "record", TABLE)?, row.try_get("", "state")?)))
        .collect()
}

/// Device-owned states last written by `origin` with numbers in
/// `(after, upto]`, by number.
pub(crate) async fn owned_since<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    after: u64,
    upto: u64,
    limit: u64,
) -> Result<Vec<(u64, EncodedChange)>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT seq, state FROM _sync_rows WHERE origin = ? AND seq > ? AND seq <= ?
             ORDER BY seq LIMIT ?",
            vec![uuid_value(origin), int(after)?, int(upto)?, int(limit)?],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                super::get_u64(row, "seq", TABLE)?,
                EncodedChange(row.try_get("", "state")?),
            ))
        })
        .collect()
}
