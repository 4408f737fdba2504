//! The unit that travels between devices: one write to one record.
//!
//! A change is named by `(origin, seq)`: `origin` is the incarnation of the
//! writing device that numbered it (a new one each time the device's engine
//! opens), `seq` its number among that origin's changes (1, 2, 3, ...).
//! Stored and relayed changes keep the bytes their origin encoded
//! ([`EncodedChange`]): what a device serves is exactly what it received.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Timestamp;
use crate::value::WireValue;

/// One write to one record, numbered by its origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The device that made the write.
    pub device: Uuid,
    /// The incarnation of that device that numbered it.
    pub origin: Uuid,
    /// The write's number among its origin's changes: 1, 2, 3, ...
    pub seq: u64,
    /// When it was written, by the origin's hybrid logical clock (whose id
    /// is the origin).
    pub hlc: Timestamp,
    /// The model's wire name.
    pub model: String,
    /// The record's global id.
    pub id: Uuid,
    /// What was written.
    pub op: Op,
    /// For an upsert: a write whose state this one replaces on its writer,
    /// as `(origin, number)`: for a device-owned record the change it
    /// replaces, for a shared one the oldest numbered write among the
    /// record's fields there; `None` when the writer held no state of the
    /// record (a creation). A receiver that took that write and holds no
    /// state of the record now took a delete of it since, and collected
    /// its tombstone: the write loses to that delete, as it does wherever
    /// the delete is still held (its writer went back past the delete: a
    /// power loss, a restored backup). Encoded only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<(Uuid, u64)>,
}

/// What a change does to its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Creates or updates the record. For a shared model, the fields the
    /// write changed (all of them on creation); for a device-owned model,
    /// the record's whole state.
    Upsert(Vec<FieldChange>),
    /// Deletes the record, for good.
    Delete {
        /// The newest field clock the deleting device held for the record:
        /// a write above it was concurrent with the delete, and lost to it.
        seen: Option<Timestamp>,
    },
}

/// One field of an upsert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field's wire name.
    pub name: String,
    /// The new value (a reference carries the referenced row's global id).
    pub value: WireValue,
    /// For shared models: the version of the field the writer overwrote
    /// (`None` when it created the field).
    pub base: Option<Timestamp>,
}

impl Change {
    /// Whether this change deletes its record.
    pub fn is_delete(&self) -> bool {
        matches!(self.op, Op::Delete { .. })
    }

    /// Encodes the change for storage or the wire.
    pub fn encode(&self) -> Result<EncodedChange, rmp_serde::encode::Error> {
        rmp_serde::to_vec(self).map(EncodedChange)
    }

    /// Decodes a change from storage or the wire. Never panics; allocates no
    /// more than the input's size allows.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    /// The value of a field of an upsert.
    pub fn field(&self, name: &str) -> Option<&WireValue> {
        match &self.op {
            Op::Upsert(fields) => fields.iter().find(|f| f.name == name).map(|f| &f.value),
            Op::Delete { .. } => None,
        }
    }
}

/// A change as its origin encoded it: stored, served and relayed as these
/// bytes, decoded by each receiver.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedChange(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl EncodedChange {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Their length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes the change.
    pub fn decode(&self) -> Result<Change, rmp_serde::decode::Error> {
        Change::decode(&self.0)
    }
}

impl std::fmt::Debug for EncodedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedChange({} bytes)", self.0.len())
    }
}
