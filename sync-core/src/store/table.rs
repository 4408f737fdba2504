//! The application's tables, as the engine reads and writes them: whole
//! rows by local key, in multi-row statements.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sea_orm::{ConnectionTrait, QueryResult, Value};
use uuid::Uuid;

use super::{Script, StoreError, chunk_rows, ident, in_chunks, placeholders, stmt};
use crate::model::FieldRole;
use crate::project::{Holder, HolderKey, Projected, Rank, RecordKey, TableInfo};
use crate::registry::{ModelDescriptor, Registry};
use crate::value::WireValue;

fn read_uuid(desc: &ModelDescriptor, row: &QueryResult, alias: &str) -> Result<Uuid, StoreError> {
    let index = desc
        .meta()
        .id_index()
        .ok_or_else(|| super::corrupt("model", "a model without an id field"))?;
    match desc.read_field(index, row, alias)? {
        WireValue::Uuid(Some(id)) => Ok(id),
        other => Err(super::corrupt(
            desc.meta().table,
            format!("the id column holds {}", other.kind()),
        )),
    }
}

/// The value bound for a projected column of a record whose state is
/// `state` (checked against the model when it was received).
pub(crate) fn bind(
    desc: &ModelDescriptor,
    index: usize,
    value: &Projected,
    state: &crate::state::RecordState,
) -> Result<Value, StoreError> {
    let bad = |e: &dyn std::fmt::Display| {
        super::corrupt(
            "_sync_rows",
            format!("`{}` field {index}: {e}", desc.name()),
        )
    };
    Ok(match value {
        Projected::Data => {
            let field = desc
                .meta()
                .fields
                .get(index)
                .ok_or_else(|| bad(&"no such field"))?;
            state
                .value(field.name)
                .ok_or_else(|| bad(&"a shown record without the field"))?
                .to_sea()
                .map_err(|e| bad(&e))?
        }
        Projected::Text(s) => Value::String(Some(s.clone())),
        Projected::Key(k) => Value::BigInt(Some(*k)),
        Projected::Null => Value::BigInt(None),
    })
}

/// Inserts or replaces whole rows (local key and every synced field; the
/// local-only columns of a new row get their defaults, those of an existing
/// row are kept).
/// Values per row of [`upsert_rows`]: the local key, the synced fields
/// and the local-only columns.
pub(crate) fn upsert_width(desc: &ModelDescriptor) -> usize {
    let meta = desc.meta();
    1 + meta.fields.len() + meta.local_only_columns.len()
}

pub(crate) fn upsert_rows(
    script: &mut Script,
    desc: &ModelDescriptor,
    rows: Vec<(i64, Vec<Value>)>,
) {
    if rows.is_empty() {
        return;
    }
    let meta = desc.meta();
    let mut columns = vec![ident(meta.local_key_column)];
    columns.extend(meta.fields.iter().map(|f| ident(f.column)));
    columns.extend(meta.local_only_columns.iter().map(|c| ident(c)));
    let updates: Vec<String> = meta
        .fields
        .iter()
        .map(|f| format!("{0} = excluded.{0}", ident(f.column)))
        .collect();
    let head = format!("INSERT INTO {} ({})", ident(meta.table), columns.join(", "));
    let suffix = format!(
        "ON CONFLICT ({}) DO UPDATE SET {}",
        ident(meta.local_key_column),
        updates.join(", ")
    );
    let defaults = desc.local_defaults();
    let width = columns.len();
    let mut values = Vec::with_capacity(rows.len() * width);
    for (key, row) in rows {
        values.push(Value::BigInt(Some(key)));
        values.extend(row);
        values.extend(defaults.iter().cloned());
    }
    script.insert_many(&head, width, &suffix, values);
}

/// Deletes rows by local key.
pub(crate) fn delete_rows(script: &mut Script, desc: &ModelDescriptor, keys: &[i64]) {
    if keys.is_empty() {
        return;
    }
    let meta = desc.meta();
    let sql = format!(
        "DELETE FROM {} WHERE {} IN ({{}})",
        ident(meta.table),
        ident(meta.local_key_column)
    );
    script.in_chunks(
        &sql,
        &[],
        keys.iter().map(|k| Value::BigInt(Some(*k))).collect(),
    );
}

