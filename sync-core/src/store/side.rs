//! The engine's bookkeeping tables: vector, ranges held ahead, prune
//! floors, origins, peers, the conflict log, waits and unique asides, held
//! snapshot rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use super::{
    Script, StoreError, blob, corrupt, get_u64, get_uuid, in_chunks, insert_many, int, stmt,
    uuid_value,
};
use crate::conflict::{Conflict, ConflictKind};
use crate::merge::NewConflict;
use crate::project::{Rank, RecordKey};
use crate::registry::Registry;
use crate::vector::{Received, VersionVector};

/// This device's vector and the ranges it holds beyond it.
pub(crate) async fn load_received<C: ConnectionTrait>(db: &C) -> Result<Received, StoreError> {
    let mut received = Received::default();
    for row in db
        .query_all_raw(stmt("SELECT origin, seq FROM _sync_vector", vec![]))
        .await?
    {
        received.vector.advance(
            get_uuid(&row, "origin", "_sync_vector")?,
            get_u64(&row, "seq", "_sync_vector")?,
        );
    }
    for row in db
        .query_all_raw(stmt("SELECT origin, start, end FROM _sync_ahead", vec![]))
        .await?
    {
        received
            .ahead
            .entry(get_uuid(&row, "origin", "_sync_ahead")?)
            .or_default()
            .insert(
                get_u64(&row, "start", "_sync_ahead")?,
                get_u64(&row, "end", "_sync_ahead")?,
            );
    }
    Ok(received)
}

/// Stores what moved in `received` since `before`, for `origins`: vector
/// entries, and the ranges held beyond them where those changed.
pub(crate) fn save_received(
    script: &mut Script,
    received: &Received,
    before: &Received,
    origins: &BTreeSet<Uuid>,
) -> Result<(), StoreError> {
    let mut vector = Vec::new();
    let mut ahead = Vec::new();
    let mut rewritten = Vec::new();
    for origin in origins {
        let seq = received.vector.get(*origin);
        if seq > before.vector.get(*origin) {
            vector.push(uuid_value(*origin));
            vector.push(int(seq)?);
        }
        let ranges = received.ahead.get(origin);
        if ranges != before.ahead.get(origin) {
            rewritten.push(uuid_value(*origin));
            for (s, e) in ranges.into_iter().flatten() {
                ahead.push(uuid_value(*origin));
                ahead.push(int(*s)?);
                ahead.push(int(*e)?);
            }
        }
    }
    script.insert_many(
        "INSERT INTO _sync_vector (origin, seq)",
        2,
        "ON CONFLICT (origin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        vector,
    );
    script.in_chunks(
        "DELETE FROM _sync_ahead WHERE origin IN ({})",
        &[],
        rewritten,
    );
    script.insert_many("INSERT INTO _sync_ahead (origin, start, end)", 3, "", ahead);
    Ok(())
}

/// Per origin, the number up to which the log was pruned, and the ranges
/// above it pruned too (held beyond a gap that never filled).
pub(crate) async fn load_pruned<C: ConnectionTrait>(db: &C) -> Result<Received, StoreError> {
    let rows = db
        .query_all_raw(stmt("SELECT origin, seq FROM _sync_pruned", vec![]))
        .await?;
    let mut pruned = Received::default();
    for row in &rows {
        pruned.vector.advance(
            get_uuid(row, "origin", "_sync_pruned")?,
            get_u64(row, "seq", "_sync_pruned")?,
        );
    }
    let rows = db
        .query_all_raw(stmt(
            "SELECT origin, start, end FROM _sync_pruned_ahead",
            vec![],
        ))
        .await?;
    for row in &rows {
        // Inserted, not trusted as stored: a range a later floor reached
        // folds into it.
        pruned.insert(
            get_uuid(row, "origin", "_sync_pruned_ahead")?,
            get_u64(row, "start", "_sync_pruned_ahead")?,
            get_u64(row, "end", "_sync_pruned_ahead")?,
        );
    }
    Ok(pruned)
}

/// Stores the pruned ranges of `origin` above its floor as they now stand.
pub(crate) fn save_pruned_ahead(
    script: &mut Script,
    origin: Uuid,
    pruned: &Received,
) -> Result<(), StoreError> {
    script.push(
        "DELETE FROM _sync_pruned_ahead WHERE origin = ?".into(),
        vec![uuid_value(origin)],
    );
    let mut values = Vec::new();
    for (s, e) in pruned.ahead.get(&origin).into_iter().flatten() {
        values.push(uuid_value(origin));
        values.push(int(*s)?);
        values.push(int(*e)?);
    }
    script.insert_many(
        "INSERT INTO _sync_pruned_ahead (origin, start, end)",
        3,
        "",
        values,
    );
    Ok(())
}

