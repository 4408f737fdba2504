//! A record's canonical state as a device holds it: what it merges into,
//! what it serves to peers, and what the application's table is projected
//! from.
//!
//! A shared record is its fields, each with the clock of the write that set
//! it (and the device that wrote it), or a tombstone. A device-owned record
//! is its owner's newest change, kept as the bytes the owner encoded. Both
//! hold references as global ids, including ones whose record this device
//! has not received yet, so the state served is always the state received.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::{Change, EncodedChange, Op};
use crate::clock::Timestamp;
use crate::model::{ModelMeta, Ownership};
use crate::value::WireValue;

/// A shared field's value with the write that set it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldState {
    pub(crate) value: WireValue,
    /// The write's clock.
    pub(crate) hlc: Timestamp,
    /// The field version that write replaced.
    pub(crate) base: Option<Timestamp>,
    /// The device that wrote it.
    pub(crate) device: Uuid,
    /// The write's number under its origin (the clock's id); 0 for a field
    /// stored before the number was kept. A resync settles by it: a record
    /// whose every write the serving device held, and which it no longer
    /// holds, was deleted there.
    pub(crate) seq: u64,
}

/// A deleted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub(crate) device: Uuid,
    pub(crate) hlc: Timestamp,
    /// The newest field clock the deleting device held.
    pub(crate) seen: Option<Timestamp>,
    /// The delete's origin and number, by which its collection waits for
    /// every peer's acknowledgement; `None` for a tombstone no change made
    /// (or stored before schema 4).
    pub(crate) delete: Option<(Uuid, u64)>,
}

/// A shared record.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SharedState {
    /// Empty once deleted.
    pub(crate) fields: BTreeMap<String, FieldState>,
    pub(crate) tombstone: Option<Tombstone>,
}

impl SharedState {
    /// The newest clock in the record.
    pub(crate) fn latest(&self) -> Option<Timestamp> {
        let fields = self.fields.values().map(|f| f.hlc).max();
        match (&self.tombstone, fields) {
            (Some(t), f) => Some(f.map_or(t.hlc, |f| f.max(t.hlc))),
            (None, f) => f,
        }
    }

    /// The field written last, with its writer.
    pub(crate) fn latest_write(&self) -> Option<&FieldState> {
        self.fields.values().max_by_key(|f| f.hlc)
    }

    /// Whether every synced field of `meta` has a value (a record created
    /// here, or whose creation arrived).
    pub(crate) fn is_complete(&self, meta: &ModelMeta) -> bool {
        meta.fields.iter().all(|f| self.fields.contains_key(f.name))
    }
}

/// A device-owned record: its owner's newest change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OwnedState {
    pub(crate) change: Change,
    pub(crate) bytes: EncodedChange,
}

impl OwnedState {
    pub(crate) fn is_delete(&self) -> bool {
        self.change.is_delete()
    }

    /// Which of two owner states wins: a delete over any write, else the
    /// newer clock. Order-free, so every device keeps the same one.
    pub(crate) fn beats(&self, other: &OwnedState) -> bool {
        (self.is_delete(), self.change.hlc) > (other.is_delete(), other.change.hlc)
    }
}

/// A record's state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RecordState {
    Shared(SharedState),
    Owned(OwnedState),
}

impl RecordState {
    pub(crate) fn is_deleted(&self) -> bool {
        match self {
            RecordState::Shared(s) => s.tombstone.is_some(),
            RecordState::Owned(o) => o.is_delete(),
        }
    }

    /// The clock of the newest write in the record.
    pub(crate) fn latest(&self) -> Option<Timestamp> {
        match self {
            RecordState::Shared(s) => s.latest(),
            RecordState::Owned(o) => Some(o.change.hlc),
        }
    }

    /// The value of a synced field (a reference as its target's global id).
    pub(crate) fn value(&self, field: &str) -> Option<&WireValue> {
        match self {
            RecordState::Shared(s) => s.fields.get(field).map(|f| &f.value),
            RecordState::Owned(o) => o.change.field(field),
        }
    }

    /// The clock of the write that set a field.
    pub(crate) fn field_clock(&self, field: &str) -> Option<Timestamp> {
        match self {
            RecordState::Shared(s) => s.fields.get(field).map(|f| f.hlc),
            RecordState::Owned(o) => Some(o.change.hlc),
        }
    }

