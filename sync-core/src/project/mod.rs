//! Projection: what the application's tables show, decided in memory from
//! record states.
//!
//! A record's row is a pure function of its state and of the states around
//! it: whether the records it references are shown, deleted or not here yet,
//! and which rows hold the values of its unique columns. The same states
//! give the same rows on every device, whatever order they arrived in:
//!
//! - a deleted record is not shown;
//! - a reference to a record that is gone resolves to null where it may be
//!   null, and hides the referencing row where it may not;
//! - a reference to a record not here yet is null and waits where it may be
//!   null; where it may not, the row waits whole;
//! - rows that would collide on a unique column are settled by the clock of
//!   their unique fields (then by id): the loser is shown with its text value
//!   renamed, or not at all, until the collision ends.
//!
//! The planner is pure: it reads [`Facts`] and, when a fact it needs is not
//! loaded, says which ([`Needs`]); the caller loads them all in a few
//! set-oriented queries and asks again. A change of what a record shows
//! re-projects what depends on it (its waiters, the rows that reference it,
//! the rows that wanted its unique value), wave after wave, until nothing
//! moves.

mod unique;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use crate::clock::Timestamp;
use crate::conflict::{ConflictKind, Write};
use crate::merge::NewConflict;
use crate::model::FieldRole;
use crate::registry::Registry;
use crate::state::RecordState;
use crate::value::WireValue;

pub(crate) use unique::{UniqueIndex, key_hash, unique_key as unique_key_of};

/// What the engine knows of a model's table beyond the model: its unique
/// indexes over synced columns, and whether its keys are AUTOINCREMENT (so
/// that `sqlite_sequence` holds the highest key it ever gave).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TableInfo {
    pub(crate) unique: Vec<UniqueIndex>,
    pub(crate) autoincrement: bool,
    /// The tables its foreign keys refer to.
    pub(crate) references: Vec<String>,
    /// A foreign key to itself: rows written in separate statements may
    /// refer to each other.
    pub(crate) refers_to_itself: bool,
    /// A foreign key to a synced table written after it (a nullable edge
    /// broken to order a cycle).
    pub(crate) refers_forward: bool,
}

/// A model's position in the registry's dependency order.
pub(crate) type Rank = usize;

/// A record: its model's rank and its global id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RecordKey {
    pub(crate) rank: Rank,
    pub(crate) id: Uuid,
}

/// A unique key sought: (model, index, key hash).
pub(crate) type HolderKey = (Rank, usize, u64);

/// A row holding a unique key: (local key, global id, the key's values).
pub(crate) type Holder = (i64, Uuid, Vec<WireValue>);

/// What a record shows and under which key.
type Shown = (Presence, Option<i64>);

/// What a record is in the application's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Presence {
    /// Not shown: no state of it was projected yet.
    Absent,
    /// Shown (perhaps with a renamed unique value, or null references that
    /// wait).
    Present,
    /// Deleted for good.
    Deleted,
    /// Not shown: a reference that cannot be null points at a record that
    /// is gone.
    Hidden,
    /// Not shown: it lost a unique collision and has no text value to show
    /// renamed.
    Collided,
    /// Not shown yet: incomplete, or a reference that cannot be null points
    /// at a record not here yet.
    Waiting,
    /// Not shown: the application's database refused the row.
    Refused,
}

impl Presence {
    /// Whether a reference to such a record is settled as gone.
    pub(crate) fn is_gone(self) -> bool {
        matches!(
            self,
            Presence::Deleted | Presence::Hidden | Presence::Collided
        )
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            Presence::Absent => 0,
            Presence::Present => 1,
            Presence::Deleted => 2,
            Presence::Hidden => 3,
            Presence::Collided => 4,
            Presence::Waiting => 5,
            Presence::Refused => 6,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Presence::Absent,
            1 => Presence::Present,
            2 => Presence::Deleted,
            3 => Presence::Hidden,
            4 => Presence::Collided,
            5 => Presence::Waiting,
            6 => Presence::Refused,
            _ => return None,
        })
    }
}