/// Raises prune floors without dropping anything (a snapshot's states).
pub(crate) fn raise_pruned(script: &mut Script, floors: &VersionVector) -> Result<(), StoreError> {
    let mut values = Vec::new();
    for (o, s) in floors.iter() {
        values.push(uuid_value(o));
        values.push(int(s)?);
    }
    script.insert_many(
        "INSERT INTO _sync_pruned (origin, seq)",
        2,
        "ON CONFLICT (origin) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        values,
    );
    // Catch-up never serves numbers at or below the floor (a requester
    // that needs them resyncs), and pruning only looks above it: entries
    // there would stay for ever.
    for (o, s) in floors.iter() {
        script.push(
            "DELETE FROM _sync_log WHERE origin = ? AND seq <= ?".into(),
            vec![uuid_value(o), int(s)?],
        );
        script.push(
            "DELETE FROM _sync_pruned_ahead WHERE origin = ? AND end <= ?".into(),
            vec![uuid_value(o), int(s)?],
        );
    }
    Ok(())
}

/// Every known origin's device.
pub(crate) async fn load_origins<C: ConnectionTrait>(
    db: &C,
) -> Result<HashMap<Uuid, Uuid>, StoreError> {
    let rows = db
        .query_all_raw(stmt("SELECT origin, device FROM _sync_origins", vec![]))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                get_uuid(row, "origin", "_sync_origins")?,
                get_uuid(row, "device", "_sync_origins")?,
            ))
        })
        .collect()
}

/// Records origins' devices.
pub(crate) fn save_origins(script: &mut Script, origins: &[(Uuid, Uuid)]) {
    let mut values = Vec::with_capacity(origins.len() * 2);
    for (o, d) in origins {
        values.push(uuid_value(*o));
        values.push(uuid_value(*d));
    }
    script.insert_many(
        "INSERT OR IGNORE INTO _sync_origins (origin, device)",
        2,
        "",
        values,
    );
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

/// Every paired peer.
pub(crate) async fn load_peers<C: ConnectionTrait>(db: &C) -> Result<Vec<PeerRecord>, StoreError> {
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
                last_seen: last_seen.map(|t| t.max(0) as u64),
                expired: expired != 0,
            })
        })
        .collect()
}

/// Stores peers (inserting or replacing).
pub(crate) async fn save_peers<C: ConnectionTrait>(
    db: &C,
    peers: &[PeerRecord],
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(peers.len() * 4);
    for p in peers {
        values.push(uuid_value(p.peer));
        values.push(match &p.acked {
            Some(v) => blob(rmp_serde::to_vec(v).map_err(|e| corrupt("_sync_peers", e))?),
            None => Value::Bytes(None),
        });
        values.push(Value::BigInt(
            p.last_seen.map(|t| t.min(i64::MAX as u64) as i64),
        ));
        values.push(Value::BigInt(Some(i64::from(p.expired))));
    }
    insert_many(
        db,
        "INSERT INTO _sync_peers (peer, acked, last_seen, expired)",
        4,
        "ON CONFLICT (peer) DO UPDATE SET acked = excluded.acked, last_seen = excluded.last_seen,
           expired = excluded.expired",
        values,
    )
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

/// Appends to the conflict log what it does not hold yet; the number of
/// entries added.
pub(crate) async fn record_conflicts<C: ConnectionTrait>(
    db: &C,
    conflicts: &[NewConflict],
) -> Result<u64, StoreError> {
    let encode = |w: &crate::conflict::Write| {
        rmp_serde::to_vec(w).map_err(|e| corrupt("_sync_conflicts", e))
    };
    let mut values = Vec::with_capacity(conflicts.len() * 7);
    for c in conflicts {
        values.push(c.kind.as_str().into());
        values.push(c.model.into());
        values.push(uuid_value(c.record));
        values.push(Value::String(c.field.clone()));
        values.push(blob(timestamp_key(&c.loser.hlc)));
        values.push(blob(encode(&c.loser)?));
        values.push(match &c.winner {
            Some(w) => blob(encode(w)?),
            None => Value::Bytes(None),
        });
    }
    insert_many(
        db,
        "INSERT OR IGNORE INTO _sync_conflicts (kind, model, record, field, loser_hlc, loser, winner)",
        7,
        "",
        values,
    )
    .await
}

/// A timestamp as sortable bytes: the time big-endian, then the id.
fn timestamp_key(ts: &crate::clock::Timestamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&ts.get_time().0.to_be_bytes());
    out.extend_from_slice(&ts.get_id().to_le_bytes());
    out
}