    /// The device that wrote a field.
    pub(crate) fn field_writer(&self, field: &str) -> Option<Uuid> {
        match self {
            RecordState::Shared(s) => s.fields.get(field).map(|f| f.device),
            RecordState::Owned(o) => Some(o.change.device),
        }
    }

    /// Whether every synced field has a value.
    pub(crate) fn is_complete(&self, meta: &ModelMeta) -> bool {
        match self {
            RecordState::Shared(s) => s.is_complete(meta),
            RecordState::Owned(o) => match &o.change.op {
                Op::Upsert(fields) => meta
                    .fields
                    .iter()
                    .all(|m| fields.iter().any(|f| f.name == m.name)),
                Op::Delete { .. } => false,
            },
        }
    }

    /// The bytes stored in `_sync_rows.state`.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        match self {
            RecordState::Shared(s) => {
                // Sized for a typical field, so the buffer is not regrown
                // as it fills; the bytes are `rmp_serde::to_vec`'s.
                let mut buf = Vec::with_capacity(48 + 40 * s.fields.len());
                rmp_serde::encode::write(&mut buf, &ImageRef::of(s)).map_err(|e| e.to_string())?;
                Ok(buf)
            }
            RecordState::Owned(o) => Ok(o.bytes.0.clone()),
        }
    }

    /// The state stored as `bytes` for a model of `ownership`.
    pub(crate) fn decode(ownership: Ownership, bytes: &[u8]) -> Result<Self, String> {
        match ownership {
            Ownership::Shared => {
                let image: SharedImage = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
                image.into_state().map(RecordState::Shared)
            }
            Ownership::DeviceOwned => {
                let change = Change::decode(bytes).map_err(|e| e.to_string())?;
                Ok(RecordState::Owned(OwnedState {
                    change,
                    bytes: EncodedChange(bytes.to_vec()),
                }))
            }
        }
    }
}

/// A shared record's whole state as it travels in a snapshot: every field
/// with its clock and writer, or its tombstone. Clocks and writers are
/// listed once and referred to by position, so a row created by one write
/// carries one clock, not one per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedImage {
    devices: Vec<Uuid>,
    clocks: Vec<Timestamp>,
    fields: Vec<ImageField>,
    tombstone: Option<ImageTombstone>,
    /// The number of the write of each clock, by position (0: not known);
    /// empty when none is known (an image stored before they were kept).
    #[serde(default)]
    numbers: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ImageField(String, WireValue, u32, Option<u32>, u32);

/// A [`SharedImage`] serialized straight from the state it images: the same
/// bytes, without copying the values.
#[derive(Serialize)]
struct ImageRef<'a> {
    devices: Vec<Uuid>,
    clocks: Vec<Timestamp>,
    fields: Vec<ImageFieldRef<'a>>,
    tombstone: Option<ImageTombstone>,
    numbers: Vec<u64>,
}

#[derive(Serialize)]
struct ImageFieldRef<'a>(&'a str, &'a WireValue, u32, Option<u32>, u32);

fn position<T: PartialEq + Copy>(list: &mut Vec<T>, item: T) -> u32 {
    match list.iter().position(|x| *x == item) {
        Some(i) => i as u32,
        None => {
            list.push(item);
            (list.len() - 1) as u32
        }
    }
}

/// The number of each of `clocks`' writes, from the fields they set; empty
/// when no field knows its number.
fn numbers_of<'a>(clocks: &[Timestamp], fields: impl Iterator<Item = &'a FieldState>) -> Vec<u64> {
    let mut numbers = vec![0; clocks.len()];
    for f in fields {
        if let Some(i) = clocks.iter().position(|c| *c == f.hlc) {
            numbers[i] = numbers[i].max(f.seq);
        }
    }
    if numbers.iter().all(|n| *n == 0) {
        numbers.clear();
    }
    numbers
}