/// A record as stored in `_sync_rows`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) state: RecordState,
    pub(crate) presence: Presence,
    pub(crate) key: Option<i64>,
    /// Whether it gave up a unique value (shown renamed, or collided).
    pub(crate) aside: bool,
}

/// One column of a projected row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Projected {
    /// The field's value as the record's state holds it (the id, the owner,
    /// or any other column).
    Data,
    /// A unique text value shown renamed, instead of the state's.
    Text(String),
    /// A reference's local key.
    Key(i64),
    /// A null reference.
    Null,
}

/// What a record will show, and what it waits for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub(crate) presence: Presence,
    /// Its local key when shown.
    pub(crate) key: Option<i64>,
    /// Every synced field, when shown and the caller did not write the row
    /// itself.
    pub(crate) values: Option<Vec<Projected>>,
    /// Records whose presence this record waits for.
    pub(crate) waits: Vec<RecordKey>,
    /// The hash of the unique key it gave up.
    pub(crate) aside: Option<u64>,
    /// As stored before the plan.
    pub(crate) before: (Presence, Option<i64>),
}

/// What the planner was told.
#[derive(Debug, Default)]
pub(crate) struct Input {
    /// Records whose state changed, with their new state.
    pub(crate) changed: BTreeMap<RecordKey, RecordState>,
    /// Records whose row the caller wrote itself (the application's own
    /// writes): shown, with this key.
    pub(crate) fixed: BTreeMap<RecordKey, i64>,
    /// Records to project again although their state did not change.
    pub(crate) dirty: BTreeSet<RecordKey>,
    /// Unique keys the caller's own writes gave up: rows waiting for them
    /// are projected again.
    pub(crate) freed: Vec<(Rank, u64)>,
    /// Records whose every state is dropped, with no tombstone: they are
    /// projected as never seen, so rows referring to them wait for them
    /// (where a deleted record would hide them for good).
    pub(crate) forgotten: BTreeSet<RecordKey>,
}

/// What the planner knows of the database. Each map holds an entry for
/// everything loaded, present or not.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// `_sync_rows`, by record (`None`: no row).
    pub(crate) rows: HashMap<RecordKey, Option<Stored>>,
    /// Rows of the application's tables that reference a (model, key).
    pub(crate) children: HashMap<(Rank, i64), Vec<RecordKey>>,
    /// `_sync_waiting`, by the record waited for.
    pub(crate) waiters: HashMap<RecordKey, Vec<RecordKey>>,
    /// Rows of the application's tables holding a unique key, by (model,
    /// index, key hash).
    pub(crate) holders: HashMap<HolderKey, Vec<Holder>>,
    /// `_sync_aside`, by (model, key hash).
    pub(crate) asides: HashMap<(Rank, u64), Vec<RecordKey>>,
    /// The values of a shown row's unique columns as they are in the table:
    /// per unique index of its model, in index order.
    pub(crate) old_unique: HashMap<(Rank, i64), Vec<Vec<WireValue>>>,
    /// The highest local key of each model's table.
    pub(crate) max_key: HashMap<Rank, i64>,
}

/// Facts to load before the planner can go on.
#[derive(Debug, Default)]
pub(crate) struct Needs {
    pub(crate) rows: BTreeSet<RecordKey>,
    pub(crate) children: BTreeSet<(Rank, i64)>,
    pub(crate) waiters: BTreeSet<RecordKey>,
    pub(crate) holders: BTreeMap<(Rank, usize, u64), Vec<WireValue>>,
    pub(crate) asides: BTreeSet<(Rank, u64)>,
    pub(crate) old_unique: BTreeSet<(Rank, i64)>,
    pub(crate) max_key: BTreeSet<Rank>,
}

impl Needs {
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self.children.is_empty()
            && self.waiters.is_empty()
            && self.holders.is_empty()
            && self.asides.is_empty()
            && self.old_unique.is_empty()
            && self.max_key.is_empty()
    }
}

/// The planner's answer.
#[derive(Debug, Default)]
pub(crate) struct Projection {
    pub(crate) decisions: BTreeMap<RecordKey, Decision>,
    pub(crate) conflicts: Vec<NewConflict>,
}

