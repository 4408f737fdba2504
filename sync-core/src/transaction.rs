//! Writes by the application: the rows, their states, their changes and the
//! log commit in one SQLite transaction, or none of them do.
//!
//! The application's own statements run as it makes them (through sea-orm,
//! with its `ActiveModelBehavior`). The engine's part waits for the commit,
//! where it is done for the whole transaction at once: references turned
//! into global ids in one query per model, states loaded in one query per
//! model, and states, log entries and what the writes do to other records
//! (a delete's cascade, a unique key given up) written set-oriented.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    EntityTrait, IntoActiveModel, Iterable, QueryFilter,
};
use uuid::Uuid;

use crate::change::{Change, EncodedChange, FieldChange, Op};
use crate::clock::Timestamp;
use crate::engine::{Engine, META_CLOCK, WriteTx};
use crate::error::EngineError;
use crate::merge::{self, NewConflict, Site};
use crate::model::{CaptureError, FieldRole, Ownership, SyncModel};
use crate::project::{Facts, Input, Rank, RecordKey, key_hash};
use crate::protocol::{Batch, Message, Push};
use crate::registry::ModelDescriptor;
use crate::state::{OwnedState, RecordState, SharedState};
use crate::store;
use crate::trust::Hash;
use crate::trust::seal::{Husk, Seal, SealProof, Skeleton, change_leaf};
use crate::value::WireValue;
use crate::write;

/// A write transaction of the engine. Insert, update and delete synced
/// models through it; do any other work of the application on
/// [`connection`](Self::connection) in the same transaction. Dropping it
/// without [`commit`](Self::commit) rolls everything back.
///
/// It holds the engine's writer from [`Engine::begin`] until it ends: keep
/// it short. Reads of the engine (status, vector) never wait for it; other
/// writes (received changes, other transactions) wait for it, up to the
/// writer timeout.
pub struct SyncTransaction<'e> {
    engine: &'e Engine,
    w: WriteTx<'e>,
    pending: Vec<Pending>,
    next_seq: u64,
    poisoned: bool,
    freed: Vec<(Rank, u64)>,
}

struct Pending {
    rank: Rank,
    id: Uuid,
    seq: u64,
    hlc: Timestamp,
    write: PendingWrite,
}

enum PendingWrite {
    /// The row as written (references as local keys), and the fields the
    /// change carries.
    Upsert {
        key: i64,
        values: Vec<WireValue>,
        fields: Vec<usize>,
    },
    /// `again`: the record is deleted here already, and its delete is
    /// written once more (see `Engine::republish_unheld_deletes`).
    Delete { again: bool },
    /// Fields of a shared record written again as they stand (the row
    /// shows them already; see `Engine::forget_given_up`).
    Again(Vec<(String, WireValue)>),
}

