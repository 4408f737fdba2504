//! Writes by the application: the row, its sync state and its change commit
//! in one SQLite transaction, or none of them do.

use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, DatabaseTransaction, EntityTrait, IntoActiveModel,
    TransactionTrait,
};
use tokio::sync::MutexGuard;
use uuid::Uuid;

use crate::apply::{Applier, shared_state_after};
use crate::change::{Change, FieldChange, Op};
use crate::engine::{Engine, META_CLOCK, META_NEXT_SEQ};
use crate::error::EngineError;
use crate::model::{Ownership, SyncModel};
use crate::registry::ModelDescriptor;
use crate::store::{self, RowState};

/// A write transaction of the engine. Insert, update and delete synced
/// models through it; do any other work of the application on
/// [`connection`](Self::connection) in the same transaction. Dropping it
/// without [`commit`](Self::commit) rolls everything back.
pub struct SyncTransaction<'e> {
    engine: &'e Engine,
    tx: DatabaseTransaction,
    _writer: MutexGuard<'e, ()>,
    pending: Vec<Change>,
    next_seq: u64,
    poisoned: bool,
}

impl std::fmt::Debug for SyncTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncTransaction")
            .field("pending", &self.pending.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<'e> SyncTransaction<'e> {
    pub(crate) async fn begin(engine: &'e Engine) -> Result<Self, EngineError> {
        let writer = engine.inner.writer.lock().await;
        let tx = engine.inner.db.begin().await?;
        let next_seq = store::get_meta_u64(&tx, META_NEXT_SEQ).await?.max(1);
        Ok(Self {
            engine,
            tx,
            _writer: writer,
            pending: Vec::new(),
            next_seq,
            poisoned: false,
        })
    }

    /// The database transaction, for the application's own work.
    pub fn connection(&self) -> &DatabaseTransaction {
        &self.tx
    }

    /// The changes this transaction will commit.
    pub fn pending(&self) -> &[Change] {
        &self.pending
    }

    fn descriptor<M: SyncModel>(&self) -> Result<&'static ModelDescriptor, EngineError> {
        self.engine
            .registry()
            .get(M::NAME)
            .ok_or_else(|| EngineError::UnknownModel(M::NAME.to_owned()))
    }

    fn next_change(&mut self, model: &str, id: Uuid, op: Op) -> &Change {
        let change = Change {
            origin: self.engine.device(),
            seq: self.next_seq,
            hlc: self.engine.tick(),
            model: model.to_owned(),
            id,
            op,
        };
        self.next_seq += 1;
        self.pending.push(change);
        let last = self.pending.len() - 1;
        &self.pending[last]
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
        <A::Entity as EntityTrait>::Model: SyncModel + IntoActiveModel<A>,
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
        <A::Entity as EntityTrait>::Model: SyncModel + IntoActiveModel<A>,
    {
        let model = row.insert(&self.tx).await?;
        let meta = sync_meta(&model);
        self.descriptor_of(&model)?;
        let id = model.sync_id();
        let device = self.engine.device();
        if meta.ownership == Ownership::DeviceOwned {
            let owner = model.owner().unwrap_or_default();
            if owner != device {
                return Err(EngineError::NotOwner {
                    model: meta.name,
                    record: id,
                    owner,
                });
            }
        }
        let state = store::load_row(&self.tx, meta.name, id).await?;
        if state.as_ref().is_some_and(|s| s.deleted) {
            return Err(EngineError::Deleted {
                model: meta.name,
                record: id,
            });
        }
        let fields = FieldChange::unversioned(model.capture(&self.tx).await?);
        let change = self.next_change(meta.name, id, Op::Upsert(fields));
        let state = match meta.ownership {
            Ownership::Shared => match &change.op {
                Op::Upsert(fields) => {
                    shared_state_after(state.unwrap_or_default(), change.hlc, fields)
                }
                Op::Delete | Op::Image(_) => RowState::default(),
            },
            Ownership::DeviceOwned => RowState {
                owner: Some(device),
                version: Some(change.seq),
                hlc: Some(change.hlc),
                ..RowState::default()
            },
        };
        store::save_row(&self.tx, meta.name, id, &state).await?;
        Ok(model)
    }

    fn descriptor_of<M: SyncModel>(
        &self,
        _model: &M,
    ) -> Result<&'static ModelDescriptor, EngineError> {
        self.descriptor::<M>()
    }

    /// Writes a row's new state (found by its global id). Only the synced
    /// fields that differ from the stored row make a change; local-only
    /// fields are written without one.
    pub async fn update<M>(&mut self, row: M) -> Result<M, EngineError>
    where
        M: SyncModel + IntoActiveModel<M::ActiveModel>,
        <M::Entity as EntityTrait>::Model: IntoActiveModel<M::ActiveModel>,
    {
        self.check()?;
        let result = self.update_inner(row).await;
        self.poison(result)
    }

    async fn update_inner<M>(&mut self, row: M) -> Result<M, EngineError>
    where
        M: SyncModel + IntoActiveModel<M::ActiveModel>,
        <M::Entity as EntityTrait>::Model: IntoActiveModel<M::ActiveModel>,
    {
        self.descriptor::<M>()?;
        let meta = &M::META;
        let id = row.sync_id();
        let Some(old) = M::find_by_id(&self.tx, id).await? else {
            return Err(EngineError::NotFound {
                model: meta.name,
                record: id,
            });
        };
        let device = self.engine.device();
        if meta.ownership == Ownership::DeviceOwned {
            let owner = old.owner().unwrap_or_default();
            if owner != device {
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
        let changed = M::changed_fields(&old, &row);
        let active: M::ActiveModel = row.clone().into_active_model();
        active.reset_all().update(&self.tx).await?;
        if changed.is_empty() {
            return Ok(row);
        }
        let mut state = store::load_row(&self.tx, meta.name, id)
            .await?
            .unwrap_or_default();
        match meta.ownership {
            Ownership::Shared => {
                let fields: Vec<FieldChange> = row
                    .capture_fields(&self.tx, &changed)
                    .await?
                    .into_iter()
                    .map(|f| FieldChange {
                        base: state.clocks.get(&f.name).map(|c| c.hlc),
                        name: f.name,
                        value: f.value,
                    })
                    .collect();
                let change = self.next_change(meta.name, id, Op::Upsert(fields));
                if let Op::Upsert(fields) = &change.op {
                    state = shared_state_after(state, change.hlc, fields);
                }
            }
            Ownership::DeviceOwned => {
                let fields = FieldChange::unversioned(row.capture(&self.tx).await?);
                let change = self.next_change(meta.name, id, Op::Upsert(fields));
                state.owner = Some(device);
                state.version = Some(change.seq);
                state.hlc = Some(change.hlc);
            }
        }
        store::save_row(&self.tx, meta.name, id, &state).await?;
        Ok(row)
    }

    /// Deletes a record, for good: it never comes back, on any device. Rows
    /// that reference it through a nullable key get null; rows that need it
    /// are deleted with it. `false` if there was no such row.
    pub async fn delete<M: SyncModel>(&mut self, id: Uuid) -> Result<bool, EngineError> {
        self.check()?;
        let result = self.delete_inner::<M>(id).await;
        self.poison(result)
    }

    async fn delete_inner<M: SyncModel>(&mut self, id: Uuid) -> Result<bool, EngineError> {
        let desc = self.descriptor::<M>()?;
        let meta = &M::META;
        let Some(row) = M::find_by_id(&self.tx, id).await? else {
            return Ok(false);
        };
        let device = self.engine.device();
        let owned = meta.ownership == Ownership::DeviceOwned;
        if owned {
            let owner = row.owner().unwrap_or_default();
            if owner != device {
                return Err(EngineError::NotOwner {
                    model: meta.name,
                    record: id,
                    owner,
                });
            }
        }
        let (hlc, seq) = {
            let change = self.next_change(meta.name, id, Op::Delete);
            (change.hlc, change.seq)
        };
        let registry = self.engine.registry();
        let mut applier = Applier::new(registry, &self.tx, device);
        let released = applier
            .delete_local(desc, id, hlc, owned.then_some(device), owned.then_some(seq))
            .await?;
        applier.apply_released(released).await?;
        self.engine.count_conflicts(applier.report.conflicts);
        Ok(true)
    }

    /// Commits the rows, their sync state and their changes together, then
    /// publishes the changes to subscribers.
    pub async fn commit(self) -> Result<Vec<Change>, EngineError> {
        if self.poisoned {
            self.tx.rollback().await?;
            return Err(EngineError::Poisoned);
        }
        let shared: Vec<&Change> = self
            .pending
            .iter()
            .filter(|c| {
                self.engine
                    .registry()
                    .get(&c.model)
                    .is_some_and(|d| d.meta().ownership == Ownership::Shared)
            })
            .collect();
        if self
            .engine
            .inner
            .faults
            .fail_before_log_write
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            // Dropping `self.tx` rolls back the rows written so far.
            return Err(EngineError::Injected("before the log write"));
        }
        store::append_log(&self.tx, &shared).await?;
        store::set_meta_u64(&self.tx, META_NEXT_SEQ, self.next_seq).await?;
        if self.next_seq > 1 {
            store::advance_vector(&self.tx, self.engine.device(), self.next_seq - 1).await?;
        }
        store::set_meta_u64(&self.tx, META_CLOCK, self.engine.clock_time().0).await?;
        self.tx.commit().await?;
        self.engine.publish(self.pending.clone());
        Ok(self.pending)
    }

    /// Discards everything written through this transaction.
    pub async fn rollback(self) -> Result<(), EngineError> {
        self.tx.rollback().await?;
        Ok(())
    }
}

fn sync_meta<M: SyncModel>(_: &M) -> &'static crate::model::ModelMeta {
    &M::META
}
