//! Applying changes: merge by field clock (shared) or owner version
//! (device-owned), tombstones that always win, parking of changes whose
//! parent has not arrived, and the deterministic rule for references to
//! deleted records.

use std::collections::VecDeque;

use sea_orm::{DatabaseTransaction, TransactionTrait};
use uuid::Uuid;

use crate::change::{Change, FieldChange, FieldImage, Op};
use crate::clock::{Timestamp, timestamp_device};
use crate::conflict::{ConflictKind, Write};
use crate::error::EngineError;
use crate::model::{ApplyError, FieldValue, MissingParent, Ownership};
use crate::registry::{ModelDescriptor, Registry};
use crate::store::{self, FieldClock, NewConflict, Parked, RowState};

/// Why an incoming change was refused. A refused change is not recorded as
/// received: the sender's next exchange offers it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The model is not registered here.
    UnknownModel,
    /// Its timestamp is beyond the drift bound.
    ClockAhead(String),
    /// A device-owned record changed by a device that does not own it.
    NotOwner {
        /// The record's owner.
        owner: Uuid,
    },
    /// The record does not fit the model (unknown field, wrong type, ...).
    Malformed(String),
    /// The database refused the write (a constraint, say).
    Database(String),
}

/// A refused change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The change's origin.
    pub origin: Uuid,
    /// Its number.
    pub seq: u64,
    /// The model it named.
    pub model: String,
    /// Why.
    pub reason: RejectReason,
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes that took effect (wholly or in part).
    pub applied: u64,
    /// Changes already received before.
    pub duplicates: u64,
    /// Device-owned states older than the one held.
    pub stale: u64,
    /// Changes parked to wait for a record.
    pub parked: u64,
    /// Parked changes (or parts) that could now be applied.
    pub unparked: u64,
    /// Entries added to the conflict log.
    pub conflicts: u64,
    /// Changes refused.
    pub rejected: Vec<Rejection>,
}

enum Work {
    Incoming(Change),
    Unparked(Parked),
}

enum Outcome {
    Applied,
    Duplicate,
    Stale,
    Parked,
}

/// Applies changes inside one database transaction.
pub(crate) struct Applier<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) tx: &'a DatabaseTransaction,
    pub(crate) device: Uuid,
    pub(crate) report: ApplyReport,
    /// Renames this device must write as its own changes: the losers of
    /// unique collisions. Written as changes (not only locally) so that every
    /// device ends with the same value even where the collision never
    /// showed, because one side had moved away before the other arrived.
    pub(crate) renames: Vec<Rename>,
    /// The changes that took effect, for `Engine::subscribe_applied`.
    pub(crate) applied: Vec<Change>,
}

/// A field value a unique collision forces on a shared record.
#[derive(Debug, Clone)]
pub(crate) struct Rename {
    pub(crate) model: &'static str,
    pub(crate) id: Uuid,
    pub(crate) field: String,
    pub(crate) value: crate::value::WireValue,
}

impl<'a> Applier<'a> {
    pub(crate) fn new(registry: &'a Registry, tx: &'a DatabaseTransaction, device: Uuid) -> Self {
        Self {
            registry,
            tx,
            device,
            report: ApplyReport::default(),
            renames: Vec::new(),
            applied: Vec::new(),
        }
    }

    /// Applies `changes` (already past the clock check), each in its own
    /// savepoint, parents before children, and whatever they unpark.
    pub(crate) async fn apply_all(&mut self, mut changes: Vec<Change>) -> Result<(), EngineError> {
        let rank = |c: &Change| self.registry.rank(&c.model).unwrap_or(usize::MAX);
        changes.sort_by(|a, b| {
            rank(a)
                .cmp(&rank(b))
                .then(a.origin.cmp(&b.origin))
                .then(a.seq.cmp(&b.seq))
        });
        self.run(changes.into_iter().map(Work::Incoming).collect())
            .await
    }

    /// Applies parked work released by a local write.
    pub(crate) async fn apply_released(&mut self, parked: Vec<Parked>) -> Result<(), EngineError> {
        self.run(parked.into_iter().map(Work::Unparked).collect())
            .await
    }