/// The planner could not finish.
#[derive(Debug)]
pub(crate) enum Unfinished {
    /// Load these and ask again.
    Needs(Box<Needs>),
    /// The projection did not settle (a bug, or states no projection can
    /// satisfy); nothing is written.
    Unsettled(String),
}

/// The most waves a projection may take before it is declared unsettled.
const MAX_WAVES: usize = 10_000;

/// Plans the projection of `input` given `facts`.
pub(crate) fn plan(
    registry: &Registry,
    tables: &[TableInfo],
    input: &Input,
    facts: &Facts,
) -> Result<Projection, Unfinished> {
    let mut planner = Planner {
        registry,
        tables,
        input,
        facts,
        needs: Needs::default(),
        decisions: BTreeMap::new(),
        next_key: BTreeMap::new(),
        conflicts: Vec::new(),
        waves: 0,
        waiting_on: HashMap::new(),
        referencing: HashMap::new(),
    };
    let mut queue: BTreeSet<RecordKey> = input
        .changed
        .keys()
        .chain(input.fixed.keys())
        .chain(input.dirty.iter())
        .chain(input.forgotten.iter())
        .copied()
        .collect();
    for (rank, hash) in &input.freed {
        planner.queue_asides(*rank, *hash, &mut queue);
    }
    while !queue.is_empty() {
        planner.waves += 1;
        if planner.waves > MAX_WAVES {
            return Err(Unfinished::Unsettled(format!(
                "the projection did not settle after {MAX_WAVES} waves"
            )));
        }
        let wave = std::mem::take(&mut queue);
        planner.wave(&wave, &mut queue);
        if !planner.needs.is_empty() {
            return Err(Unfinished::Needs(Box::new(planner.needs)));
        }
    }
    let mut conflicts = planner.conflicts;
    let mut seen = BTreeSet::new();
    conflicts.retain(|c| {
        seen.insert((
            c.kind.as_str(),
            c.model,
            c.record,
            c.field.clone(),
            c.loser.hlc,
        ))
    });
    Ok(Projection {
        decisions: planner.decisions,
        conflicts,
    })
}

struct Planner<'a> {
    registry: &'a Registry,
    tables: &'a [TableInfo],
    input: &'a Input,
    facts: &'a Facts,
    needs: Needs,
    decisions: BTreeMap<RecordKey, Decision>,
    /// Per model, the next local key to hand out.
    next_key: BTreeMap<Rank, i64>,
    conflicts: Vec<NewConflict>,
    waves: usize,
    /// Records of the plan that wait for a record (may hold stale entries:
    /// a record queued for nothing decides the same again and stops).
    waiting_on: HashMap<RecordKey, BTreeSet<RecordKey>>,
    /// Records of the plan whose row references a (model, local key).
    referencing: HashMap<(Rank, i64), BTreeSet<RecordKey>>,
}

/// How a reference resolves.
enum Target {
    Shown(i64),
    Gone,
    Pending,
}