/// Sets some columns of some rows: `rows` are (local key, value per column
/// of `columns`), written with one `CASE` per column per chunk.
pub(crate) fn update_columns(
    script: &mut Script,
    desc: &ModelDescriptor,
    columns: &[&str],
    rows: &[(i64, Vec<Value>)],
) {
    if rows.is_empty() || columns.is_empty() {
        return;
    }
    let meta = desc.meta();
    let pk = ident(meta.local_key_column);
    let per = chunk_rows(2 * columns.len() + 1);
    for chunk in rows.chunks(per) {
        let mut sets = Vec::with_capacity(columns.len());
        let mut values = Vec::new();
        for (c, column) in columns.iter().enumerate() {
            let mut case = format!("{} = CASE {pk}", ident(column));
            for (key, row) in chunk {
                case.push_str(" WHEN ? THEN ?");
                values.push(Value::BigInt(Some(*key)));
                values.push(row.get(c).cloned().unwrap_or(Value::BigInt(None)));
            }
            case.push_str(&format!(" ELSE {} END", ident(column)));
            sets.push(case);
        }
        values.extend(chunk.iter().map(|(k, _)| Value::BigInt(Some(*k))));
        let sql = format!(
            "UPDATE {} SET {} WHERE {pk} IN ({})",
            ident(meta.table),
            sets.join(", "),
            placeholders(chunk.len())
        );
        script.push(sql, values);
    }
}

/// The rows of any model that reference rows of model `target` by local key,
/// for each key of `keys`.
pub(crate) async fn load_children<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    wanted: &BTreeSet<(Rank, i64)>,
) -> Result<HashMap<(Rank, i64), Vec<RecordKey>>, StoreError> {
    let mut out: HashMap<(Rank, i64), Vec<RecordKey>> =
        wanted.iter().map(|w| (*w, Vec::new())).collect();
    let mut by_target: BTreeMap<Rank, Vec<i64>> = BTreeMap::new();
    for (rank, key) in wanted {
        by_target.entry(*rank).or_default().push(*key);
    }
    for (target_rank, keys) in by_target {
        let Some(target) = registry.at(target_rank) else {
            continue;
        };
        for (child, reference) in registry.references_to(target.name()) {
            let Some(child_rank) = registry.rank(child.name()) else {
                continue;
            };
            let meta = child.meta();
            let Some(id_field) = meta.id_field() else {
                continue;
            };
            let column = ident(meta.fields[reference.index].column);
            let sql = format!(
                "SELECT {column} AS parent, {} AS gid FROM {} WHERE {column} IN ({{}})",
                ident(id_field.column),
                ident(meta.table),
            );
            let rows = in_chunks(
                db,
                &sql,
                &[],
                keys.iter().map(|k| Value::BigInt(Some(*k))).collect(),
            )
            .await?;
            for row in &rows {
                let parent: Option<i64> = row.try_get("", "parent")?;
                let Some(parent) = parent else { continue };
                let id = read_uuid(child, row, "gid")?;
                out.entry((target_rank, parent))
                    .or_default()
                    .push(RecordKey {
                        rank: child_rank,
                        id,
                    });
            }
        }
    }
    Ok(out)
}