impl std::fmt::Debug for SyncTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTransaction")
            .field("writes", &self.pending.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

fn find_by_id<M: SyncModel>(id: Uuid) -> Result<sea_orm::Select<M::Entity>, EngineError> {
    let column = M::META.id_field().map(|f| f.column).unwrap_or_default();
    let column = <<M::Entity as EntityTrait>::Column as std::str::FromStr>::from_str(column)
        .map_err(|_| EngineError::UnknownModel(M::NAME.to_owned()))?;
    Ok(<M::Entity as EntityTrait>::find().filter(column.eq(id)))
}

impl<'e> SyncTransaction<'e> {
    pub(crate) async fn begin(engine: &'e Engine) -> Result<Self, EngineError> {
        let w = engine.write_tx().await?;
        let next_seq = engine.memory().next_seq;
        Ok(Self {
            engine,
            w,
            pending: Vec::new(),
            next_seq,
            poisoned: false,
            freed: Vec::new(),
        })
    }

    /// The database transaction, for the application's own work.
    pub fn connection(&self) -> &DatabaseTransaction {
        &self.w.tx
    }

    /// How many synced writes this transaction holds.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn descriptor<M: SyncModel>(&self) -> Result<(Rank, &'static ModelDescriptor), EngineError> {
        let registry = self.engine.registry();
        registry
            .rank(M::NAME)
            .and_then(|r| registry.at(r).map(|d| (r, d)))
            .ok_or_else(|| EngineError::UnknownModel(M::NAME.to_owned()))
    }

    fn stamp(&mut self, rank: Rank, id: Uuid, write: PendingWrite) {
        let hlc = self.engine.tick();
        self.pending.push(Pending {
            rank,
            id,
            seq: self.next_seq,
            hlc,
            write,
        });
        self.next_seq += 1;
    }

    fn check(&self) -> Result<(), EngineError> {
        if self.poisoned {
            Err(EngineError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison<T>(&mut self, result: Result<T, EngineError>) -> Result<T, EngineError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Inserts a row. A device-owned row must name this device as its owner.
    pub async fn insert<A>(
        &mut self,
        row: A,
    ) -> Result<<A::Entity as EntityTrait>::Model, EngineError>
    where
        A: ActiveModelTrait + ActiveModelBehavior + Send,
        A::Entity: crate::model::SyncEntity,
        <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
    {
        self.check()?;
        let result = self.insert_inner(row).await;
        self.poison(result)
    }

    async fn insert_inner<A>(
        &mut self,
        row: A,
    ) -> Result<<A::Entity as EntityTrait>::Model, EngineError>
    where
        A: ActiveModelTrait + ActiveModelBehavior + Send,
        A::Entity: crate::model::SyncEntity,
        <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
    {
        let (rank, _) = self.descriptor::<<A::Entity as crate::model::SyncEntity>::SyncModel>()?;
        let model = row.insert(&self.w.tx).await?;
        let meta = model_meta(&model);
        let id = model.sync_id();
        if meta.ownership == Ownership::DeviceOwned {
            let owner = model.owner().unwrap_or_default();
            if owner != self.engine.device() {
                return Err(EngineError::NotOwner {
                    model: meta.name,
                    record: id,
                    owner,
                });
            }
        }
        let values = model.wire()?;
        let fields = (0..values.len()).collect();
        self.stamp(
            rank,
            id,
            PendingWrite::Upsert {
                key: model.local_key(),
                values,
                fields,
            },
        );
        Ok(model)
    }

    /// Writes a row's new state (found by its global id). Only the columns
    /// that differ from the stored row are written; only the synced fields
    /// among them make a change (local-only fields are written without one).
    pub async fn update<M: SyncModel>(&mut self, row: M) -> Result<M, EngineError> {
        self.check()?;
        let result = self.update_inner(row).await;
        self.poison(result)
    }

    async fn update_inner<M: SyncModel>(&mut self, row: M) -> Result<M, EngineError> {
        let (rank, _) = self.descriptor::<M>()?;
        let meta = &M::META;
        let id = row.sync_id();
        let Some(old) = find_by_id::<M>(id)?.one(&self.w.tx).await? else {
            return Err(EngineError::NotFound {
                model: meta.name,
                record: id,
            });
        };
        if meta.ownership == Ownership::DeviceOwned {
            let owner = old.owner().unwrap_or_default();
            if owner != self.engine.device() {
                return Err(EngineError::NotOwner {
                    model: meta.name,
                    record: id,
                    owner,
                });
            }
            if row.owner() != old.owner() {
                return Err(EngineError::OwnerChanged {
                    model: meta.name,
                    record: id,
                });
            }
        }
        let mut active = row.clone().into_active_model();
        let mut any = false;
        for column in <<M::Entity as EntityTrait>::Column as Iterable>::iter() {
            if old.get(column) != row.get(column) {
                active.reset(column);
                any = true;
            }
        }
        if !any {
            return Ok(row);
        }
        let written = active.update(&self.w.tx).await?;
        let changed = M::changed_fields(&old, &written);
        if changed.is_empty() {
            return Ok(written);
        }
        let values = written.wire()?;
        if let Some(info) = self.engine.inner.tables.get(rank)
            && !info.unique.is_empty()
        {
            let old_values = old.wire()?;
            for index in &info.unique {
                let key = |v: &[WireValue]| -> Option<Vec<WireValue>> {
                    index
                        .fields
                        .iter()
                        .map(|i| v.get(*i).filter(|x| !x.is_null()).cloned())
                        .collect()
                };
                if let Some(before) = key(&old_values)
                    && key(&values).as_ref() != Some(&before)
                {
                    self.freed.push((rank, key_hash(&before)));
                }
            }
        }
        let fields = match meta.ownership {
            Ownership::Shared => changed,
            Ownership::DeviceOwned => (0..values.len()).collect(),
        };
        self.stamp(
            rank,
            id,
            PendingWrite::Upsert {
                key: written.local_key(),
                values,
                fields,
            },
        );
        Ok(written)
    }

    /// Writes the fields an active model sets, as sea-orm's `update` does,
    /// and only those: what the application changed is what it set, so no
    /// read of the old row is needed. The row is found by its local key (the
    /// active model's primary key must be set, as for sea-orm's `update`).
    /// A device-owned row must be this device's, and its owner cannot
    /// change.
    pub async fn update_fields<A>(
        &mut self,
        row: A,
    ) -> Result<<A::Entity as EntityTrait>::Model, EngineError>
    where
        A: ActiveModelTrait + ActiveModelBehavior + Send,
        A: sea_orm::TryIntoModel<<A::Entity as EntityTrait>::Model>,
        A::Entity: crate::model::SyncEntity,
        <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
    {
        self.check()?;
        let result = self.update_fields_inner(row).await;
        self.poison(result)
    }

    async fn update_fields_inner<A>(
        &mut self,
        row: A,
    ) -> Result<<A::Entity as EntityTrait>::Model, EngineError>
    where
        A: ActiveModelTrait + ActiveModelBehavior + Send,
        A: sea_orm::TryIntoModel<<A::Entity as EntityTrait>::Model>,
        A::Entity: crate::model::SyncEntity,
        <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
    {
        let (rank, _) = self.descriptor::<<A::Entity as crate::model::SyncEntity>::SyncModel>()?;
        let meta = &<<A::Entity as crate::model::SyncEntity>::SyncModel as SyncModel>::META;
        let is_set = |column: &str| {
            <<A::Entity as EntityTrait>::Column as std::str::FromStr>::from_str(column)
                .ok()
                .is_some_and(|c| row.get(c).is_set())
        };
        let set: Vec<usize> = meta
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| is_set(f.column))
            .map(|(i, _)| i)
            .collect();
        let touches_unique = self.engine.inner.tables.get(rank).is_some_and(|t| {
            t.unique
                .iter()
                .any(|u| u.fields.iter().any(|f| set.contains(f)))
        });
        if touches_unique || meta.ownership == Ownership::DeviceOwned {
            // The old row is needed after all: for the unique key it gives
            // up, or to check who owns it. Apply what is set to it and take
            // the whole-row path.
            let not_found = || EngineError::NotFound {
                model: meta.name,
                record: Uuid::nil(),
            };
            let pk = <<A::Entity as EntityTrait>::Column as std::str::FromStr>::from_str(
                meta.local_key_column,
            )
            .map_err(|_| not_found())?;
            let key = row.get(pk).into_value().ok_or_else(not_found)?;
            let old = <A::Entity as EntityTrait>::find()
                .filter(pk.eq(key))
                .one(&self.w.tx)
                .await?
                .ok_or_else(not_found)?;
            let mut full: A = old.into_active_model();
            for column in <<A::Entity as EntityTrait>::Column as Iterable>::iter() {
                if let sea_orm::ActiveValue::Set(v) = row.get(column) {
                    full.set(column, v);
                }
            }
            let model = full.try_into_model()?;
            return self.update_inner(model).await;
        }
        let written = row.update(&self.w.tx).await?;
        if set.is_empty() {
            return Ok(written);
        }
        let id = written.sync_id();
        let values = written.wire()?;
        self.stamp(
            rank,
            id,
            PendingWrite::Upsert {
                key: written.local_key(),
                values,
                fields: set,
            },
        );
        Ok(written)
    }

    /// Deletes a record, for good: it never comes back, on any device. Rows
    /// that reference it through a nullable key get null; rows that need it
    /// are no longer shown (and this device's own device-owned rows that
    /// need it are deleted with it). `false` if there was no such row.
    pub async fn delete<M: SyncModel>(&mut self, id: Uuid) -> Result<bool, EngineError> {
        self.check()?;
        let result = self.delete_inner::<M>(id).await;
        self.poison(result)
    }

    async fn delete_inner<M: SyncModel>(&mut self, id: Uuid) -> Result<bool, EngineError> {
        let (rank, desc) = self.descriptor::<M>()?;
        let meta = &M::META;
        let Some(row) = find_by_id::<M>(id)?.one(&self.w.tx).await? else {
            return Ok(false);
        };
        if meta.ownership == Ownership::DeviceOwned {
            let owner = row.owner().unwrap_or_default();
            if owner != self.engine.device() {
                return Err(EngineError::NotOwner {
                    model: meta.name,
                    record: id,
                    owner,
                });
            }
        }
        self.free_keys_of(rank, row.local_key()).await?;
        let mut script = store::Script::default();
        store::delete_rows(&mut script, desc, &[row.local_key()]);
        script.run(&self.w.tx).await?;
        self.stamp(rank, id, PendingWrite::Delete { again: false });
        Ok(true)
    }

    /// Notes the unique keys row `key` of model `rank` holds, before it is
    /// deleted: rows put aside for those keys get them back at commit, as
    /// they do when the delete comes from a peer.
    async fn free_keys_of(&mut self, rank: Rank, key: i64) -> Result<(), EngineError> {
        let tables = &self.engine.inner.tables;
        if tables.get(rank).is_none_or(|t| t.unique.is_empty()) {
            return Ok(());
        }
        let held = store::load_old_unique(
            &self.w.tx,
            self.engine.registry(),
            tables,
            &BTreeSet::from([(rank, key)]),
        )
        .await?;
        for values in held.get(&(rank, key)).into_iter().flatten() {
            if !values.iter().any(WireValue::is_null) {
                self.freed.push((rank, key_hash(values)));
            }
        }
        Ok(())
    }

    /// Deletes a record of any model by its rank and id, shown or not (a
    /// resync deletes records whose delete elsewhere it learned of only as
    /// a missing row). A device-owned record must be this device's.
    pub(crate) async fn delete_record(&mut self, rank: Rank, id: Uuid) -> Result<(), EngineError> {
        self.check()?;
        let result = self.delete_record_inner(rank, id).await;
        self.poison(result)
    }

    async fn delete_record_inner(&mut self, rank: Rank, id: Uuid) -> Result<(), EngineError> {
        let desc = self
            .engine
            .registry()
            .at(rank)
            .ok_or_else(|| EngineError::UnknownModel(format!("rank {rank}")))?;
        let row = self
            .w
            .tx
            .query_one_raw(store::stmt(
                "SELECT local_key FROM _sync_rows WHERE model = ? AND record = ?",
                vec![desc.name().into(), store::uuid_value(id)],
            ))
            .await?;
        let local: Option<i64> = match row {
            Some(r) => r.try_get("", "local_key")?,
            None => None,
        };
        if let Some(k) = local {
            self.free_keys_of(rank, k).await?;
            let mut script = store::Script::default();
            store::delete_rows(&mut script, desc, &[k]);
            script.run(&self.w.tx).await?;
        }
        self.stamp(rank, id, PendingWrite::Delete { again: false });
        Ok(())
    }

    /// Writes the delete of a record deleted here already once more, under
    /// this incarnation: a delete whose number no device holds gets one. A
    /// device-owned record must be this device's.
    pub(crate) fn delete_again(&mut self, rank: Rank, id: Uuid) -> Result<(), EngineError> {
        self.check()?;
        self.stamp(rank, id, PendingWrite::Delete { again: true });
        Ok(())
    }

    /// Writes fields of a shared record once more, as they stand here,
    /// under this incarnation: field writes whose numbers no device holds
    /// get one.
    pub(crate) fn write_again(
        &mut self,
        rank: Rank,
        id: Uuid,
        fields: Vec<(String, WireValue)>,
    ) -> Result<(), EngineError> {
        self.check()?;
        self.stamp(rank, id, PendingWrite::Again(fields));
        Ok(())
    }

    /// Commits the rows, their states and their changes together, then
    /// publishes the changes to subscribers. Returns the changes.
    pub async fn commit(self) -> Result<Vec<Change>, EngineError> {
        let Self {
            engine,
            w,
            pending,
            next_seq,
            poisoned,
            freed,
        } = self;
        if poisoned {
            w.tx.rollback().await?;
            return Err(EngineError::Poisoned);
        }
        if pending.is_empty() {
            w.tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut phases = crate::receive::Phases::start();
        let written = pending.len();
        let registry = engine.registry();
        let device = engine.device();
        let origin = engine.origin();

        // References: local keys to global ids, one query per model.
        let mut wanted: BTreeMap<Rank, BTreeSet<i64>> = BTreeMap::new();
        for p in &pending {
            let (PendingWrite::Upsert { values, fields, .. }, Some(desc)) =
                (&p.write, registry.at(p.rank))
            else {
                continue;
            };
            for r in desc.meta().references() {
                if let (true, Some(WireValue::I64(Some(k))), Some(t)) = (
                    fields.contains(&r.index),
                    values.get(r.index),
                    registry.rank(r.target),
                ) {
                    wanted.entry(t).or_default().insert(*k);
                }
            }
        }
        let mut gids: BTreeMap<Rank, std::collections::HashMap<i64, Uuid>> = BTreeMap::new();
        for (rank, keys) in &wanted {
            if let Some(desc) = registry.at(*rank) {
                gids.insert(*rank, store::gids_of_keys(&w.tx, desc, keys).await?);
            }
        }

        // States, one query per model.
        let keys: BTreeSet<RecordKey> = pending
            .iter()
            .map(|p| RecordKey {
                rank: p.rank,
                id: p.id,
            })
            .collect();
        let mut facts = Facts::default();
        phases.mark("references");
        let loaded = store::load_for_plan(&w.tx, registry, &keys, &[]).await?;
        facts.rows.extend(loaded.rows);
        facts.waiters.extend(loaded.waiters);
        let mut working: BTreeMap<RecordKey, Option<RecordState>> = keys
            .iter()
            .map(|k| {
                (
                    *k,
                    facts
                        .rows
                        .get(k)
                        .and_then(|r| r.as_ref())
                        .map(|r| r.state.clone()),
                )
            })
            .collect();

        phases.mark("load");
        let mut changes = Vec::with_capacity(pending.len());
        let mut sealed: Vec<(u64, Hash, EncodedChange)> = Vec::with_capacity(pending.len());
        let mut husks: Vec<(Uuid, Husk)> = Vec::new();
        let mut log = Vec::new();
        let mut fixed: BTreeMap<RecordKey, i64> = BTreeMap::new();
        let mut conflicts: Vec<NewConflict> = Vec::new();
        for p in pending {
            let Some(desc) = registry.at(p.rank) else {
                continue;
            };
            let meta = desc.meta();
            let key = RecordKey {
                rank: p.rank,
                id: p.id,
            };
            let slot = working.entry(key).or_default();
            if slot.as_ref().is_some_and(RecordState::is_deleted)
                && !matches!(p.write, PendingWrite::Delete { again: true })
            {
                return Err(EngineError::Deleted {
                    model: meta.name,
                    record: p.id,
                });
            }
            let op = match &p.write {
                PendingWrite::Again(fields) => Op::Upsert(
                    fields
                        .iter()
                        .map(|(name, value)| FieldChange {
                            name: name.clone(),
                            value: value.clone(),
                            base: match (meta.ownership, slot.as_ref()) {
                                (Ownership::Shared, Some(state)) => state.field_clock(name),
                                _ => None,
                            },
                        })
                        .collect(),
                ),
                PendingWrite::Delete { .. } => Op::Delete {
                    seen: slot.as_ref().and_then(RecordState::latest),
                },
                PendingWrite::Upsert {
                    values,
                    fields,
                    key: local,
                } => {
                    fixed.insert(key, *local);
                    let mut out = Vec::with_capacity(fields.len());
                    for i in fields {
                        let field = &meta.fields[*i];
                        let value = match (field.role, values.get(*i)) {
                            (FieldRole::Reference { target }, Some(WireValue::I64(Some(k)))) => {
                                let gid = registry
                                    .rank(target)
                                    .and_then(|t| gids.get(&t))
                                    .and_then(|m| m.get(k))
                                    .copied()
                                    .ok_or(CaptureError::DanglingReference {
                                        model: meta.name,
                                        field: field.name,
                                        target,
                                        key: *k,
                                    })?;
                                WireValue::Uuid(Some(gid))
                            }
                            (FieldRole::Reference { .. }, _) => WireValue::Uuid(None),
                            (_, Some(v)) => v.clone(),
                            (_, None) => continue,
                        };
                        let base = match (meta.ownership, slot.as_ref()) {
                            (Ownership::Shared, Some(state)) => state.field_clock(field.name),
                            _ => None,
                        };
                        out.push(FieldChange {
                            name: field.name.to_owned(),
                            value,
                            base,
                        });
                    }
                    Op::Upsert(out)
                }
            };
            // A write names a state it replaces: a peer that took that
            // state and collected the record's delete since knows the write
            // lost to it. A device-owned write names the change it
            // replaces; a shared update, the oldest numbered write among
            // the record's fields here (the likeliest a peer took).
            let replaces = match (&op, slot.as_ref()) {
                (Op::Upsert(_), Some(RecordState::Owned(old))) => {
                    Some((old.change.origin, old.change.seq))
                }
                (Op::Upsert(_), Some(RecordState::Shared(old))) => old
                    .fields
                    .values()
                    .filter(|f| f.seq > 0)
                    .min_by_key(|f| f.hlc)
                    .map(|f| (crate::clock::timestamp_origin(&f.hlc), f.seq)),
                _ => None,
            };
            let change = Change {
                device,
                origin,
                seq: p.seq,
                hlc: p.hlc,
                model: meta.name.to_owned(),
                id: p.id,
                op,
                replaces,
            };
            let bytes = change
                .encode()
                .map_err(|e| EngineError::Malformed(e.to_string()))?;
            let site = Site {
                model: meta.name,
                record: p.id,
            };
            sealed.push((p.seq, change_leaf(&change, bytes.as_bytes()), bytes.clone()));
            match meta.ownership {
                Ownership::Shared => {
                    let mut state = match slot.take() {
                        Some(RecordState::Shared(s)) => s,
                        _ => SharedState::default(),
                    };
                    merge::merge_shared_change(&mut state, &change, site, &mut conflicts);
                    *slot = Some(RecordState::Shared(state));
                    log.push((origin, p.seq, bytes));
                }
                Ownership::DeviceOwned => {
                    // The state it replaces is a change peers may still
                    // lack: its husk proves the hole it leaves.
                    if let Some(RecordState::Owned(old)) = slot.take() {
                        husks.push((
                            old.change.origin,
                            Husk::of(&old.change, old.bytes.as_bytes()),
                        ));
                    }
                    *slot = Some(RecordState::Owned(OwnedState {
                        change: change.clone(),
                        bytes,
                    }));
                }
            }
            changes.push(change);
        }
        if engine
            .inner
            .faults
            .fail_before_log_write
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // Dropping the transaction rolls back the rows written so far.
            return Err(EngineError::Injected("before the log write"));
        }
        phases.mark("encode");
        let changed: BTreeMap<RecordKey, RecordState> = working
            .into_iter()
            .filter_map(|(k, s)| s.map(|s| (k, s)))
            .collect();
        // Deleted records are not the caller's rows any more.
        fixed.retain(|k, _| !changed.get(k).is_some_and(RecordState::is_deleted));
        let input = Input {
            changed,
            fixed,
            freed,
            ..Input::default()
        };
        let projection =
            write::project(&w.tx, registry, &engine.inner.tables, &input, &mut facts).await?;
        phases.mark("plan");
        let mut writes = write::build(
            registry,
            &engine.inner.tables,
            input.changed,
            facts,
            projection,
        )?;
        writes.conflicts.extend(conflicts);
        writes.log = log;
        phases.mark("build");
        // One seal per commit: its changes are numbered without gaps.
        sealed.sort_by_key(|(seq, _, _)| *seq);
        let first = sealed.first().map_or(0, |(seq, _, _)| *seq);
        let leaves: Vec<Hash> = sealed.iter().map(|(_, leaf, _)| *leaf).collect();
        let seal =
            Seal::sign(engine.key(), engine.inner.nonce, first, &leaves).ok_or_else(|| {
                EngineError::Malformed("a commit's changes are not numbered in a row".into())
            })?;
        if seal.len() != sealed.len() as u64 {
            return Err(EngineError::Malformed(
                "a commit's changes are not numbered in a row".into(),
            ));
        }
        let skeleton = Skeleton::of_leaves(&leaves);
        phases.mark("seal");
        let mut script = store::Script::default();
        write::script(&mut script, registry, &mut writes)?;
        store::save_seals(&mut script, &[(seal.clone(), skeleton)])?;
        store::save_husks(&mut script, &husks)?;
        let before = engine.received();
        let mut received = before.clone();
        received.insert(origin, 1, next_seq.saturating_sub(1));
        store::save_received(&mut script, &received, &before, &BTreeSet::from([origin]))?;
        store::set_meta_in(
            &mut script,
            META_CLOCK,
            engine.clock_time().0.to_be_bytes().to_vec(),
        );
        phases.mark("bookkeeping");
        let conflicts_added = write::run(&w.tx, script, &writes.conflicts).await?;
        phases.mark("write");
        w.tx.commit().await?;
        phases.mark("commit");
        phases.report("commit", written);
        let now_ms = engine.now_ms();
        {
            let mut m = engine.memory();
            m.received = received;
            m.vector_grew(now_ms);
            m.next_seq = next_seq;
            m.log_len += writes.log.len() as u64;
            m.waiting = m.waiting.saturating_add_signed(writes.waiting_delta);
            m.conflicts += conflicts_added;
            for (model, n) in &writes.new_rows {
                *m.rows.entry((*model).to_owned()).or_default() += n;
            }
        }
        engine.inner.counters.conflicts.fetch_add(
            writes.conflicts.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        engine.publish(Commit {
            changes: changes.clone(),
            encoded: sealed.into_iter().map(|(_, _, bytes)| bytes).collect(),
            leaves,
            seal,
        });
        Ok(changes)
    }

    /// Discards everything written through this transaction.
    pub async fn rollback(self) -> Result<(), EngineError> {
        self.w.tx.rollback().await?;
        Ok(())
    }
}

fn model_meta<M: SyncModel>(_: &M) -> &'static crate::model::ModelMeta {
    &M::META
}

/// A commit of this device, as published to subscribers: its changes, as
/// encoded, and its seal.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The changes, in number order.
    pub changes: Vec<Change>,
    encoded: Vec<EncodedChange>,
    leaves: Vec<Hash>,
    seal: Seal,
}

impl Commit {
    /// The seal.
    pub fn seal(&self) -> &Seal {
        &self.seal
    }

    /// The pushes of this commit: its changes in batches cut so that each
    /// fits a frame, in order (each batch's claim starts where the previous
    /// one ends), each with the seal and what proves its part of it.
    pub fn pushes(&self) -> Vec<Message> {
        let skeleton = Skeleton::of_leaves(&self.leaves);
        let len = self.seal.len();
        let mut messages = Vec::new();
        let mut start = 0usize;
        while start < self.encoded.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < self.encoded.len()
                && (end == start
                    || bytes.saturating_add(self.encoded[end].len()) <= crate::catchup::PAGE_BYTES)
            {
                bytes = bytes.saturating_add(self.encoded[end].len());
                end += 1;
            }
            let revealed: BTreeSet<u64> = (start as u64..end as u64).collect();
            let hashes = skeleton.prove(len, &revealed).unwrap_or_default();
            let first = self.seal.first;
            messages.push(Message::Push(Push {
                batches: vec![Batch {
                    origin: self.seal.origin,
                    device: self.seal.device(),
                    after: first + start as u64 - 1,
                    upto: first + end as u64 - 1,
                    changes: self.encoded[start..end].to_vec(),
                    seals: vec![SealProof {
                        seal: self.seal.clone(),
                        husks: Vec::new(),
                        hashes,
                    }],
                }],
            }));
            start = end;
        }
        messages
    }
}