impl<'a> Planner<'a> {
    /// The stored row of a record; `None` (and a need) when not loaded.
    fn stored(&mut self, key: RecordKey) -> Option<Option<&'a Stored>> {
        match self.facts.rows.get(&key) {
            Some(row) => Some(row.as_ref()),
            None => {
                self.needs.rows.insert(key);
                None
            }
        }
    }

    /// A record's state as the plan sees it.
    fn state(&mut self, key: RecordKey) -> Option<Option<&'a RecordState>> {
        if self.input.forgotten.contains(&key) {
            return Some(None);
        }
        if let Some(state) = self.input.changed.get(&key) {
            return Some(Some(state));
        }
        self.stored(key).map(|row| row.map(|r| &r.state))
    }

    /// A record's presence and key as the plan sees it.
    fn presence(&mut self, key: RecordKey) -> Option<(Presence, Option<i64>)> {
        if let Some(d) = self.decisions.get(&key) {
            return Some((d.presence, d.key));
        }
        if let Some(k) = self.input.fixed.get(&key) {
            return Some((Presence::Present, Some(*k)));
        }
        self.stored(key)
            .map(|row| row.map_or((Presence::Absent, None), |r| (r.presence, r.key)))
    }

    fn resolve(&mut self, target: RecordKey) -> Option<Target> {
        let (presence, key) = self.presence(target)?;
        Some(match (presence, key) {
            (Presence::Present, Some(k)) => Target::Shown(k),
            (p, _) if p.is_gone() => Target::Gone,
            _ => Target::Pending,
        })
    }

    fn wave(&mut self, wave: &BTreeSet<RecordKey>, queue: &mut BTreeSet<RecordKey>) {
        let mut by_rank: BTreeMap<Rank, Vec<RecordKey>> = BTreeMap::new();
        for key in wave {
            by_rank.entry(key.rank).or_default().push(*key);
        }
        let mut decided: Vec<(RecordKey, Option<Shown>)> = Vec::new();
        for (rank, keys) in by_rank {
            let mut shown = Vec::new();
            for key in &keys {
                if let Some(d) = self.decide_presence(*key) {
                    if d.presence == Presence::Present && !self.input.fixed.contains_key(key) {
                        shown.push(*key);
                    }
                    let previous = self.decisions.insert(*key, d).map(|p| (p.presence, p.key));
                    decided.push((*key, previous));
                }
            }
            for key in &shown {
                self.assign_key(*key);
            }
            for key in &shown {
                self.project_values(*key);
            }
            self.settle_unique(rank, &keys, queue);
        }
        if !self.needs.is_empty() {
            return;
        }
        for (key, previous) in decided {
            self.propagate(key, previous, queue);
        }
    }

    /// Whether a record is shown, hidden or waiting; its key and values come
    /// later.
    fn decide_presence(&mut self, key: RecordKey) -> Option<Decision> {
        let before = self
            .stored(key)?
            .map_or((Presence::Absent, None), |r| (r.presence, r.key));
        let previous_key = self.decisions.get(&key).and_then(|d| d.key).or(before.1);
        let mut decision = Decision {
            presence: Presence::Present,
            key: None,
            values: None,
            waits: Vec::new(),
            aside: None,
            before,
        };
        if let Some(k) = self.input.fixed.get(&key) {
            decision.key = Some(*k);
            // The application wrote this row as it stands; a reference it
            // shows null because its record has not arrived keeps waiting
            // for that record, so that the row shows it once it does.
            decision.waits = self.fixed_waits(key)?;
            for target in &decision.waits {
                self.waiting_on.entry(*target).or_default().insert(key);
            }
            return Some(decision);
        }
        let desc = self.registry.at(key.rank)?;
        let meta = desc.meta();
        let Some(state) = self.state(key)? else {
            decision.presence = Presence::Absent;
            return Some(decision);
        };
        if state.is_deleted() {
            decision.presence = Presence::Deleted;
            return Some(decision);
        }
        if !state.is_complete(meta) {
            decision.presence = Presence::Waiting;
            return Some(decision);
        }
        let mut missing = false;
        let mut gone_parent: Option<RecordKey> = None;
        for r in meta.references().filter(|r| !r.nullable) {
            let Some(WireValue::Uuid(Some(parent))) = state.value(r.field) else {
                continue;
            };
            let Some(rank) = self.registry.rank(r.target) else {
                continue;
            };
            let target = RecordKey { rank, id: *parent };
            match self.resolve(target) {
                None => missing = true,
                Some(Target::Shown(_)) => {}
                Some(Target::Gone) => {
                    gone_parent.get_or_insert(target);
                    if self.presence(target).map(|p| p.0) != Some(Presence::Deleted) {
                        decision.waits.push(target);
                    }
                }
                Some(Target::Pending) => {
                    decision.presence = Presence::Waiting;
                    decision.waits.push(target);
                }
            }
        }
        for target in &decision.waits {
            self.waiting_on.entry(*target).or_default().insert(key);
        }
        if missing {
            return None;
        }
        if let Some(parent) = gone_parent {
            decision.presence = Presence::Hidden;
            self.parent_deleted(key, state, parent, before.0);
        } else if decision.presence == Presence::Present {
            decision.key = previous_key;
        }
        Some(decision)
    }

    /// Records a row hidden because its parent was deleted, when the row was
    /// written after the delete could have seen it (so it is a lost write,
    /// not a cascade the deleting device meant).
    fn parent_deleted(
        &mut self,
        key: RecordKey,
        state: &RecordState,
        parent: RecordKey,
        before: Presence,
    ) {
        let changed = self.input.changed.contains_key(&key);
        if before == Presence::Hidden && !changed {
            return;
        }
        let Some(Some(parent_state)) = self.state(parent) else {
            return;
        };
        let delete = match parent_state {
            RecordState::Shared(s) => s.tombstone.map(|t| (t.device, t.hlc)),
            RecordState::Owned(o) if o.is_delete() => Some((o.change.device, o.change.hlc)),
            RecordState::Owned(_) => None,
        };
        let Some((device, hlc)) = delete else {
            return;
        };
        let Some(latest) = state.latest() else {
            return;
        };
        if latest <= hlc {
            return;
        }
        let Some(model) = self.registry.at(key.rank).map(|d| d.name()) else {
            return;
        };
        let writer = latest_writer(state).unwrap_or(device);
        self.conflicts.push(NewConflict {
            kind: ConflictKind::ParentDeleted,
            model,
            record: key.id,
            field: None,
            loser: Write {
                device: writer,
                hlc: latest,
                value: None,
            },
            winner: Some(Write {
                device,
                hlc,
                value: Some(WireValue::Uuid(Some(parent.id))),
            }),
        });
    }

    fn assign_key(&mut self, key: RecordKey) {
        let Some(d) = self.decisions.get(&key) else {
            return;
        };
        if d.key.is_some() {
            return;
        }
        let next = match self.next_key.get(&key.rank) {
            Some(n) => *n,
            None => match self.facts.max_key.get(&key.rank) {
                Some(max) => max.saturating_add(1),
                None => {
                    self.needs.max_key.insert(key.rank);
                    return;
                }
            },
        };
        self.next_key.insert(key.rank, next.saturating_add(1));
        if let Some(d) = self.decisions.get_mut(&key) {
            d.key = Some(next);
        }
    }

    /// The records a row the application wrote waits for: those its state
    /// refers to that are not shown here yet (its row shows them null).
    /// `None` until the plan knows where each of them stands.
    fn fixed_waits(&mut self, key: RecordKey) -> Option<Vec<RecordKey>> {
        let meta = self.registry.at(key.rank)?.meta();
        let Some(state) = self.state(key)? else {
            return Some(Vec::new());
        };
        let mut targets = Vec::new();
        for field in meta.fields {
            let FieldRole::Reference { target } = field.role else {
                continue;
            };
            let (Some(WireValue::Uuid(Some(parent))), Some(rank)) =
                (state.value(field.name), self.registry.rank(target))
            else {
                continue;
            };
            targets.push(RecordKey { rank, id: *parent });
        }
        let mut waits = Vec::new();
        let mut missing = false;
        for target in targets {
            match self.resolve(target) {
                None => missing = true,
                Some(Target::Shown(_)) => {}
                Some(Target::Gone) => {
                    if self.presence(target).map(|p| p.0) != Some(Presence::Deleted) {
                        waits.push(target);
                    }
                }
                Some(Target::Pending) => waits.push(target),
            }
        }
        (!missing).then_some(waits)
    }

    /// The values of a shown row: data as held, references as local keys.
    fn project_values(&mut self, key: RecordKey) {
        let Some(desc) = self.registry.at(key.rank) else {
            return;
        };
        let meta = desc.meta();
        let Some(Some(state)) = self.state(key) else {
            return;
        };
        let mut values = Vec::with_capacity(meta.fields.len());
        let mut waits = Vec::new();
        let mut missing = false;
        for field in meta.fields {
            let FieldRole::Reference { target } = field.role else {
                values.push(Projected::Data);
                continue;
            };
            let Some(WireValue::Uuid(Some(parent))) = state.value(field.name) else {
                values.push(Projected::Null);
                continue;
            };
            let parent = *parent;
            let Some(rank) = self.registry.rank(target) else {
                values.push(Projected::Null);
                continue;
            };
            let target_key = RecordKey { rank, id: parent };
            match self.resolve(target_key) {
                None => {
                    missing = true;
                    values.push(Projected::Null);
                }
                Some(Target::Shown(k)) => {
                    self.referencing.entry((rank, k)).or_default().insert(key);
                    values.push(Projected::Key(k));
                }
                Some(Target::Gone) => {
                    if self.presence(target_key).map(|p| p.0) != Some(Presence::Deleted) {
                        waits.push(target_key);
                    }
                    values.push(Projected::Null);
                }
                Some(Target::Pending) => {
                    waits.push(target_key);
                    values.push(Projected::Null);
                }
            }
        }
        if missing {
            return;
        }
        for target in &waits {
            self.waiting_on.entry(*target).or_default().insert(key);
        }
        if let Some(d) = self.decisions.get_mut(&key) {
            d.values = Some(values);
            d.waits.extend(waits);
        }
    }

    /// Queues what depends on a record whose presence or key changed:
    /// compared with what the plan decided for it before this wave, or with
    /// what is stored when this is its first decision.
    fn propagate(
        &mut self,
        key: RecordKey,
        previous: Option<Shown>,
        queue: &mut BTreeSet<RecordKey>,
    ) {
        let Some(d) = self.decisions.get(&key) else {
            return;
        };
        let now = (d.presence, d.key);
        let stored = d.before;
        let before = previous.unwrap_or(stored);
        if now != before {
            match self.facts.waiters.get(&key) {
                Some(waiters) => queue.extend(waiters.iter().filter(|w| **w != key)),
                None => {
                    self.needs.waiters.insert(key);
                }
            }
            if let Some(waiting) = self.waiting_on.get(&key) {
                queue.extend(waiting.iter().filter(|w| **w != key));
            }
        }
        if let (Presence::Present, Some(old)) = before
            && now != before
        {
            if stored == before {
                match self.facts.children.get(&(key.rank, old)) {
                    Some(children) => queue.extend(children.iter().filter(|c| **c != key)),
                    None => {
                        self.needs.children.insert((key.rank, old));
                    }
                }
            }
            // Rows this plan shows that reference it under its old key.
            let candidates: Vec<RecordKey> = self
                .referencing
                .get(&(key.rank, old))
                .map(|s| s.iter().copied().filter(|k| *k != key).collect())
                .unwrap_or_default();
            for c in candidates {
                if self.references(c, key) {
                    queue.insert(c);
                }
            }
        }
        self.queue_freed(key, queue);
    }

    /// Whether record `from`'s state references `to`.
    fn references(&mut self, from: RecordKey, to: RecordKey) -> bool {
        let Some(desc) = self.registry.at(from.rank) else {
            return false;
        };
        let Some(target) = self.registry.at(to.rank).map(|d| d.name()) else {
            return false;
        };
        let Some(Some(state)) = self.state(from) else {
            return false;
        };
        desc.meta().references().any(|r| {
            r.target == target && state.value(r.field) == Some(&WireValue::Uuid(Some(to.id)))
        })
    }

    fn queue_asides(&mut self, rank: Rank, hash: u64, queue: &mut BTreeSet<RecordKey>) {
        match self.facts.asides.get(&(rank, hash)) {
            Some(rows) => queue.extend(rows.iter().copied()),
            None => {
                self.needs.asides.insert((rank, hash));
            }
        }
    }
}

/// The device that wrote a record's newest write.
fn latest_writer(state: &RecordState) -> Option<Uuid> {
    match state {
        RecordState::Shared(s) => s.latest_write().map(|f| f.device),
        RecordState::Owned(o) => Some(o.change.device),
    }
}

/// The clock used to order two contenders for a unique value.
pub(crate) fn contender_clock(state: &RecordState, fields: &[&str]) -> Option<Timestamp> {
    crate::merge::clock_of_fields(state, fields)
}