/// Rows holding each unique key: (local key, global id, the key's values).
pub(crate) async fn load_holders<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    tables: &[TableInfo],
    wanted: &BTreeMap<(Rank, usize, u64), Vec<WireValue>>,
) -> Result<HashMap<HolderKey, Vec<Holder>>, StoreError> {
    let mut out: HashMap<HolderKey, Vec<Holder>> =
        wanted.keys().map(|k| (*k, Vec::new())).collect();
    let mut grouped: BTreeMap<(Rank, usize), Vec<&Vec<WireValue>>> = BTreeMap::new();
    for ((rank, ix, _), values) in wanted {
        grouped.entry((*rank, *ix)).or_default().push(values);
    }
    for ((rank, ix), keys) in grouped {
        let (Some(desc), Some(index)) = (
            registry.at(rank),
            tables.get(rank).and_then(|t| t.unique.get(ix)),
        ) else {
            continue;
        };
        let meta = desc.meta();
        let Some(id_field) = meta.id_field() else {
            continue;
        };
        let cols: Vec<String> = index
            .fields
            .iter()
            .map(|i| ident(meta.fields[*i].column))
            .collect();
        let aliases: Vec<String> = (0..cols.len()).map(|i| format!("u{i}")).collect();
        let select: Vec<String> = cols
            .iter()
            .zip(&aliases)
            .map(|(c, a)| format!("{c} AS {a}"))
            .collect();
        let width = cols.len();
        let per = chunk_rows(width);
        for chunk in keys.chunks(per) {
            let mut values = Vec::with_capacity(chunk.len() * width);
            for key in chunk {
                for (field, v) in index.fields.iter().zip(key.iter()) {
                    values.push(bind_unique(desc, *field, v)?);
                }
            }
            let tuple = format!("({})", placeholders(width));
            let list = vec![tuple; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {} AS pk, {} AS gid, {} FROM {} WHERE ({}) IN (VALUES {list})",
                ident(meta.local_key_column),
                ident(id_field.column),
                select.join(", "),
                ident(meta.table),
                cols.join(", "),
            );
            for row in db.query_all_raw(stmt(&sql, values)).await? {
                let pk: i64 = row.try_get("", "pk")?;
                let id = read_uuid(desc, &row, "gid")?;
                let mut key = Vec::with_capacity(width);
                for (field, alias) in index.fields.iter().zip(&aliases) {
                    key.push(desc.read_field(*field, &row, alias)?);
                }
                let hash = crate::project::key_hash(&key);
                out.entry((rank, ix, hash)).or_default().push((pk, id, key));
            }
        }
    }
    Ok(out)
}

fn bind_unique(desc: &ModelDescriptor, field: usize, v: &WireValue) -> Result<Value, StoreError> {
    match desc.meta().fields[field].role {
        FieldRole::Reference { .. } => match v {
            WireValue::I64(k) => Ok(Value::BigInt(*k)),
            other => Err(super::corrupt(
                desc.meta().table,
                format!("a reference key as {}", other.kind()),
            )),
        },
        _ => v
            .to_sea()
            .map_err(|e| super::corrupt(desc.meta().table, format!("a unique key value: {e}"))),
    }
}

/// The values of the unique columns of rows by local key, per index.
pub(crate) async fn load_old_unique<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    tables: &[TableInfo],
    wanted: &BTreeSet<(Rank, i64)>,
) -> Result<HashMap<(Rank, i64), Vec<Vec<WireValue>>>, StoreError> {
    // A row not in the table (deleted by this transaction) holds no key.
    let mut out: HashMap<(Rank, i64), Vec<Vec<WireValue>>> =
        wanted.iter().map(|w| (*w, Vec::new())).collect();
    let mut by_rank: BTreeMap<Rank, Vec<i64>> = BTreeMap::new();
    for (rank, key) in wanted {
        by_rank.entry(*rank).or_default().push(*key);
    }
    for (rank, keys) in by_rank {
        let (Some(desc), Some(indexes)) = (registry.at(rank), tables.get(rank).map(|t| &t.unique))
        else {
            continue;
        };
        let meta = desc.meta();
        let fields: Vec<usize> = indexes
            .iter()
            .flat_map(|ix| ix.fields.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let select: Vec<String> = fields
            .iter()
            .map(|i| format!("{} AS f{i}", ident(meta.fields[*i].column)))
            .collect();
        let sql = format!(
            "SELECT {} AS pk, {} FROM {} WHERE {} IN ({{}})",
            ident(meta.local_key_column),
            select.join(", "),
            ident(meta.table),
            ident(meta.local_key_column),
        );
        let rows = in_chunks(
            db,
            &sql,
            &[],
            keys.iter().map(|k| Value::BigInt(Some(*k))).collect(),
        )
        .await?;
        for row in &rows {
            let pk: i64 = row.try_get("", "pk")?;
            let mut per_index = Vec::with_capacity(indexes.len());
            for ix in indexes {
                let mut values = Vec::with_capacity(ix.fields.len());
                for f in &ix.fields {
                    values.push(desc.read_field(*f, row, &format!("f{f}"))?);
                }
                per_index.push(values);
            }
            out.insert((rank, pk), per_index);
        }
    }
    Ok(out)
}

/// The highest local key a model's table has used (0 for none), counting
/// keys an `AUTOINCREMENT` table promised never to reuse; one statement.
pub(crate) async fn max_key<C: ConnectionTrait>(
    db: &C,
    desc: &ModelDescriptor,
    autoincrement: bool,
) -> Result<i64, StoreError> {
    let (keys, values) = key_candidates(desc, autoincrement);
    let row = db
        .query_one_raw(stmt(&format!("SELECT MAX(m) AS m FROM {keys}"), values))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "m")?.unwrap_or(0),
        None => 0,
    })
}

