//! `_sync_seals`, `_sync_husks`, `_sync_members`: what proves changes, and
//! who belongs to the library.

use sea_orm::ConnectionTrait;
use uuid::Uuid;

use super::{Script, StoreError, blob, corrupt, int, stmt, uuid_value};
use crate::trust::members::MemberRecord;
use crate::trust::seal::{Hash, Husk, Seal, Skeleton};

/// Stores seals with what is known of their trees, replacing what was
/// stored for the same commit.
pub(crate) fn save_seals(
    script: &mut Script,
    seals: &[(Seal, Skeleton)],
) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(seals.len() * 5);
    for (seal, skeleton) in seals {
        values.push(uuid_value(seal.origin));
        values.push(int(seal.last)?);
        values.push(int(seal.first)?);
        values.push(blob(
            rmp_serde::to_vec(seal).map_err(|e| corrupt("_sync_seals", e))?,
        ));
        values.push(blob(skeleton.encode(seal.len())));
    }
    script.insert_many(
        "INSERT INTO _sync_seals (origin, last, first, seal, skeleton)",
        5,
        "ON CONFLICT (origin, last) DO UPDATE SET skeleton = excluded.skeleton",
        values,
    );
    Ok(())
}

fn seal_row(row: &sea_orm::QueryResult) -> Result<(Seal, Skeleton), StoreError> {
    let seal: Vec<u8> = row.try_get("", "seal")?;
    let skeleton: Vec<u8> = row.try_get("", "skeleton")?;
    let seal: Seal = rmp_serde::from_slice(&seal).map_err(|e| corrupt("_sync_seals", e))?;
    let skeleton = Skeleton::decode(&skeleton).ok_or_else(|| corrupt("_sync_seals", "skeleton"))?;
    Ok((seal, skeleton))
}

/// The seals of `origin` that cover any number in `(after, upto]`, in
/// order.
pub(crate) async fn seals_between<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    after: u64,
    upto: u64,
) -> Result<Vec<(Seal, Skeleton)>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT seal, skeleton FROM _sync_seals
             WHERE origin = ? AND last > ? AND first <= ? ORDER BY last",
            vec![uuid_value(origin), int(after)?, int(upto)?],
        ))
        .await?;
    rows.iter().map(seal_row).collect()
}

/// The stored seal of `origin` ending at `last`, if any.
pub(crate) async fn seal_at<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    last: u64,
) -> Result<Option<(Seal, Skeleton)>, StoreError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT seal, skeleton FROM _sync_seals WHERE origin = ? AND last = ?",
            vec![uuid_value(origin), int(last)?],
        ))
        .await?;
    row.as_ref().map(seal_row).transpose()
}

/// Stores husks of `origin`'s superseded changes.
pub(crate) fn save_husks(script: &mut Script, husks: &[(Uuid, Husk)]) -> Result<(), StoreError> {
    let mut values = Vec::with_capacity(husks.len() * 3);
    for (origin, husk) in husks {
        values.push(uuid_value(*origin));
        values.push(int(husk.seq)?);
        values.push(blob(
            rmp_serde::to_vec(husk).map_err(|e| corrupt("_sync_husks", e))?,
        ));
    }
    script.insert_many(
        "INSERT OR IGNORE INTO _sync_husks (origin, seq, husk)",
        3,
        "",
        values,
    );
    Ok(())
}

/// The husks of `origin` numbered in `(after, upto]`.
pub(crate) async fn husks_between<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    after: u64,
    upto: u64,
) -> Result<Vec<Husk>, StoreError> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT husk FROM _sync_husks WHERE origin = ? AND seq > ? AND seq <= ? ORDER BY seq",
            vec![uuid_value(origin), int(after)?, int(upto)?],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let bytes: Vec<u8> = row.try_get("", "husk")?;
            rmp_serde::from_slice(&bytes).map_err(|e| corrupt("_sync_husks", e))
        })
        .collect()
}

/// Drops the seals every peer is past and the husks they held.
pub(crate) async fn prune_proofs<C: ConnectionTrait>(
    db: &C,
    origin: Uuid,
    floor: u64,
) -> Result<(), StoreError> {
    db.execute_raw(stmt(
        "DELETE FROM _sync_seals WHERE origin = ? AND last <= ?",
        vec![uuid_value(origin), int(floor)?],
    ))
    .await?;
    db.execute_raw(stmt(
        "DELETE FROM _sync_husks WHERE origin = ? AND seq <= ?",
        vec![uuid_value(origin), int(floor)?],
    ))
    .await?;
    Ok(())
}

/// Every stored membership record.
pub(crate) async fn load_members<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(Hash, MemberRecord)>, StoreError> {
    let rows = db
        .query_all_raw(stmt("SELECT id, record FROM _sync_members", vec![]))
        .await?;
    rows.iter()
        .map(|row| {
            let id: Vec<u8> = row.try_get("", "id")?;
            let id: Hash = id
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("_sync_members", "an id is 32 bytes"))?;
            let bytes: Vec<u8> = row.try_get("", "record")?;
            let record = rmp_serde::from_slice(&bytes).map_err(|e| corrupt("_sync_members", e))?;
            Ok((id, record))
        })
        .collect()
}

/// Stores membership records.
pub(crate) fn save_members(script: &mut Script, records: &[(Hash, Vec<u8>)]) {
    let mut values = Vec::with_capacity(records.len() * 2);
    for (id, bytes) in records {
        values.push(blob(id.to_vec()));
        values.push(blob(bytes.clone()));
    }
    script.insert_many(
        "INSERT OR IGNORE INTO _sync_members (id, record)",
        2,
        "",
        values,
    );
}