    async fn run(&mut self, mut queue: VecDeque<Work>) -> Result<(), EngineError> {
        while let Some(work) = queue.pop_front() {
            let (change, part) = match work {
                Work::Incoming(change) => (change, None),
                Work::Unparked(parked) => {
                    self.report.unparked += 1;
                    let part = (!parked.part.is_empty()).then_some(parked.part);
                    (parked.change, part)
                }
            };
            let Some(desc) = self.registry.get(&change.model) else {
                self.reject(&change, RejectReason::UnknownModel);
                continue;
            };
            let savepoint = self.tx.begin().await?;
            let mut step = Step {
                desc,
                tx: &savepoint,
                registry: self.registry,
                device: self.device,
                conflicts: 0,
                released: Vec::new(),
                renames: Vec::new(),
            };
            let result = match &part {
                None => step.change(&change).await,
                Some(field) => step.deferred_part(&change, field).await,
            };
            match result {
                Ok(outcome) => {
                    let (conflicts, released) =
                        (step.conflicts, std::mem::take(&mut step.released));
                    self.renames.append(&mut step.renames);
                    savepoint.commit().await?;
                    self.report.conflicts += conflicts;
                    match outcome {
                        Outcome::Applied => {
                            if part.is_none() {
                                self.report.applied += 1;
                                self.applied.push(change.clone());
                            }
                        }
                        Outcome::Duplicate => self.report.duplicates += 1,
                        Outcome::Stale => self.report.stale += 1,
                        Outcome::Parked => self.report.parked += 1,
                    }
                    for parked in released.into_iter().rev() {
                        queue.push_front(Work::Unparked(parked));
                    }
                }
                Err(StepError::Reject(reason)) => {
                    savepoint.rollback().await?;
                    if reason_is_recorded(&reason) {
                        self.record_not_owner(&change, &reason).await?;
                    }
                    self.reject(&change, reason);
                }
                Err(StepError::Engine(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn reject(&mut self, change: &Change, reason: RejectReason) {
        tracing::warn!(origin = %change.origin, seq = change.seq, model = %change.model, ?reason, "change rejected");
        metrics::counter!("syncable_changes_rejected_total").increment(1);
        self.report.rejected.push(Rejection {
            origin: change.origin,
            seq: change.seq,
            model: change.model.clone(),
            reason,
        });
    }

    async fn record_not_owner(
        &mut self,
        change: &Change,
        reason: &RejectReason,
    ) -> Result<(), EngineError> {
        if let RejectReason::NotOwner { .. } = reason {
            store::record_conflict(
                self.tx,
                NewConflict {
                    kind: ConflictKind::NotOwner,
                    model: &change.model,
                    record: change.id,
                    field: None,
                    loser: Write {
                        origin: change.origin,
                        hlc: change.hlc,
                        value: None,
                    },
                    winner: None,
                },
            )
            .await?;
            self.report.conflicts += 1;
        }
        Ok(())
    }

    /// Deletes a record written by this device, with the same cascade a
    /// received delete has.
    pub(crate) async fn delete_local(
        &mut self,
        desc: &'static ModelDescriptor,
        id: Uuid,
        hlc: Timestamp,
        owner: Option<Uuid>,
        version: Option<u64>,
    ) -> Result<Vec<Parked>, EngineError> {
        let mut step = Step {
            desc,
            tx: self.tx,
            registry: self.registry,
            device: self.device,
            conflicts: 0,
            released: Vec::new(),
            renames: Vec::new(),
        };
        step.delete_record(desc, id, hlc, owner, version).await?;
        self.report.conflicts += step.conflicts;
        Ok(step.released)
    }
}

fn reason_is_recorded(reason: &RejectReason) -> bool {
    matches!(reason, RejectReason::NotOwner { .. })
}

enum Written {
    /// Written (or parked, or deleted by the rule for deleted parents).
    Done(Option<Vec<String>>),
    /// A unique column's value is held by another row.
    Collision { columns: Vec<String>, holder: Uuid },
}

enum UniqueResolution {
    Retry,
    Dropped,
}

enum StepError {
    Reject(RejectReason),
    Engine(EngineError),
}

impl<E: Into<EngineError>> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError::Engine(e.into())
    }
}

/// Applying one change (or one deferred part) inside its savepoint.
struct Step<'a> {
    desc: &'static ModelDescriptor,
    tx: &'a DatabaseTransaction,
    registry: &'a Registry,
    device: Uuid,
    conflicts: u64,
    /// Parked work released by this step, to run next.
    released: Vec<Parked>,
    /// Renames to write as this device's changes.
    renames: Vec<Rename>,
}

impl Step<'_> {
    async fn change(&mut self, change: &Change) -> Result<Outcome, StepError> {
        if change.origin == self.device {
            // Our own change, relayed back to us.
            return Ok(Outcome::Duplicate);
        }
        match self.desc.meta().ownership {
            Ownership::Shared => {
                if (change.seq > 0
                    && store::log_contains(self.tx, change.origin, change.seq).await?)
                    || store::is_parked(self.tx, change).await?
                {
                    return Ok(Outcome::Duplicate);
                }
                let outcome = match &change.op {
                    Op::Upsert(fields) => {
                        let fields = fields
                            .iter()
                            .map(|f| Incoming::of_write(change, f))
                            .collect();
                        self.shared_upsert(change, fields).await?
                    }
                    Op::Image(fields) => {
                        let fields = fields.iter().map(Incoming::of_image).collect();
                        self.shared_upsert(change, fields).await?
                    }
                    Op::Delete => self.shared_delete(change).await?,
                };
                // Snapshot rows (numbered 0) are states, not log entries.
                if !matches!(outcome, Outcome::Parked) && change.seq > 0 {
                    store::append_log(self.tx, &[change]).await?;
                }
                Ok(outcome)
            }
            Ownership::DeviceOwned => match &change.op {
                Op::Upsert(fields) => self.owned_upsert(change, fields).await,
                Op::Delete => self.owned_delete(change).await,
                Op::Image(_) => Err(StepError::Reject(RejectReason::Malformed(
                    "a device-owned record travels as its owner's state, not an image".into(),
                ))),
            },
        }
    }

    fn model(&self) -> &'static str {
        self.desc.name()
    }

