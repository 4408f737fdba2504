//! Merging, without a database: an incoming change (or a peer's state of a
//! record) folded into the state held. Pure functions, so that the algebra
//! the engine relies on (commutative, associative, idempotent) is tested in
//! microseconds over generated histories.
//!
//! Shared records merge per field, last writer wins by clock; a tombstone
//! beats every write, whatever the order. Device-owned records keep their
//! owner's winning state: a delete over any write, else the newest clock.
//! A write that loses to a concurrent one is reported as a conflict; a write
//! that its successor had seen (the successor's `base` is at least its
//! clock, or both came from one device) is superseded, not lost.

use std::borrow::Cow;

use uuid::Uuid;

use crate::change::{Change, Op};
use crate::clock::{Timestamp, timestamp_origin};
use crate::conflict::{ConflictKind, Write};
use crate::model::{FieldRole, Ownership};
use crate::registry::ModelDescriptor;
use crate::state::{FieldState, OwnedState, RecordState, SharedState, Tombstone};
use crate::value::WireValue;

/// A conflict found while merging, to be stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewConflict {
    pub(crate) kind: ConflictKind,
    pub(crate) model: &'static str,
    pub(crate) record: Uuid,
    pub(crate) field: Option<String>,
    pub(crate) loser: Write,
    pub(crate) winner: Option<Write>,
}

/// Why a change is refused for good: it can never be applied, on any device
/// that has the same models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// A device-owned record changed by a device that does not own it.
    NotOwner { owner: Uuid },
    /// The change does not fit the model.
    Malformed(String),
}

/// What merging did to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merged {
    /// The state changed.
    Changed,
    /// Nothing new: an older write, or one already held.
    Superseded,
}

fn write_of(f: &FieldState) -> Write {
    Write {
        device: f.device,
        hlc: f.hlc,
        value: Some(f.value.clone()),
    }
}

/// Whether `newer` was written without having seen `older`.
fn concurrent(older: &FieldState, newer: &FieldState) -> bool {
    older.device != newer.device && newer.base.is_none_or(|b| b < older.hlc)
}

/// Context for the conflicts a merge reports.
#[derive(Clone, Copy)]
pub(crate) struct Site {
    pub(crate) model: &'static str,
    pub(crate) record: Uuid,
}

impl Site {
    pub(crate) fn conflict(
        self,
        kind: ConflictKind,
        field: Option<&str>,
        loser: Write,
        winner: Option<Write>,
    ) -> NewConflict {
        NewConflict {
            kind,
            model: self.model,
            record: self.record,
            field: field.map(str::to_owned),
            loser,
            winner,
        }
    }
}

fn tombstone_write(t: &Tombstone) -> Write {
    Write {
        device: t.device,
        hlc: t.hlc,
        value: None,
    }
}

