//! Executing what was decided in memory: record states, what the tables
//! show, waits and asides, log entries and conflicts, written model by model
//! in multi-row statements.
//!
//! Order matters only to the database's own checks. Foreign keys are checked
//! at commit (`defer_foreign_keys`), so references may point at rows written
//! later in the same transaction. Unique indexes are checked row by row, so
//! rows that leave free their keys first, rows that change a unique key
//! move it to a placeholder before any row takes its new key, and the new
//! rows and values come last.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use crate::change::EncodedChange;
use crate::error::EngineError;
use crate::merge::NewConflict;
use crate::model::FieldRole;
use crate::project::{
    Decision, Facts, Presence, Projection, Rank, RecordKey, Stored, TableInfo, unique_key_of,
};
use crate::registry::Registry;
use crate::state::RecordState;
use crate::store::{self, bind};
use crate::value::WireValue;

/// Columns of some rows set to placeholders: (local key, a value per
/// column).
#[derive(Debug, Default)]
pub(crate) struct Placeholders {
    pub(crate) columns: Vec<&'static str>,
    pub(crate) rows: Vec<(i64, Vec<Value>)>,
}

/// What one table gets.
#[derive(Debug, Default)]
pub(crate) struct TableWrites {
    pub(crate) deletes: Vec<i64>,
    /// Unique columns moved to placeholders first.
    pub(crate) temps: Vec<Placeholders>,
    pub(crate) upserts: Vec<(i64, Vec<Value>)>,
}

/// Everything a plan writes.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pub(crate) rows: Vec<(RecordKey, Stored)>,
    pub(crate) decided: BTreeSet<RecordKey>,
    pub(crate) waits: Vec<(RecordKey, RecordKey)>,
    pub(crate) asides: Vec<(RecordKey, u64)>,
    pub(crate) log: Vec<(Uuid, u64, EncodedChange)>,
    pub(crate) conflicts: Vec<NewConflict>,
    pub(crate) tables: BTreeMap<Rank, TableWrites>,
    /// Change in the number of records waiting or refused.
    pub(crate) waiting_delta: i64,
    /// Records stored for the first time, per model.
    pub(crate) new_rows: BTreeMap<&'static str, u64>,
    /// What each decided record shows now.
    pub(crate) shown: BTreeMap<RecordKey, Presence>,
    /// Decided records that were stored before (only they can hold waits
    /// or asides to replace).
    pub(crate) existing: BTreeSet<RecordKey>,
    /// The application's foreign keys are checked at commit, not after each
    /// statement (see [`needs_deferred_keys`]).
    pub(crate) defer_foreign_keys: bool,
    /// Stored records whose state goes, with no tombstone (forgotten).
    pub(crate) forgotten: Vec<RecordKey>,
}

/// Whether writing `tables` in order may break one of the application's
/// foreign keys between two statements, so that they must be checked at
/// commit (`PRAGMA defer_foreign_keys`). That pragma costs more than its
/// statement: SQLite expires every prepared statement of the connection
/// when a flag pragma runs, so the next transaction prepares each of its
/// statements again (a fifth of a received batch's database time was that
/// parsing). Rows are written table by table in the registry's order,
/// parents first, and SQLite checks an immediate key at the end of each
/// statement; so the order suffices unless rows are deleted or moved aside
/// (a child may still name them until a later statement), a table refers
/// to one written after it, or a table that refers to itself takes more
/// than one statement.
fn needs_deferred_keys(
    registry: &Registry,
    tables: &[TableInfo],
    writes: &BTreeMap<Rank, TableWrites>,
) -> bool {
    writes.iter().any(|(rank, t)| {
        let (Some(info), Some(desc)) = (tables.get(*rank), registry.at(*rank)) else {
            return true;
        };
        !t.deletes.is_empty()
            || !t.temps.is_empty()
            || (!t.upserts.is_empty()
                && (info.refers_forward
                    || (info.refers_to_itself
                        && t.upserts.len() > store::chunk_rows(store::upsert_width(desc)))))
    })
}

fn waits_or_refused(p: Presence) -> bool {
    matches!(p, Presence::Waiting | Presence::Refused)
}