    async fn record(&mut self, conflict: NewConflict<'_>) -> Result<(), EngineError> {
        store::record_conflict(self.tx, conflict).await?;
        self.conflicts += 1;
        metrics::counter!("syncable_conflicts_total").increment(1);
        Ok(())
    }

    async fn shared_upsert(
        &mut self,
        change: &Change,
        fields: Vec<Incoming<'_>>,
    ) -> Result<Outcome, StepError> {
        let model = self.model();
        let state = store::load_row(self.tx, model, change.id).await?;
        let incoming = |f: &Incoming<'_>| Write {
            origin: f.origin,
            hlc: f.hlc,
            value: Some(f.value.clone()),
        };
        if let Some(state) = &state
            && state.deleted
        {
            let winner = state.deleted_at.map(|hlc| Write {
                origin: timestamp_device(&hlc),
                hlc,
                value: None,
            });
            for f in &fields {
                self.record(NewConflict {
                    kind: ConflictKind::Deleted,
                    model,
                    record: change.id,
                    field: Some(f.name),
                    loser: incoming(f),
                    winner: winner.clone(),
                })
                .await?;
            }
            return Ok(Outcome::Applied);
        }

        let mut state = state.unwrap_or_default();
        let mut winners: Vec<&Incoming<'_>> = Vec::new();
        let mut overwritten: Vec<(&Incoming<'_>, FieldClock)> = Vec::new();
        let mut outdated: Vec<(&Incoming<'_>, FieldClock)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for f in &fields {
            if !seen.insert(f.name) {
                return Err(StepError::Reject(RejectReason::Malformed(format!(
                    "field `{}` appears twice",
                    f.name
                ))));
            }
            match state.clocks.get(f.name) {
                None => winners.push(f),
                Some(local) if f.hlc > local.hlc => {
                    if f.base != Some(local.hlc) {
                        overwritten.push((f, *local));
                    }
                    winners.push(f);
                }
                Some(local) if f.hlc == local.hlc => {}
                Some(local) => {
                    if local.base != Some(f.hlc) {
                        outdated.push((f, *local));
                    }
                }
            }
        }
        let current = if overwritten.is_empty() && outdated.is_empty() {
            Vec::new()
        } else {
            self.desc
                .capture(self.tx, change.id)
                .await?
                .unwrap_or_default()
        };
        let value_of = |name: &str| {
            current
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.value.clone())
        };
        for (f, local) in overwritten {
            if value_of(f.name).as_ref() == Some(f.value) {
                continue; // the same value from two writes loses nothing
            }
            self.record(NewConflict {
                kind: ConflictKind::Overwritten,
                model,
                record: change.id,
                field: Some(f.name),
                loser: Write {
                    origin: timestamp_device(&local.hlc),
                    hlc: local.hlc,
                    value: value_of(f.name),
                },
                winner: Some(incoming(f)),
            })
            .await?;
        }
        for (f, local) in outdated {
            if value_of(f.name).as_ref() == Some(f.value) {
                continue;
            }
            self.record(NewConflict {
                kind: ConflictKind::Outdated,
                model,
                record: change.id,
                field: Some(f.name),
                loser: incoming(f),
                winner: Some(Write {
                    origin: timestamp_device(&local.hlc),
                    hlc: local.hlc,
                    value: value_of(f.name),
                }),
            })
            .await?;
        }
        if winners.is_empty() {
            return Ok(Outcome::Applied);
        }