/// The conflict log, oldest first, from `after` on, at most `limit`.
pub(crate) async fn conflicts<C: ConnectionTrait>(
    db: &C,
    after: i64,
    limit: u64,
) -> Result<Vec<Conflict>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT id, kind, model, record, field, loser, winner FROM _sync_conflicts
             WHERE id > ? ORDER BY id LIMIT ?",
            vec![Value::BigInt(Some(after)), int(limit)?],
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
    super::count(db, "SELECT COUNT(*) AS n FROM _sync_conflicts", vec![]).await
}

fn group_by_rank(keys: &BTreeSet<RecordKey>) -> BTreeMap<Rank, Vec<Value>> {
    let mut out: BTreeMap<Rank, Vec<Value>> = BTreeMap::new();
    for k in keys {
        out.entry(k.rank).or_default().push(uuid_value(k.id));
    }
    out
}

/// The records waiting for each of `parents`.
pub(crate) async fn load_waiters<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    parents: &BTreeSet<RecordKey>,
) -> Result<HashMap<RecordKey, Vec<RecordKey>>, StoreError> {
    let mut out: HashMap<RecordKey, Vec<RecordKey>> =
        parents.iter().map(|k| (*k, Vec::new())).collect();
    for (rank, ids) in group_by_rank(parents) {
        let Some(desc) = registry.at(rank) else {
            continue;
        };
        let rows = in_chunks(
            db,
            "SELECT parent, model, record FROM _sync_waiting WHERE parent_model = ? AND parent IN ({})",
            &[desc.name().into()],
            ids,
        )
        .await?;
        for row in &rows {
            let model: String = row.try_get("", "model")?;
            let Some(r) = registry.rank(&model) else {
                continue;
            };
            let parent = RecordKey {
                rank,
                id: get_uuid(row, "parent", "_sync_waiting")?,
            };
            out.entry(parent).or_default().push(RecordKey {
                rank: r,
                id: get_uuid(row, "record", "_sync_waiting")?,
            });
        }
    }
    Ok(out)
}

/// Replaces the waits of `records` with `waits` (record, parent).
pub(crate) fn replace_waits(
    script: &mut Script,
    registry: &Registry,
    records: &BTreeSet<RecordKey>,
    waits: &[(RecordKey, RecordKey)],
) {
    for (rank, ids) in group_by_rank(records) {
        let Some(desc) = registry.at(rank) else {
            continue;
        };
        script.in_chunks(
            "DELETE FROM _sync_waiting WHERE model = ? AND record IN ({})",
            &[desc.name().into()],
            ids,
        );
    }
    let mut values = Vec::with_capacity(waits.len() * 4);
    for (record, parent) in waits {
        let (Some(r), Some(p)) = (registry.at(record.rank), registry.at(parent.rank)) else {
            continue;
        };
        values.push(p.name().into());
        values.push(uuid_value(parent.id));
        values.push(r.name().into());
        values.push(uuid_value(record.id));
    }
    script.insert_many(
        "INSERT OR IGNORE INTO _sync_waiting (parent_model, parent, model, record)",
        4,
        "",
        values,
    );
}

/// The records that gave up each unique key hash.
pub(crate) async fn load_asides<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    wanted: &BTreeSet<(Rank, u64)>,
) -> Result<HashMap<(Rank, u64), Vec<RecordKey>>, StoreError> {
    let mut out: HashMap<(Rank, u64), Vec<RecordKey>> =
        wanted.iter().map(|w| (*w, Vec::new())).collect();
    let mut by_rank: BTreeMap<Rank, Vec<Value>> = BTreeMap::new();
    for (rank, hash) in wanted {
        by_rank.entry(*rank).or_default().push(int(*hash)?);
    }
    for (rank, hashes) in by_rank {
        let Some(desc) = registry.at(rank) else {
            continue;
        };
        let rows = in_chunks(
            db,
            "SELECT hash, record FROM _sync_aside WHERE model = ? AND hash IN ({})",
            &[desc.name().into()],
            hashes,
        )
        .await?;
        for row in &rows {
            let hash = get_u64(row, "hash", "_sync_aside")?;
            out.entry((rank, hash)).or_default().push(RecordKey {
                rank,
                id: get_uuid(row, "record", "_sync_aside")?,
            });
        }
    }
    Ok(out)
}