/// Turns a projection into writes. `changed` are the records whose state
/// changed; every other decided record keeps its stored state.
pub(crate) fn build(
    registry: &Registry,
    tables: &[TableInfo],
    mut changed: BTreeMap<RecordKey, RecordState>,
    mut facts: Facts,
    projection: Projection,
) -> Result<Writes, EngineError> {
    let mut w = Writes {
        conflicts: projection.conflicts,
        ..Writes::default()
    };
    for (key, d) in projection.decisions {
        let Some(desc) = registry.at(key.rank) else {
            continue;
        };
        let stored = facts.rows.remove(&key).flatten();
        if d.presence == Presence::Absent {
            // Only a forgotten record has no state to show: its row leaves
            // the table, its state and its own waits and asides go.
            if let Some(s) = &stored {
                w.waiting_delta -= i64::from(waits_or_refused(s.presence));
                table_writes(registry, tables, &facts, key, &d, &s.state, &mut w)?;
                w.shown.insert(key, Presence::Absent);
                w.decided.insert(key);
                w.existing.insert(key);
                w.forgotten.push(key);
            }
            continue;
        }
        let (state, state_changed) = match (changed.remove(&key), &stored) {
            (Some(s), _) => (s, true),
            (None, Some(s)) => (s.state.clone(), false),
            (None, None) => continue,
        };
        let before = d.before;
        w.waiting_delta +=
            i64::from(waits_or_refused(d.presence)) - i64::from(waits_or_refused(before.0));
        w.shown.insert(key, d.presence);
        let row = Stored {
            state,
            presence: d.presence,
            key: if d.presence == Presence::Present {
                d.key
            } else {
                None
            },
            aside: d.aside.is_some(),
        };
        table_writes(registry, tables, &facts, key, &d, &row.state, &mut w)?;
        w.decided.insert(key);
        match &stored {
            None => *w.new_rows.entry(desc.name()).or_default() += 1,
            Some(_) => {
                w.existing.insert(key);
            }
        }
        let moved = stored
            .as_ref()
            .is_none_or(|s| (s.presence, s.key, s.aside) != (row.presence, row.key, row.aside));
        w.waits.extend(d.waits.iter().map(|p| (key, *p)));
        if let Some(hash) = d.aside {
            w.asides.push((key, hash));
        }
        if state_changed || moved {
            w.rows.push((key, row));
        }
    }
    // A changed state the planner did not decide (it decides every one it
    // is given) is still stored, as it was shown.
    for (key, state) in changed {
        let stored = facts.rows.remove(&key).flatten();
        if stored.is_none()
            && let Some(d) = registry.at(key.rank)
        {
            *w.new_rows.entry(d.name()).or_default() += 1;
        }
        let (presence, local_key, aside) = stored.map_or((Presence::Absent, None, false), |s| {
            (s.presence, s.key, s.aside)
        });
        w.rows.push((
            key,
            Stored {
                state,
                presence,
                key: local_key,
                aside,
            },
        ));
    }
    w.defer_foreign_keys = needs_deferred_keys(registry, tables, &w.tables);
    Ok(w)
}

fn table_writes(
    registry: &Registry,
    tables: &[TableInfo],
    facts: &Facts,
    key: RecordKey,
    d: &Decision,
    state: &RecordState,
    w: &mut Writes,
) -> Result<(), EngineError> {
    let Some(desc) = registry.at(key.rank) else {
        return Ok(());
    };
    let t = w.tables.entry(key.rank).or_default();
    let (was, old_key) = d.before;
    let now_key = (d.presence == Presence::Present).then_some(d.key).flatten();
    if was == Presence::Present
        && let Some(old) = old_key
        && now_key != Some(old)
    {
        t.deletes.push(old);
    }
    let Some(values) = &d.values else {
        return Ok(());
    };
    let Some(k) = now_key else {
        return Ok(());
    };
    // A row that stays and changes a unique key moves it aside first, so
    // that rows swapping keys never meet.
    if was == Presence::Present
        && old_key == Some(k)
        && let Some(info) = tables.get(key.rank)
        && let Some(old) = facts.old_unique.get(&(key.rank, k))
    {
        for (index, old_values) in info.unique.iter().zip(old) {
            let new = unique_key_of(desc.meta(), state, values, index);
            if new.as_ref() == Some(old_values) || old_values.iter().any(WireValue::is_null) {
                continue;
            }
            let mut columns = Vec::new();
            let mut temp = Vec::new();
            for f in &index.fields {
                let field = &desc.meta().fields[*f];
                columns.push(field.column);
                temp.push(placeholder(desc, *f, old_values, index, key.id, k));
            }
            t.temps.push(Placeholders {
                columns,
                rows: vec![(k, temp)],
            });
        }
    }
    let mut row = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        row.push(bind(desc, i, v, state)?);
    }
    t.upserts.push((k, row));
    Ok(())
}