/// A subquery of the keys whose maximum is `max_key`'s answer (column `m`),
/// with the values it binds.
pub(crate) fn key_candidates(desc: &ModelDescriptor, autoincrement: bool) -> (String, Vec<Value>) {
    let meta = desc.meta();
    let highest = format!(
        "SELECT MAX({}) AS m FROM {}",
        ident(meta.local_key_column),
        ident(meta.table)
    );
    // `sqlite_sequence` exists once any AUTOINCREMENT table does.
    if autoincrement {
        (
            format!("({highest} UNION ALL SELECT seq AS m FROM sqlite_sequence WHERE name = ?)"),
            vec![meta.table.into()],
        )
    } else {
        (format!("({highest})"), vec![])
    }
}

/// The global ids of rows by local key.
pub(crate) async fn gids_of_keys<C: ConnectionTrait>(
    db: &C,
    desc: &ModelDescriptor,
    keys: &BTreeSet<i64>,
) -> Result<HashMap<i64, Uuid>, StoreError> {
    let meta = desc.meta();
    let Some(id_field) = meta.id_field() else {
        return Ok(HashMap::new());
    };
    let sql = format!(
        "SELECT {} AS pk, {} AS gid FROM {} WHERE {} IN ({{}})",
        ident(meta.local_key_column),
        ident(id_field.column),
        ident(meta.table),
        ident(meta.local_key_column),
    );
    let rows = in_chunks(
        db,
        &sql,
        &[],
        keys.iter().map(|k| Value::BigInt(Some(*k))).collect(),
    )
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in &rows {
        let pk: i64 = row.try_get("", "pk")?;
        out.insert(pk, read_uuid(desc, row, "gid")?);
    }
    Ok(out)
}

/// A page of a model's table in wire form, by local key: (local key, global
/// id, synced fields with references as local keys).
pub(crate) async fn table_page<C: ConnectionTrait>(
    db: &C,
    desc: &ModelDescriptor,
    after: i64,
    limit: u64,
) -> Result<Vec<(i64, Uuid, Vec<WireValue>)>, StoreError> {
    let meta = desc.meta();
    let select: Vec<String> = meta
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{} AS f{i}", ident(f.column)))
        .collect();
    let sql = format!(
        "SELECT {pk} AS pk, {} FROM {} WHERE {pk} > ? ORDER BY {pk} LIMIT ?",
        select.join(", "),
        ident(meta.table),
        pk = ident(meta.local_key_column),
    );
    let rows = db
        .query_all_raw(stmt(
            &sql,
            vec![Value::BigInt(Some(after)), super::int(limit)?],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let pk: i64 = row.try_get("", "pk")?;
        let mut values = Vec::with_capacity(meta.fields.len());
        for i in 0..meta.fields.len() {
            values.push(desc.read_field(i, row, &format!("f{i}"))?);
        }
        let id = match meta.id_index().and_then(|i| values.get(i)) {
            Some(WireValue::Uuid(Some(id))) => *id,
            _ => return Err(super::corrupt(meta.table, "a row without its global id")),
        };
        out.push((pk, id, values));
    }
    Ok(out)
}
