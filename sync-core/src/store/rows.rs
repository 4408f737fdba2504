//! `_sync_rows`: every record's canonical state and what the application's
//! table shows of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use super::{Script, StoreError, blob, corrupt, get_uuid, in_chunks, int, stmt, uuid_value};
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

/// What a plan of changes to `keys` starts from, in one round trip when it
/// fits one (a statement per model and kind, one query).
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The stored rows of `keys` (`None` for a record with no row).
    pub(crate) rows: HashMap<RecordKey, Option<Stored>>,
    /// The records waiting for each of `keys`.
    pub(crate) waiters: HashMap<RecordKey, Vec<RecordKey>>,
    /// The highest local key of each model asked for.
    pub(crate) max_key: HashMap<usize, i64>,
}

/// The most records [`load_for_plan`] reads in one query (a received batch
/// of 1,000 changes takes one).
const MAX_LOAD_KEYS: usize = 4_096;

/// The stored rows of `keys`, the records waiting for each of them, and the
/// highest local key of each model in `max_keys` (with whether its table is
/// AUTOINCREMENT), in one round trip when they fit one.
pub(crate) async fn load_for_plan<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    keys: &BTreeSet<RecordKey>,
    max_keys: &[(usize, bool)],
) -> Result<Loaded, StoreError> {
    let mut by_rank: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    for k in keys {
        by_rank.entry(k.rank).or_default().push(uuid_value(k.id));
    }
    // Each model's ids are bound twice, padded to a power of two, with
    // two values more per model and up to two per highest key: past what
    // one statement binds, the reads go one by one.
    let bound: usize = by_rank
        .values()
        .map(|ids| 2 * ids.len().next_power_of_two() + 2)
        .sum::<usize>()
        + 2 * max_keys.len();
    if bound > super::MAX_VARIABLES || keys.len() > MAX_LOAD_KEYS {
        let mut loaded = Loaded {
            rows: load_rows(db, registry, keys).await?,
            waiters: super::load_waiters(db, registry, keys).await?,
            max_key: HashMap::new(),
        };
        for (rank, auto) in max_keys {
            if let Some(desc) = registry.at(*rank) {
                loaded
                    .max_key
                    .insert(*rank, super::max_key(db, desc, *auto).await?);
            }
        }
        return Ok(loaded);
    }
    let mut loaded = Loaded {
        rows: keys.iter().map(|k| (*k, None)).collect(),
        waiters: keys.iter().map(|k| (*k, Vec::new())).collect(),
        max_key: HashMap::new(),
    };
    // Every statement yields the same columns; `part` says which it is,
    // `model` the model of the record (of the parent, for a waiter).
    let mut sql = String::new();
    let mut values: Vec<Value> = Vec::new();
    for (rank, mut ids) in by_rank {
        let Some(desc) = registry.at(rank) else {
            continue;
        };
        // Lists padded (with their last id again) to a power of two: the
        // connection caches each distinct statement it prepares, and an
        // exact length per model per batch would fill that cache with
        // near copies.
        if let Some(last) = ids.last().cloned() {
            ids.resize(ids.len().next_power_of_two(), last);
        }
        let list = super::placeholders(ids.len());
        sql.push_str(&format!(
            "SELECT 0 AS part, record, presence, local_key, aside, state, model,
                    NULL AS waiter
               FROM _sync_rows WHERE model = ? AND record IN ({list});
             SELECT 1 AS part, parent AS record, NULL AS presence, NULL AS local_key,
                    NULL AS aside, record AS state, parent_model AS model, model AS waiter
               FROM _sync_waiting WHERE parent_model = ? AND parent IN ({list});\n"
        ));
        values.push(desc.name().into());
        values.extend(ids.iter().cloned());
        values.push(desc.name().into());
        values.extend(ids);
    }
    for (rank, auto) in max_keys {
        let Some(desc) = registry.at(*rank) else {
            continue;
        };
        // Bound in the order of the placeholders: the model's name, then
        // the subquery's.
        let (from, bound) = super::key_candidates(desc, *auto);
        values.push(desc.name().into());
        values.extend(bound);
        sql.push_str(&format!(
            "SELECT 2 AS part, NULL AS record, NULL AS presence, MAX(m) AS local_key,
                    NULL AS aside, NULL AS state, ? AS model, NULL AS waiter FROM {from};\n"
        ));
    }
    if sql.is_empty() {
        return Ok(loaded);
    }
    for row in db.query_all_raw(stmt(&sql, values)).await? {
        let part: i64 = row.try_get("", "part")?;
        let model: String = row.try_get("", "model")?;
        let Some(rank) = registry.rank(&model) else {
            continue;
        };
        match part {
            0 => {
                let id = get_uuid(&row, "record", TABLE)?;
                loaded.rows.insert(
                    RecordKey { rank, id },
                    Some(stored_of(registry, rank, &row)?),
                );
            }
            1 => {
                let waiter_model: String = row.try_get("", "waiter")?;
                let Some(waiter_rank) = registry.rank(&waiter_model) else {
                    continue;
                };
                let parent = get_uuid(&row, "record", "_sync_waiting")?;
                let waiter: Vec<u8> = row.try_get("", "state")?;
                let waiter = Uuid::from_slice(&waiter).map_err(|e| corrupt("_sync_waiting", e))?;
                loaded
                    .waiters
                    .entry(RecordKey { rank, id: parent })
                    .or_default()
                    .push(RecordKey {
                        rank: waiter_rank,
                        id: waiter,
                    });
            }
            _ => {
                let max: Option<i64> = row.try_get("", "local_key")?;
                loaded.max_key.insert(rank, max.unwrap_or(0));
            }
        }
    }
    Ok(loaded)
}