        let values: Vec<FieldValue> = winners
            .iter()
            .map(|f| FieldValue::new(f.name, f.value.clone()))
            .collect();
        let Some(deferred) = self.write(change, &values).await? else {
            return Ok(Outcome::Parked);
        };
        for f in winners {
            if deferred.iter().any(|d| d == f.name) {
                continue;
            }
            state.clocks.insert(
                f.name.to_owned(),
                FieldClock {
                    hlc: f.hlc,
                    base: f.base,
                },
            );
        }
        store::save_row(self.tx, model, change.id, &state).await?;
        self.release(model, change.id).await?;
        Ok(Outcome::Applied)
    }

    /// Writes `values` for `change`'s record. `None` when the change was
    /// parked (or its record deleted by the rule for deleted parents);
    /// otherwise the nullable references left null to wait for their parent.
    async fn write(
        &mut self,
        change: &Change,
        values: &[FieldValue],
    ) -> Result<Option<Vec<String>>, StepError> {
        let mut values = values.to_vec();
        // Each round settles one unique-column collision; a record collides
        // with at most one row per unique index.
        for _ in 0..8 {
            match self.write_once(change, &values).await? {
                Written::Done(result) => return Ok(result),
                Written::Collision { columns, holder } => {
                    match self
                        .resolve_unique(change, &mut values, &columns, holder)
                        .await?
                    {
                        UniqueResolution::Retry => continue,
                        UniqueResolution::Dropped => return Ok(None),
                    }
                }
            }
        }
        Err(StepError::Reject(RejectReason::Database(format!(
            "`{}` {}: unique collisions did not settle",
            self.model(),
            change.id
        ))))
    }

    /// The clock of the incoming write to field `name`.
    fn incoming_clock(change: &Change, name: &str) -> Timestamp {
        match &change.op {
            Op::Image(fields) => fields
                .iter()
                .find(|f| f.name == name)
                .map_or(change.hlc, |f| f.hlc),
            _ => change.hlc,
        }
    }

    /// Settles a collision on a unique column between the record being
    /// written and `holder`, the same way on every device: between two
    /// devices' rows, the one whose unique fields were written later keeps
    /// the value and the other is renamed (`value~` and 8 hex digits of its
    /// id) when the column is text, or deleted when it is not; the loss is
    /// recorded. Between two rows of one owner (a catch-up that skipped the
    /// states in which the owner swapped two values), the holder steps aside
    /// until its own newer state arrives.
    async fn resolve_unique(
        &mut self,
        change: &Change,
        values: &mut [FieldValue],
        columns: &[String],
        holder: Uuid,
    ) -> Result<UniqueResolution, StepError> {
        let meta = self.desc.meta();
        let model = self.model();
        let fields: Vec<&'static crate::model::FieldMeta> = columns
            .iter()
            .filter_map(|c| meta.field_of_column(c))
            .collect();
        let text = fields.iter().find_map(|f| {
            values.iter().position(|v| {
                v.name == f.name && matches!(v.value, crate::value::WireValue::String(Some(_)))
            })
        });
        let holder_state = store::load_row(self.tx, model, holder)
            .await?
            .unwrap_or_default();
        let renamed = |value: &crate::value::WireValue, id: Uuid| match value {
            crate::value::WireValue::String(Some(s)) => {
                let tag = id.simple().to_string();
                Some(crate::value::WireValue::String(Some(format!(
                    "{s}~{}",
                    &tag[..8]
                ))))
            }
            _ => None,
        };
        let holder_value = |name: &str, current: &[FieldValue]| {
            current
                .iter()
                .find(|v| v.name == name)
                .map(|v| v.value.clone())
        };

        if meta.ownership == Ownership::DeviceOwned && holder_state.owner == Some(change.origin) {
            let Some(i) = text else {
                return Err(StepError::Reject(RejectReason::Database(format!(
                    "`{model}` {}: unique non-text columns {columns:?} collide within one owner's rows",
                    change.id
                ))));
            };
            let name = values[i].name.clone();
            let current = self
                .desc
                .capture(self.tx, holder)
                .await?
                .unwrap_or_default();
            let Some(aside) = holder_value(&name, &current).and_then(|v| renamed(&v, holder))
            else {
                return Err(StepError::Reject(RejectReason::Database(format!(
                    "`{model}` {holder}: cannot step aside on {name}"
                ))));
            };
            tracing::debug!(%holder, field = %name, "row steps aside for its owner's newer state");
            self.desc
                .apply(
                    self.tx,
                    holder,
                    &[FieldValue::new(name, aside)],
                    MissingParent::DeferNullable,
                )
                .await
                .map_err(|e| StepError::Reject(RejectReason::Database(e.to_string())))?;
            return Ok(UniqueResolution::Retry);
        }

        let incoming_clock = fields
            .iter()
            .map(|f| Self::incoming_clock(change, f.name))
            .max()
            .unwrap_or(change.hlc);
        let holder_clock = match meta.ownership {
            Ownership::Shared => fields
                .iter()
                .filter_map(|f| holder_state.clocks.get(f.name).map(|c| c.hlc))
                .max(),
            Ownership::DeviceOwned => holder_state.hlc,
        };
        let incoming_wins = match holder_clock {
            None => true,
            Some(h) => (incoming_clock, change.id) > (h, holder),
        };
        let current = self
            .desc
            .capture(self.tx, holder)
            .await?
            .unwrap_or_default();
        let (loser, loser_clock, winner, winner_clock) = if incoming_wins {
            (
                holder,
                holder_clock.unwrap_or(incoming_clock),
                change.id,
                incoming_clock,
            )
        } else {
            (
                change.id,
                incoming_clock,
                holder,
                holder_clock.unwrap_or(incoming_clock),
            )
        };
        let field_name = text.map(|i| values[i].name.clone());
        let loser_value = field_name.as_ref().and_then(|n| {
            if incoming_wins {
                holder_value(n, &current)
            } else {
                values
                    .iter()
                    .find(|v| &v.name == n)
                    .map(|v| v.value.clone())
            }
        });
        self.record(NewConflict {
            kind: ConflictKind::Unique,
            model,
            record: loser,
            field: field_name.as_deref(),
            loser: Write {
                origin: timestamp_device(&loser_clock),
                hlc: loser_clock,
                value: loser_value.clone(),
            },
            winner: Some(Write {
                origin: timestamp_device(&winner_clock),
                hlc: winner_clock,
                value: Some(crate::value::WireValue::Uuid(Some(winner))),
            }),
        })
        .await?;
        let shared = meta.ownership == Ownership::Shared;
        match (text, incoming_wins) {
            (Some(i), true) => {
                let name = values[i].name.clone();
                if let Some(v) = holder_value(&name, &current).and_then(|v| renamed(&v, holder)) {
                    self.desc
                        .apply(
                            self.tx,
                            holder,
                            &[FieldValue::new(name.clone(), v.clone())],
                            MissingParent::DeferNullable,
                        )
                        .await
                        .map_err(|e| StepError::Reject(RejectReason::Database(e.to_string())))?;
                    if shared {
                        self.renames.push(Rename {
                            model,
                            id: holder,
                            field: name,
                            value: v,
                        });
                    }
                }
                Ok(UniqueResolution::Retry)
            }
            (Some(i), false) => {
                if let Some(v) = renamed(&values[i].value, change.id) {
                    values[i].value = v.clone();
                    if shared {
                        self.renames.push(Rename {
                            model,
                            id: change.id,
                            field: values[i].name.clone(),
                            value: v,
                        });
                    }
                }
                Ok(UniqueResolution::Retry)
            }
            (None, true) => {
                let state = holder_state;
                self.delete_record(
                    self.desc,
                    holder,
                    incoming_clock,
                    state.owner,
                    state.version,
                )
                .await?;
                Ok(UniqueResolution::Retry)
            }
            (None, false) => {
                let state = store::load_row(self.tx, model, change.id)
                    .await?
                    .unwrap_or_default();
                self.delete_record(
                    self.desc,
                    change.id,
                    incoming_clock,
                    state.owner,
                    state.version,
                )
                .await?;
                Ok(UniqueResolution::Dropped)
            }
        }
    }

    async fn write_once(
        &mut self,
        change: &Change,
        values: &[FieldValue],
    ) -> Result<Written, StepError> {
        Ok(Written::Done(match self
            .desc
            .apply(self.tx, change.id, values, MissingParent::DeferNullable)
            .await
        {
            Ok(applied) => {
                let mut deferred = Vec::new();
                for d in applied.deferred {
                    if self.is_deleted(d.target, d.parent).await? {
                        // A reference to a deleted record resolves to null.
                        continue;
                    }
                    store::park(self.tx, change, d.field, d.target, d.parent).await?;
                    deferred.push(d.field.to_owned());
                }
                Ok(Some(deferred))
            }
            Err(ApplyError::MissingParent {
                field,
                target,
                parent,
                ..
            }) => {
                if self.is_deleted(target, parent).await? {
                    // A non-nullable reference to a deleted record: the
                    // record goes with its parent, on every device alike.
                    self.record(NewConflict {
                        kind: ConflictKind::ParentDeleted,
                        model: self.model(),
                        record: change.id,
                        field: Some(field),
                        loser: Write {
                            origin: change.origin,
                            hlc: change.hlc,
                            value: values
                                .iter()
                                .find(|v| v.name == field)
                                .map(|v| v.value.clone()),
                        },
                        winner: None,
                    })
                    .await?;
                    let state = store::load_row(self.tx, self.model(), change.id).await?;
                    let owner = state.as_ref().and_then(|s| s.owner);
                    let version = state.as_ref().and_then(|s| s.version);
                    self.delete_record(self.desc, change.id, change.hlc, owner, version)
                        .await?;
                } else {
                    store::park(self.tx, change, "", target, parent).await?;
                }
                Ok(None)
            }
            Err(ApplyError::Incomplete { .. }) => {
                // An update that arrived before the record's creation.
                store::park(self.tx, change, "", self.model(), change.id).await?;
                Ok(None)
            }
            Err(ApplyError::Unique {
                columns,
                holder: Some(holder),
                ..
            }) => {
                return Ok(Written::Collision { columns, holder });
            }
            Err(ApplyError::Unique { columns, .. }) => {
                Err(StepError::Reject(RejectReason::Database(format!(
                    "unique column(s) {columns:?} collide with a row that could not be found"
                ))))
            }
            Err(ApplyError::Db(e)) => Err(StepError::Reject(RejectReason::Database(e.to_string()))),
            Err(e) => Err(StepError::Reject(RejectReason::Malformed(e.to_string()))),
        }?))
    }

    async fn is_deleted(&self, model: &str, id: Uuid) -> Result<bool, EngineError> {
        Ok(store::load_row(self.tx, model, id)
            .await?
            .is_some_and(|s| s.deleted))
    }

    /// Moves everything parked under this record to the front of the queue.
    async fn release(&mut self, model: &str, id: Uuid) -> Result<(), EngineError> {
        let parked = store::take_parked(self.tx, model, id).await?;
        self.released.extend(parked);
        Ok(())
    }

    async fn shared_delete(&mut self, change: &Change) -> Result<Outcome, StepError> {
        let state = store::load_row(self.tx, self.model(), change.id).await?;
        if state.as_ref().is_some_and(|s| s.deleted) {
            return Ok(Outcome::Duplicate);
        }
        self.delete_record(self.desc, change.id, change.hlc, None, None)
            .await?;
        Ok(Outcome::Applied)
    }

    fn owner_in(&self, fields: &[FieldChange]) -> Result<Uuid, StepError> {
        let malformed = |why: &str| StepError::Reject(RejectReason::Malformed(why.to_owned()));
        let owner_field = self
            .desc
            .meta()
            .owner_field()
            .ok_or_else(|| malformed("device-owned model without an owner field"))?;
        let value = fields
            .iter()
            .find(|f| f.name == owner_field.name)
            .ok_or_else(|| malformed("device-owned state without its owner"))?;
        match &value.value {
            crate::value::WireValue::Uuid(Some(owner)) => Ok(*owner),
            _ => Err(malformed("the owner is not a device id")),
        }
    }

    async fn owned_upsert(
        &mut self,
        change: &Change,
        fields: &[FieldChange],
    ) -> Result<Outcome, StepError> {
        let model = self.model();
        let owner = self.owner_in(fields)?;
        let state = store::load_row(self.tx, model, change.id).await?;
        let owner = state.as_ref().and_then(|s| s.owner).unwrap_or(owner);
        if change.origin != owner || self.owner_in(fields)? != owner {
            return Err(StepError::Reject(RejectReason::NotOwner { owner }));
        }
        let mut state = state.unwrap_or_default();
        if state.version.is_some_and(|v| v >= change.seq) {
            return Ok(Outcome::Stale);
        }
        if state.deleted {
            // The owner cannot write a record it deleted; a version above the
            // tombstone's is recorded, never applied.
            self.record(NewConflict {
                kind: ConflictKind::Deleted,
                model,
                record: change.id,
                field: None,
                loser: Write {
                    origin: change.origin,
                    hlc: change.hlc,
                    value: None,
                },
                winner: state.deleted_at.map(|hlc| Write {
                    origin: timestamp_device(&hlc),
                    hlc,
                    value: None,
                }),
            })
            .await?;
            return Ok(Outcome::Applied);
        }
        let values: Vec<FieldValue> = fields.iter().map(FieldChange::to_field_value).collect();
        if self.write(change, &values).await?.is_none() {
            return Ok(Outcome::Parked);
        }
        if store::load_row(self.tx, model, change.id)
            .await?
            .is_some_and(|s| s.deleted)
        {
            return Ok(Outcome::Applied);
        }
        state.owner = Some(owner);
        state.version = Some(change.seq);
        state.hlc = Some(change.hlc);
        store::save_row(self.tx, model, change.id, &state).await?;
        self.release(model, change.id).await?;
        Ok(Outcome::Applied)
    }

    async fn owned_delete(&mut self, change: &Change) -> Result<Outcome, StepError> {
        let state = store::load_row(self.tx, self.model(), change.id).await?;
        if let Some(owner) = state.as_ref().and_then(|s| s.owner)
            && owner != change.origin
        {
            return Err(StepError::Reject(RejectReason::NotOwner { owner }));
        }
        if state.as_ref().is_some_and(|s| s.deleted) {
            return Ok(Outcome::Duplicate);
        }
        if state
            .as_ref()
            .and_then(|s| s.version)
            .is_some_and(|v| v >= change.seq)
        {
            return Ok(Outcome::Stale);
        }
        self.delete_record(
            self.desc,
            change.id,
            change.hlc,
            Some(change.origin),
            Some(change.seq),
        )
        .await?;
        Ok(Outcome::Applied)
    }

    /// Applies one deferred nullable reference whose parent has arrived, if
    /// the write it came from still holds that field.
    async fn deferred_part(&mut self, change: &Change, field: &str) -> Result<Outcome, StepError> {
        let model = self.model();
        let f = match &change.op {
            Op::Upsert(fields) => fields
                .iter()
                .find(|f| f.name == field)
                .map(|f| Incoming::of_write(change, f)),
            Op::Image(fields) => fields
                .iter()
                .find(|f| f.name == field)
                .map(Incoming::of_image),
            Op::Delete => None,
        };
        let Some(f) = f else {
            return Ok(Outcome::Stale);
        };
        let Some(mut state) = store::load_row(self.tx, model, change.id).await? else {
            return Ok(Outcome::Stale);
        };
        if state.deleted {
            return Ok(Outcome::Stale);
        }
        let current = match self.desc.meta().ownership {
            Ownership::Shared => state
                .clocks
                .get(field)
                .is_none_or(|local| f.hlc > local.hlc),
            Ownership::DeviceOwned => state.version == Some(change.seq),
        };
        if !current {
            return Ok(Outcome::Stale);
        }
        let value = FieldValue::new(f.name, f.value.clone());
        if self.write(change, &[value]).await?.is_none() {
            return Ok(Outcome::Parked);
        }
        if self.desc.meta().ownership == Ownership::Shared {
            state.clocks.insert(
                f.name.to_owned(),
                FieldClock {
                    hlc: f.hlc,
                    base: f.base,
                },
            );
            store::save_row(self.tx, model, change.id, &state).await?;
        }
        Ok(Outcome::Applied)
    }

    /// Deletes a record for good: rows that reference it through a nullable
    /// key are set to null, rows that need it are deleted with it, and each
    /// deleted record leaves a tombstone. Parked work that waited for any of
    /// them is released, to meet the tombstone.
    async fn delete_record(
        &mut self,
        desc: &'static ModelDescriptor,
        id: Uuid,
        hlc: Timestamp,
        owner: Option<Uuid>,
        version: Option<u64>,
    ) -> Result<(), EngineError> {
        // Depth-first, children before parents, so a database with foreign
        // key constraints never sees a dangling key.
        let mut stack: Vec<(&'static ModelDescriptor, Uuid, bool)> = vec![(desc, id, false)];
        let mut order: Vec<(&'static ModelDescriptor, Uuid)> = Vec::new();
        while let Some((d, record, expanded)) = stack.pop() {
            if expanded {
                order.push((d, record));
                continue;
            }
            stack.push((d, record, true));
            let Some(key) = d.local_key(self.tx, record).await? else {
                continue;
            };
            for (child, reference) in self.registry.references_to(d.name()) {
                if reference.nullable {
                    child
                        .clear_references(self.tx, reference.field, key)
                        .await?;
                } else {
                    for child_id in child
                        .rows_referencing(self.tx, reference.field, key)
                        .await?
                    {
                        if !(std::ptr::eq(child, d) && child_id == record) {
                            stack.push((child, child_id, false));
                        }
                    }
                }
            }
        }
        for (d, record) in order {
            d.delete(self.tx, record).await?;
            let mut state = store::load_row(self.tx, d.name(), record)
                .await?
                .unwrap_or_default();
            state.deleted = true;
            state.deleted_at = Some(hlc);
            state.clocks.clear();
            if std::ptr::eq(d, desc) && record == id {
                state.owner = owner.or(state.owner);
                state.version = version.or(state.version);
            }
            store::save_row(self.tx, d.name(), record, &state).await?;
            self.release(d.name(), record).await?;
        }
        Ok(())
    }
}

/// A field arriving for a shared record: from a write (every field at the
/// write's clock) or from an image (each field at its own).
struct Incoming<'c> {
    name: &'c str,
    value: &'c crate::value::WireValue,
    hlc: Timestamp,
    base: Option<Timestamp>,
    origin: Uuid,
}

impl<'c> Incoming<'c> {
    fn of_write(change: &Change, f: &'c FieldChange) -> Self {
        Self {
            name: &f.name,
            value: &f.value,
            hlc: change.hlc,
            base: f.base,
            origin: change.origin,
        }
    }

    fn of_image(f: &'c FieldImage) -> Self {
        Self {
            name: &f.name,
            value: &f.value,
            hlc: f.hlc,
            base: f.base,
            origin: timestamp_device(&f.hlc),
        }
    }
}

/// The state a local write leaves, for the row-state table.
pub(crate) fn shared_state_after(
    mut state: RowState,
    hlc: Timestamp,
    fields: &[FieldChange],
) -> RowState {
    for f in fields {
        state
            .clocks
            .insert(f.name.clone(), FieldClock { hlc, base: f.base });
    }
    state
}