/// Folds one field write into a shared record.
pub(crate) fn merge_field(
    state: &mut SharedState,
    name: Cow<'_, str>,
    incoming: FieldState,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Merged {
    if let Some(t) = &state.tombstone {
        if t.seen.is_none_or(|seen| incoming.hlc > seen) {
            conflicts.push(site.conflict(
                ConflictKind::Deleted,
                Some(&name),
                write_of(&incoming),
                Some(tombstone_write(t)),
            ));
        }
        return Merged::Superseded;
    }
    match state.fields.get(name.as_ref()) {
        None => {
            state.fields.insert(name.into_owned(), incoming);
            Merged::Changed
        }
        Some(local) if incoming.hlc > local.hlc => {
            if concurrent(local, &incoming) && local.value != incoming.value {
                conflicts.push(site.conflict(
                    ConflictKind::Overwritten,
                    Some(&name),
                    write_of(local),
                    Some(write_of(&incoming)),
                ));
            }
            state.fields.insert(name.into_owned(), incoming);
            Merged::Changed
        }
        Some(local) if incoming.hlc == local.hlc => Merged::Superseded,
        Some(local) => {
            if concurrent(&incoming, local) && local.value != incoming.value {
                conflicts.push(site.conflict(
                    ConflictKind::Outdated,
                    Some(&name),
                    write_of(&incoming),
                    Some(write_of(local)),
                ));
            }
            Merged::Superseded
        }
    }
}

/// Folds a delete into a shared record: fields written after what the
/// deleting device had seen lost to it.
pub(crate) fn merge_tombstone(
    state: &mut SharedState,
    tombstone: Tombstone,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Merged {
    if let Some(held) = &state.tombstone {
        if held.hlc >= tombstone.hlc {
            return Merged::Superseded;
        }
        state.tombstone = Some(tombstone);
        return Merged::Changed;
    }
    for (name, f) in &state.fields {
        if tombstone.seen.is_none_or(|seen| f.hlc > seen) {
            conflicts.push(site.conflict(
                ConflictKind::Deleted,
                Some(name),
                write_of(f),
                Some(tombstone_write(&tombstone)),
            ));
        }
    }
    state.fields.clear();
    state.tombstone = Some(tombstone);
    Merged::Changed
}

/// Folds a shared change into a shared record, copying the values it
/// keeps.
pub(crate) fn merge_shared_change(
    state: &mut SharedState,
    change: &Change,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Merged {
    match &change.op {
        Op::Delete { seen } => merge_tombstone(state, tombstone_of(change, *seen), site, conflicts),
        Op::Upsert(fields) => merge_upsert(
            state,
            change,
            fields
                .iter()
                .map(|f| (Cow::Borrowed(f.name.as_str()), f.value.clone(), f.base)),
            site,
            conflicts,
        ),
    }
}

/// Folds a shared change into a shared record, moving the names and values
/// it keeps out of the change: what the receive path does, which has no
/// use for them afterwards. The change is left an upsert of no fields.
pub(crate) fn absorb_shared_change(
    state: &mut SharedState,
    change: &mut Change,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Merged {
    match &mut change.op {
        Op::Delete { seen } => {
            let seen = *seen;
            merge_tombstone(state, tombstone_of(change, seen), site, conflicts)
        }
        Op::Upsert(fields) => {
            let fields = std::mem::take(fields);
            merge_upsert(
                state,
                change,
                fields
                    .into_iter()
                    .map(|f| (Cow::Owned(f.name), f.value, f.base)),
                site,
                conflicts,
            )
        }
    }
}

fn tombstone_of(change: &Change, seen: Option<Timestamp>) -> Tombstone {
    Tombstone {
        device: change.device,
        hlc: change.hlc,
        seen,
        delete: Some((change.origin, change.seq)),
    }
}

fn merge_upsert<'a>(
    state: &mut SharedState,
    change: &Change,
    fields: impl Iterator<Item = (Cow<'a, str>, WireValue, Option<Timestamp>)>,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Merged {
    let mut merged = Merged::Superseded;
    for (name, value, base) in fields {
        let incoming = FieldState {
            value,
            hlc: change.hlc,
            base,
            device: change.device,
            seq: change.seq,
        };
        if merge_field(state, name, incoming, site, conflicts) == Merged::Changed {
            merged = Merged::Changed;
        }
    }
    merged
}

/// Folds a peer's whole state of a shared record (a snapshot row) into the
/// record held.
pub(crate) fn merge_shared_state(
    state: &mut SharedState,
    incoming: SharedState,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Merged {
    let mut merged = Merged::Superseded;
    if let Some(t) = incoming.tombstone
        && merge_tombstone(state, t, site, conflicts) == Merged::Changed
    {
        merged = Merged::Changed;
    }
    for (name, f) in incoming.fields {
        if merge_field(state, Cow::Owned(name), f, site, conflicts) == Merged::Changed {
            merged = Merged::Changed;
        }
    }
    merged
}

/// The device that owns a device-owned state.
pub(crate) fn owner_of(state: &OwnedState, owner_field: &str) -> Option<Uuid> {
    match &state.change.op {
        Op::Delete { .. } => Some(state.change.device),
        Op::Upsert(_) => match state.change.field(owner_field) {
            Some(WireValue::Uuid(Some(owner))) => Some(*owner),
            _ => None,
        },
    }
}

/// Folds an owner's state into a device-owned record. `Err` when the
/// incoming state's writer does not own the record.
pub(crate) fn merge_owned(
    held: &mut Option<OwnedState>,
    incoming: OwnedState,
    owner_field: &str,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Result<Merged, Invalid> {
    let claimed = owner_of(&incoming, owner_field)
        .ok_or_else(|| Invalid::Malformed("a device-owned state without its owner".into()))?;
    if claimed != incoming.change.device {
        return Err(Invalid::NotOwner { owner: claimed });
    }
    let Some(current) = held else {
        *held = Some(incoming);
        return Ok(Merged::Changed);
    };
    if let Some(owner) = owner_of(current, owner_field)
        && owner != claimed
    {
        return Err(Invalid::NotOwner { owner });
    }
    if incoming.beats(current) {
        *held = Some(incoming);
        return Ok(Merged::Changed);
    }
    if current.is_delete() && !incoming.is_delete() && incoming.change.hlc > current.change.hlc {
        conflicts.push(site.conflict(
            ConflictKind::Deleted,
            None,
            Write {
                device: incoming.change.device,
                hlc: incoming.change.hlc,
                value: None,
            },
            Some(Write {
                device: current.change.device,
                hlc: current.change.hlc,
                value: None,
            }),
        ));
    }
    Ok(Merged::Superseded)
}

/// Folds an incoming record state into the state held (`None`: none yet).
pub(crate) fn merge_state(
    held: &mut Option<RecordState>,
    incoming: RecordState,
    owner_field: Option<&str>,
    site: Site,
    conflicts: &mut Vec<NewConflict>,
) -> Result<Merged, Invalid> {
    match (held.take(), incoming) {
        (None, RecordState::Shared(s)) => {
            *held = Some(RecordState::Shared(s));
            Ok(Merged::Changed)
        }
        (Some(RecordState::Shared(mut s)), RecordState::Shared(i)) => {
            let m = merge_shared_state(&mut s, i, site, conflicts);
            *held = Some(RecordState::Shared(s));
            Ok(m)
        }
        (current, RecordState::Owned(i)) => {
            let mut owned = match current {
                Some(RecordState::Owned(o)) => Some(o),
                Some(other @ RecordState::Shared(_)) => {
                    *held = Some(other);
                    return Err(Invalid::Malformed(
                        "a device-owned state for a shared record".into(),
                    ));
                }
                None => None,
            };
            let field = owner_field.ok_or_else(|| {
                Invalid::Malformed("a device-owned state for a shared model".into())
            });
            let result = field.and_then(|f| merge_owned(&mut owned, i, f, site, conflicts));
            *held = owned.map(RecordState::Owned);
            result
        }
        (Some(other @ RecordState::Owned(_)), RecordState::Shared(_)) => {
            *held = Some(other);
            Err(Invalid::Malformed(
                "a shared state for a device-owned record".into(),
            ))
        }
    }
}

/// Checks a change against its model: the fields it names exist, their
/// values fit their types, references are global ids, the id matches, and
/// a device-owned state is whole and names its owner. Unknown fields of a
/// shared record are kept (a newer peer may sync a field this version does
/// not have) but never shown.
pub(crate) fn validate(desc: &ModelDescriptor, change: &Change) -> Result<(), Invalid> {
    let malformed = |why: String| Err(Invalid::Malformed(why));
    if change.seq == 0 || change.origin.is_nil() || change.device.is_nil() {
        return malformed("a change needs a device, an origin and a number".into());
    }
    if timestamp_origin(&change.hlc) != change.origin {
        return malformed("the clock of a change must be its origin's".into());
    }
    let meta = desc.meta();
    let Op::Upsert(fields) = &change.op else {
        return Ok(());
    };
    let mut seen = std::collections::BTreeSet::new();
    for f in fields {
        if !seen.insert(f.name.as_str()) {
            return malformed(format!("field `{}` appears twice", f.name));
        }
        let Some(index) = meta.field_index(&f.name) else {
            if meta.ownership == Ownership::DeviceOwned {
                return malformed(format!("`{}` has no synced field `{}`", meta.name, f.name));
            }
            continue;
        };
        check_value(desc, index, &f.value, change.id)?;
    }
    if meta.ownership == Ownership::DeviceOwned
        && let Some(missing) = meta.fields.iter().find(|m| !seen.contains(m.name))
    {
        return malformed(format!(
            "a state of `{}` without field `{}`",
            meta.name, missing.name
        ));
    }
    Ok(())
}

/// Checks one field value.
pub(crate) fn check_value(
    desc: &ModelDescriptor,
    index: usize,
    value: &WireValue,
    id: Uuid,
) -> Result<(), Invalid> {
    let meta = desc.meta();
    let field = &meta.fields[index];
    let bad = |why: String| {
        Err(Invalid::Malformed(format!(
            "`{}.{}`: {why}",
            meta.name, field.name
        )))
    };
    match field.role {
        FieldRole::Reference { .. } => match value {
            WireValue::Uuid(Some(_)) => Ok(()),
            WireValue::Uuid(None) if field.nullable => Ok(()),
            WireValue::Uuid(None) => bad("null in a reference that cannot be null".into()),
            other => bad(format!(
                "a reference must be a global id, not {}",
                other.kind()
            )),
        },
        FieldRole::Id => match value {
            WireValue::Uuid(Some(v)) if *v == id => Ok(()),
            _ => bad("the id field does not name the record".into()),
        },
        FieldRole::Owner | FieldRole::Data => match desc.to_sql(index, value) {
            Ok(_) => Ok(()),
            Err(e) => bad(e.to_string()),
        },
    }
}

/// The clock of the newest write a record holds, to judge unique
/// collisions: the newest of the fields in `columns` for a shared record,
/// the state's clock for a device-owned one.
pub(crate) fn clock_of_fields(state: &RecordState, fields: &[&str]) -> Option<Timestamp> {
    match state {
        RecordState::Shared(s) => fields
            .iter()
            .filter_map(|f| s.fields.get(*f).map(|x| x.hlc))
            .max(),
        RecordState::Owned(o) => Some(o.change.hlc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::FieldChange;
    use crate::clock::{NTP64, clock_id};
    use proptest::prelude::*;

    const SITE: Site = Site {
        model: "tags",
        record: Uuid::from_u128(0xAB),
    };

    fn device(n: u8) -> Uuid {
        Uuid::from_u128(n as u128)
    }

    fn ts(t: u64, o: u8) -> Timestamp {
        Timestamp::new(NTP64(t << 4), clock_id(device(o)).unwrap())
    }

    /// An arbitrary write to one of three fields, or a delete, by one of
    /// three devices. One clock names one write: what a write carries is a
    /// function of its clock and field.
    #[derive(Debug, Clone)]
    enum Event {
        Write {
            dev: u8,
            t: u64,
            field: u8,
            value: i32,
            base: Option<u64>,
        },
        Delete {
            dev: u8,
            t: u64,
            seen: Option<u64>,
        },
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            6 => (1u8..4, 1u64..40, 0u8..3)
                .prop_map(|(dev, t, field)| {
                    let mix = t * 7 + dev as u64 * 3 + field as u64;
                    Event::Write {
                        dev,
                        t,
                        field,
                        value: (mix % 5) as i32,
                        base: (!mix.is_multiple_of(3)).then_some(mix % t),
                    }
                }),
            1 => (1u8..4, 1u64..40)
                .prop_map(|(dev, t)| Event::Delete { dev, t, seen: (t > 1).then_some(t - 1) }),
        ]
    }

    fn apply(state: &mut SharedState, e: &Event, conflicts: &mut Vec<NewConflict>) {
        match e {
            Event::Write {
                dev,
                t,
                field,
                value,
                base,
            } => {
                merge_field(
                    state,
                    Cow::Borrowed(["a", "b", "c"][*field as usize]),
                    FieldState {
                        value: WireValue::I32(Some(*value)),
                        hlc: ts(*t, *dev),
                        base: base.map(|b| ts(b, *dev)),
                        device: device(*dev),
                        seq: *t,
                    },
                    SITE,
                    conflicts,
                );
            }
            Event::Delete { dev, t, seen } => {
                merge_tombstone(
                    state,
                    Tombstone {
                        device: device(*dev),
                        hlc: ts(*t, *dev),
                        seen: seen.map(|s| ts(s, *dev)),
                        delete: None,
                    },
                    SITE,
                    conflicts,
                );
            }
        }
    }

    fn fold(events: &[Event]) -> SharedState {
        let mut s = SharedState::default();
        let mut c = Vec::new();
        for e in events {
            apply(&mut s, e, &mut c);
        }
        s
    }

    proptest! {
        /// Any delivery order of the same writes ends in the same state.
        #[test]
        fn shared_merge_is_commutative(events in prop::collection::vec(event(), 0..12), seed in any::<u64>()) {
            let mut shuffled = events.clone();
            let mut rng = seed;
            for i in (1..shuffled.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (rng >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(fold(&events), fold(&shuffled));
        }

        /// Delivering writes again changes nothing (the engine never merges a
        /// change twice: its received set stops a duplicate first), and a
        /// state merged into itself reports nothing.
        #[test]
        fn shared_merge_is_idempotent(events in prop::collection::vec(event(), 1..12)) {
            let mut s = SharedState::default();
            let mut c = Vec::new();
            for e in &events {
                apply(&mut s, e, &mut c);
            }
            let before = s.clone();
            for e in &events {
                apply(&mut s, e, &mut c);
            }
            prop_assert_eq!(&before, &s);
            let mut again = Vec::new();
            prop_assert_eq!(merge_shared_state(&mut s, before.clone(), SITE, &mut again), Merged::Superseded);
            prop_assert!(again.is_empty(), "{:?}", again);
            prop_assert_eq!(before, s);
        }

        /// Merging two devices' states, whichever way round and however
        /// grouped, equals applying all their writes.
        #[test]
        fn state_merge_is_associative(a in prop::collection::vec(event(), 0..8), b in prop::collection::vec(event(), 0..8), c in prop::collection::vec(event(), 0..8)) {
            let (sa, sb, sc) = (fold(&a), fold(&b), fold(&c));
            let mut left = sa.clone();
            let mut ignored = Vec::new();
            let mut bc = sb.clone();
            merge_shared_state(&mut bc, sc.clone(), SITE, &mut ignored);
            merge_shared_state(&mut left, bc, SITE, &mut ignored);
            let mut right = sa.clone();
            merge_shared_state(&mut right, sb, SITE, &mut ignored);
            merge_shared_state(&mut right, sc, SITE, &mut ignored);
            let all: Vec<Event> = a.iter().chain(&b).chain(&c).cloned().collect();
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(&left, &fold(&all));
        }

        /// A deleted record stays deleted, whatever arrives after.
        #[test]
        fn a_delete_always_wins(events in prop::collection::vec(event(), 0..12)) {
            let s = fold(&events);
            let deleted = events.iter().any(|e| matches!(e, Event::Delete { .. }));
            prop_assert_eq!(s.tombstone.is_some(), deleted);
            if deleted {
                prop_assert!(s.fields.is_empty());
            }
        }
    }

    #[test]
    fn writes_of_one_device_never_conflict() {
        let mut s = SharedState::default();
        let mut c = Vec::new();
        for (t, v) in [(1, 1), (2, 2), (3, 3)] {
            apply(
                &mut s,
                &Event::Write {
                    dev: 1,
                    t,
                    field: 0,
                    value: v,
                    base: None,
                },
                &mut c,
            );
        }
        // The first write arrives again late, after a chain of later ones.
        apply(
            &mut s,
            &Event::Write {
                dev: 1,
                t: 1,
                field: 0,
                value: 9,
                base: None,
            },
            &mut c,
        );
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn concurrent_edits_are_reported_once_whichever_arrives_first() {
        let w1 = Event::Write {
            dev: 1,
            t: 5,
            field: 0,
            value: 1,
            base: Some(1),
        };
        let w2 = Event::Write {
            dev: 2,
            t: 6,
            field: 0,
            value: 2,
            base: Some(1),
        };
        for order in [[&w1, &w2], [&w2, &w1]] {
            let mut s = SharedState::default();
            let mut c = Vec::new();
            for e in order {
                apply(&mut s, e, &mut c);
            }
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].loser.device, device(1));
            assert_eq!(c[0].winner.as_ref().unwrap().device, device(2));
        }
    }

    #[test]
    fn a_write_after_the_delete_it_did_not_see_is_recorded() {
        let mut s = SharedState::default();
        let mut c = Vec::new();
        apply(
            &mut s,
            &Event::Write {
                dev: 1,
                t: 2,
                field: 0,
                value: 1,
                base: None,
            },
            &mut c,
        );
        apply(
            &mut s,
            &Event::Delete {
                dev: 2,
                t: 3,
                seen: Some(2),
            },
            &mut c,
        );
        assert!(c.is_empty(), "the delete saw the write: {c:?}");
        apply(
            &mut s,
            &Event::Write {
                dev: 1,
                t: 4,
                field: 1,
                value: 1,
                base: None,
            },
            &mut c,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, ConflictKind::Deleted);
    }

    #[test]
    fn only_the_owner_writes_a_device_owned_record() {
        let change = |dev: u8, owner: u8, t: u64| {
            let c = Change {
                device: device(dev),
                origin: device(dev),
                seq: t,
                hlc: ts(t, dev),
                model: "volumes".into(),
                id: SITE.record,
                op: Op::Upsert(vec![FieldChange {
                    name: "owner".into(),
                    value: WireValue::Uuid(Some(device(owner))),
                    base: None,
                }]),
                replaces: None,
            };
            let bytes = c.encode().unwrap();
            OwnedState { change: c, bytes }
        };
        let mut held = None;
        let mut c = Vec::new();
        assert_eq!(
            merge_owned(&mut held, change(1, 1, 1), "owner", SITE, &mut c),
            Ok(Merged::Changed)
        );
        assert_eq!(
            merge_owned(&mut held, change(2, 2, 5), "owner", SITE, &mut c),
            Err(Invalid::NotOwner { owner: device(1) })
        );
        assert_eq!(
            merge_owned(&mut held, change(2, 1, 5), "owner", SITE, &mut c),
            Err(Invalid::NotOwner { owner: device(1) })
        );
        assert_eq!(
            merge_owned(&mut held, change(1, 1, 3), "owner", SITE, &mut c),
            Ok(Merged::Changed)
        );
        assert_eq!(
            merge_owned(&mut held, change(1, 1, 2), "owner", SITE, &mut c),
            Ok(Merged::Superseded)
        );
    }
}