/// A value no other row holds, for a unique column on its way to a new
/// value: a marked text, a null, or an integer below any key.
fn placeholder(
    desc: &crate::registry::ModelDescriptor,
    field: usize,
    old_values: &[WireValue],
    index: &crate::project::UniqueIndex,
    id: Uuid,
    key: i64,
) -> Value {
    let meta = desc.meta();
    let position = index.fields.iter().position(|f| *f == field).unwrap_or(0);
    let nullable = match meta.fields[field].role {
        FieldRole::Reference { .. } => meta.fields[field].nullable,
        _ => desc.column_nullable(field),
    };
    match old_values.get(position) {
        Some(WireValue::String(_)) => {
            Value::String(Some(format!("\u{1}syncable:{}:{field}", id.simple())))
        }
        _ if nullable => Value::BigInt(None),
        Some(
            WireValue::I8(_)
            | WireValue::I16(_)
            | WireValue::I32(_)
            | WireValue::U8(_)
            | WireValue::U16(_),
        ) => {
            // Narrow integers: the negated key fits most columns.
            Value::BigInt(Some(-key))
        }
        _ => Value::BigInt(Some(i64::MIN.saturating_add(key))),
    }
}

/// Adds everything but the conflicts to `script`, in the order the
/// database's checks accept.
pub(crate) fn script(
    script: &mut store::Script,
    registry: &Registry,
    writes: &mut Writes,
) -> Result<(), EngineError> {
    if writes.defer_foreign_keys {
        // Foreign keys of the application's tables are checked at commit,
        // when every row of the plan is in place.
        script.push("PRAGMA defer_foreign_keys = ON".into(), Vec::new());
    }
    for (rank, t) in writes.tables.iter().rev() {
        if let Some(desc) = registry.at(*rank) {
            store::delete_rows(script, desc, &t.deletes);
        }
    }
    for (rank, t) in &writes.tables {
        if let Some(desc) = registry.at(*rank) {
            for p in &t.temps {
                store::update_columns(script, desc, &p.columns, &p.rows);
            }
        }
    }
    for (rank, t) in writes.tables.iter_mut() {
        if let Some(desc) = registry.at(*rank) {
            store::upsert_rows(script, desc, std::mem::take(&mut t.upserts));
        }
    }
    let rows: Vec<(RecordKey, &Stored)> = writes.rows.iter().map(|(k, s)| (*k, s)).collect();
    store::write_rows(script, registry, &rows)?;
    store::delete_states(script, registry, &writes.forgotten);
    if !writes.existing.is_empty() {
        store::replace_waits(script, registry, &writes.existing, &[]);
        store::replace_asides(script, registry, &writes.existing, &[])?;
    }
    store::replace_waits(script, registry, &BTreeSet::new(), &writes.waits);
    store::replace_asides(script, registry, &BTreeSet::new(), &writes.asides)?;
    let log: Vec<(Uuid, u64, &EncodedChange)> =
        writes.log.iter().map(|(o, s, b)| (*o, *s, b)).collect();
    store::append_log(script, &log)?;
    Ok(())
}

/// Runs a script, then records the conflicts (apart: the number actually
/// added is what the counters need). Returns that number.
pub(crate) async fn run<C: ConnectionTrait>(
    db: &C,
    script: store::Script,
    conflicts: &[NewConflict],
) -> Result<u64, EngineError> {
    script.run(db).await?;
    if conflicts.is_empty() {
        return Ok(0);
    }
    Ok(store::record_conflicts(db, conflicts).await?)
}