/// Replaces the asides of `records` with `asides` (record, hash).
pub(crate) fn replace_asides(
    script: &mut Script,
    registry: &Registry,
    records: &BTreeSet<RecordKey>,
    asides: &[(RecordKey, u64)],
) -> Result<(), StoreError> {
    for (rank, ids) in group_by_rank(records) {
        let Some(desc) = registry.at(rank) else {
            continue;
        };
        script.in_chunks(
            "DELETE FROM _sync_aside WHERE model = ? AND record IN ({})",
            &[desc.name().into()],
            ids,
        );
    }
    let mut values = Vec::with_capacity(asides.len() * 3);
    for (record, hash) in asides {
        let Some(d) = registry.at(record.rank) else {
            continue;
        };
        values.push(d.name().into());
        values.push(int(*hash)?);
        values.push(uuid_value(record.id));
    }
    script.insert_many(
        "INSERT OR IGNORE INTO _sync_aside (model, hash, record)",
        3,
        "",
        values,
    );
    Ok(())
}

/// A snapshot row refused for now.
#[derive(Debug, Clone)]
pub(crate) struct HeldRow {
    pub(crate) model: String,
    pub(crate) record: Uuid,
    pub(crate) row: Vec<u8>,
    pub(crate) reason: String,
}

/// Holds snapshot rows refused for now.
pub(crate) fn hold_rows(script: &mut Script, rows: &[HeldRow]) {
    let mut values = Vec::with_capacity(rows.len() * 4);
    for r in rows {
        values.push(r.model.as_str().into());
        values.push(uuid_value(r.record));
        values.push(blob(r.row.clone()));
        values.push(r.reason.as_str().into());
    }
    script.insert_many(
        "INSERT INTO _sync_held (model, record, row, reason)",
        4,
        "ON CONFLICT (model, record, row) DO UPDATE SET reason = excluded.reason",
        values,
    );
}

/// The held snapshot rows.
pub(crate) async fn held_rows<C: ConnectionTrait>(db: &C) -> Result<Vec<HeldRow>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT model, record, row, reason FROM _sync_held ORDER BY model, record",
            vec![],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(HeldRow {
                model: row.try_get("", "model")?,
                record: get_uuid(row, "record", "_sync_held")?,
                row: row.try_get("", "row")?,
                reason: row.try_get("", "reason")?,
            })
        })
        .collect()
}

/// The records (model and id) a query over `table` lists, each row one.
async fn records_of<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    table: &'static str,
) -> Result<Vec<(String, Uuid)>, StoreError> {
    let rows = db.query_all_raw(stmt(sql, vec![])).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "model")?, get_uuid(row, "record", table)?)))
        .collect()
}

/// The records of the rows held back (model and id, each once), without
/// the rows.
pub(crate) async fn held_records<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(String, Uuid)>, StoreError> {
    records_of(
        db,
        "SELECT DISTINCT model, record FROM _sync_held ORDER BY model, record",
        "_sync_held",
    )
    .await
}

/// The records of held rows that a page of the running snapshot brought:
/// held, and not among those held when it started that no page has
/// brought yet (`_sync_held_unseen`).
pub(crate) async fn held_records_paged<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(String, Uuid)>, StoreError> {
    records_of(
        db,
        "SELECT DISTINCT h.model, h.record FROM _sync_held h
          WHERE NOT EXISTS (SELECT 1 FROM _sync_held_unseen u
                             WHERE u.model = h.model AND u.record = h.record)",
        "_sync_held",
    )
    .await
}

/// The records the running backfill forgot (see `_sync_forgotten`).
pub(crate) async fn forgotten_records<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(String, Uuid)>, StoreError> {
    records_of(
        db,
        "SELECT model, record FROM _sync_forgotten",
        "_sync_forgotten",
    )
    .await
}

/// Marks records as forgotten by the running backfill.
pub(crate) fn mark_forgotten(script: &mut Script, records: &[(&str, Uuid)]) {
    for (model, record) in records {
        script.push(
            "INSERT OR IGNORE INTO _sync_forgotten (model, record) VALUES (?, ?)".into(),
            vec![(*model).into(), uuid_value(*record)],
        );
    }
}

/// Drops held rows, each exactly as it was held.
pub(crate) fn release_held(script: &mut Script, rows: &[HeldRow]) {
    for r in rows {
        script.push(
            "DELETE FROM _sync_held WHERE model = ? AND record = ? AND row = ?".into(),
            vec![
                r.model.as_str().into(),
                uuid_value(r.record),
                blob(r.row.clone()),
            ],
        );
    }
}