/// Deletes the stored state of the records given (forgotten: no tombstone
/// is kept).
pub(crate) fn delete_states(script: &mut Script, registry: &Registry, keys: &[RecordKey]) {
    let mut by_model: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for key in keys {
        if let Some(desc) = registry.at(key.rank) {
            by_model
                .entry(desc.name())
                .or_default()
                .push(uuid_value(key.id));
        }
    }
    for (model, ids) in by_model {
        script.in_chunks(
            &format!("DELETE FROM {TABLE} WHERE model = ? AND record IN ({{}})"),
            &[model.into()],
            ids,
        );
    }
}

/// Writes the stored rows given (inserting or replacing).
pub(crate) fn write_rows(
    script: &mut Script,
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
    script.insert_many(
        "INSERT INTO _sync_rows (model, record, presence, local_key, aside, origin, seq, state)",
        8,
        "ON CONFLICT (model, record) DO UPDATE SET presence = excluded.presence,
           local_key = excluded.local_key, aside = excluded.aside, origin = excluded.origin,
           seq = excluded.seq, state = excluded.state",
        values,
    );
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

/// One record's stored state, as stored; `None` if none is.
pub(crate) async fn row_state<C: ConnectionTrait>(
    db: &C,
    model: &str,
    id: Uuid,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT state FROM _sync_rows WHERE model = ? AND record = ?",
            vec![model.into(), uuid_value(id)],
        ))
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("", "state")?),
        None => None,
    })
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

/// The stored state of the device-owned record `(model, record)`: the
/// origin and number of its newest change, and that change's bytes.
pub(crate) async fn owned_state<C: ConnectionTrait>(
    db: &C,
    model: &str,
    record: Uuid,
) -> Result<Option<(Uuid, u64, EncodedChange)>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT origin, seq, state FROM _sync_rows
             WHERE model = ? AND record = ? AND origin IS NOT NULL AND seq IS NOT NULL",
            vec![Value::from(model.to_owned()), uuid_value(record)],
        ))
        .await?;
    row.map(|row| {
        Ok((
            get_uuid(&row, "origin", TABLE)?,
            super::get_u64(&row, "seq", TABLE)?,
            EncodedChange(row.try_get("", "state")?),
        ))
    })
    .transpose()
}