/// Loads, before the first plan, what a plan of these changes almost
/// always needs: the stored rows of the records they reference, the
/// records waiting for them, and the highest keys of their tables. The
/// planner then usually answers at once instead of asking round by round.
async fn prefetch<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    tables: &[TableInfo],
    input: &crate::project::Input,
    facts: &mut Facts,
) -> Result<(), EngineError> {
    let mut rows = BTreeSet::new();
    let mut waiters = BTreeSet::new();
    let mut ranks = BTreeSet::new();
    let mut created = false;
    for (key, state) in &input.changed {
        let stored = facts.rows.get(key).and_then(|r| r.as_ref());
        if stored.is_none_or(|s| s.presence != Presence::Present) {
            // It may be shown now: whoever waited for it looks again.
            if !facts.waiters.contains_key(key) {
                waiters.insert(*key);
            }
            ranks.insert(key.rank);
            created = true;
        }
        let Some(desc) = registry.at(key.rank) else {
            continue;
        };
        for r in desc.meta().references() {
            if let (Some(WireValue::Uuid(Some(parent))), Some(rank)) =
                (state.value(r.field), registry.rank(r.target))
            {
                let target = RecordKey { rank, id: *parent };
                if !input.changed.contains_key(&target) && !facts.rows.contains_key(&target) {
                    rows.insert(target);
                }
            }
        }
    }
    for key in input.fixed.keys() {
        ranks.remove(&key.rank);
    }
    if !rows.is_empty() {
        facts
            .rows
            .extend(store::load_rows(db, registry, &rows).await?);
    }
    if !waiters.is_empty() {
        facts
            .waiters
            .extend(store::load_waiters(db, registry, &waiters).await?);
    }
    if created {
        for rank in ranks {
            if let (Some(desc), false) = (registry.at(rank), facts.max_key.contains_key(&rank)) {
                let auto = tables.get(rank).is_some_and(|t| t.autoincrement);
                facts
                    .max_key
                    .insert(rank, store::max_key(db, desc, auto).await?);
            }
        }
    }
    Ok(())
}

/// Projects `input`, loading into `facts` what the plan needs, and turns
/// the projection into writes.
pub(crate) async fn plan<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    tables: &[TableInfo],
    input: crate::project::Input,
    mut facts: Facts,
) -> Result<Writes, EngineError> {
    let projection = project(db, registry, tables, &input, &mut facts).await?;
    build(registry, tables, input.changed, facts, projection)
}

/// Loads what the planner asks for, and asks again, until it can answer.
pub(crate) async fn project<C: ConnectionTrait>(
    db: &C,
    registry: &Registry,
    tables: &[TableInfo],
    input: &crate::project::Input,
    facts: &mut Facts,
) -> Result<Projection, EngineError> {
    use crate::project::Unfinished;
    prefetch(db, registry, tables, input, facts).await?;
    // Each round loads at least one missing fact, and the facts a plan can
    // need are finite; the bound only guards against a planner bug.
    for round in 0..10_000 {
        match crate::project::plan(registry, tables, input, facts) {
            Ok(p) => {
                metrics::histogram!("syncable_projection_rounds").record(f64::from(round + 1));
                return Ok(p);
            }
            Err(Unfinished::Unsettled(why)) => return Err(EngineError::Unsettled(why)),
            Err(Unfinished::Needs(needs)) => {
                if !needs.rows.is_empty() {
                    facts
                        .rows
                        .extend(store::load_rows(db, registry, &needs.rows).await?);
                }
                if !needs.children.is_empty() {
                    facts
                        .children
                        .extend(store::load_children(db, registry, &needs.children).await?);
                }
                if !needs.waiters.is_empty() {
                    facts
                        .waiters
                        .extend(store::load_waiters(db, registry, &needs.waiters).await?);
                }
                if !needs.holders.is_empty() {
                    facts
                        .holders
                        .extend(store::load_holders(db, registry, tables, &needs.holders).await?);
                }
                if !needs.asides.is_empty() {
                    facts
                        .asides
                        .extend(store::load_asides(db, registry, &needs.asides).await?);
                }
                if !needs.old_unique.is_empty() {
                    facts.old_unique.extend(
                        store::load_old_unique(db, registry, tables, &needs.old_unique).await?,
                    );
                }
                for rank in &needs.max_key {
                    if let Some(desc) = registry.at(*rank) {
                        let auto = tables.get(*rank).is_some_and(|t| t.autoincrement);
                        facts
                            .max_key
                            .insert(*rank, store::max_key(db, desc, auto).await?);
                    }
                }
                // Whatever was asked and not found is known now to be
                // absent: the planner never asks for the same fact twice.
                for k in needs.rows {
                    facts.rows.entry(k).or_insert(None);
                }
                for k in needs.children {
                    facts.children.entry(k).or_default();
                }
                for k in needs.waiters {
                    facts.waiters.entry(k).or_default();
                }
                for k in needs.holders.into_keys() {
                    facts.holders.entry(k).or_default();
                }
                for k in needs.asides {
                    facts.asides.entry(k).or_default();
                }
                for k in needs.old_unique {
                    facts.old_unique.entry(k).or_default();
                }
                for k in needs.max_key {
                    facts.max_key.entry(k).or_insert(0);
                }
            }
        }
    }
    Err(EngineError::Unsettled(
        "the projection kept asking for facts".into(),
    ))
}