impl<'a> ImageRef<'a> {
    fn of(state: &'a SharedState) -> Self {
        let mut devices = Vec::new();
        let mut clocks = Vec::new();
        let fields = state
            .fields
            .iter()
            .map(|(name, f)| {
                ImageFieldRef(
                    name,
                    &f.value,
                    position(&mut clocks, f.hlc),
                    f.base.map(|b| position(&mut clocks, b)),
                    position(&mut devices, f.device),
                )
            })
            .collect();
        let tombstone = state.tombstone.map(|t| {
            ImageTombstone(
                position(&mut devices, t.device),
                position(&mut clocks, t.hlc),
                t.seen.map(|s| position(&mut clocks, s)),
                t.delete,
            )
        });
        let numbers = numbers_of(&clocks, state.fields.values());
        Self {
            devices,
            clocks,
            fields,
            tombstone,
            numbers,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ImageTombstone(u32, u32, Option<u32>, #[serde(default)] Option<(Uuid, u64)>);

impl SharedImage {
    #[cfg(test)]
    pub(crate) fn of(state: &SharedState) -> Self {
        let mut devices: Vec<Uuid> = Vec::new();
        let mut clocks: Vec<Timestamp> = Vec::new();
        let fields = state
            .fields
            .iter()
            .map(|(name, f)| {
                ImageField(
                    name.clone(),
                    f.value.clone(),
                    position(&mut clocks, f.hlc),
                    f.base.map(|b| position(&mut clocks, b)),
                    position(&mut devices, f.device),
                )
            })
            .collect();
        let tombstone = state.tombstone.map(|t| {
            ImageTombstone(
                position(&mut devices, t.device),
                position(&mut clocks, t.hlc),
                t.seen.map(|s| position(&mut clocks, s)),
                t.delete,
            )
        });
        let numbers = numbers_of(&clocks, state.fields.values());
        Self {
            devices,
            clocks,
            fields,
            tombstone,
            numbers,
        }
    }

    pub(crate) fn into_state(self) -> Result<SharedState, String> {
        let SharedImage {
            devices,
            clocks,
            fields: image_fields,
            tombstone,
            numbers,
        } = self;
        let clock = |i: u32| {
            clocks
                .get(i as usize)
                .copied()
                .ok_or_else(|| format!("clock {i} out of range"))
        };
        let device = |i: u32| {
            devices
                .get(i as usize)
                .copied()
                .ok_or_else(|| format!("device {i} out of range"))
        };
        // The decoded names and values move into the state: no copies.
        let mut fields = BTreeMap::new();
        for ImageField(name, value, hlc, base, writer) in image_fields {
            let state = FieldState {
                value,
                hlc: clock(hlc)?,
                base: base.map(clock).transpose()?,
                device: device(writer)?,
                seq: numbers.get(hlc as usize).copied().unwrap_or(0),
            };
            match fields.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(state);
                }
                Entry::Occupied(twice) => {
                    return Err(format!("field `{}` appears twice", twice.key()));
                }
            }
        }
        let tombstone = match tombstone {
            Some(ImageTombstone(d, h, s, delete)) => Some(Tombstone {
                device: device(d)?,
                hlc: clock(h)?,
                seen: s.map(clock).transpose()?,
                delete,
            }),
            None => None,
        };
        if tombstone.is_some() && !fields.is_empty() {
            return Err("a deleted record with fields".into());
        }
        Ok(SharedState { fields, tombstone })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NTP64, clock_id};

    fn ts(t: u64, o: u128) -> Timestamp {
        Timestamp::new(NTP64(t), clock_id(Uuid::from_u128(o)).unwrap())
    }

    #[test]
    fn an_image_round_trips_and_lists_each_clock_once() {
        let mut s = SharedState::default();
        for name in ["a", "b", "c"] {
            s.fields.insert(
                name.into(),
                FieldState {
                    value: WireValue::String(Some(name.into())),
                    hlc: ts(5, 1),
                    base: None,
                    device: Uuid::from_u128(9),
                    seq: 3,
                },
            );
        }
        let image = SharedImage::of(&s);
        assert_eq!(image.clocks.len(), 1);
        assert_eq!(image.devices.len(), 1);
        assert_eq!(image.numbers, vec![3], "the write's number, once");
        let stored = RecordState::Shared(s.clone()).encode().unwrap();
        assert_eq!(stored, rmp_serde::to_vec(&image).unwrap(), "same bytes");
        assert_eq!(image.into_state().unwrap(), s);
    }

    #[test]
    fn a_hostile_image_is_an_error_not_a_panic() {
        let image = SharedImage {
            devices: vec![],
            clocks: vec![],
            fields: vec![ImageField("a".into(), WireValue::I32(Some(1)), 4, None, 0)],
            tombstone: None,
            numbers: vec![],
        };
        assert!(image.into_state().is_err());
    }
}
