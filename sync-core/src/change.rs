//! The unit that travels between devices: one write to one record.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Timestamp;
use crate::model::FieldValue;
use crate::value::WireValue;

/// One write to one record, numbered by its origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The device that made the write.
    pub origin: Uuid,
    /// The write's number among its origin's changes: 1, 2, 3, ...
    pub seq: u64,
    /// When it was written, by the origin's hybrid logical clock.
    pub hlc: Timestamp,
    /// The model's wire name.
    pub model: String,
    /// The record's global id.
    pub id: Uuid,
    /// What was written.
    pub op: Op,
}

/// What a change does to its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Creates or updates the record. For a shared model, the fields the
    /// write changed (all of them on creation); for a device-owned model,
    /// the record's whole state.
    Upsert(Vec<FieldChange>),
    /// Deletes the record, for good.
    Delete,
    /// A shared record's whole state, each field with its own clock: how a
    /// snapshot sends a shared row. Merged field by field like any write.
    Image(Vec<FieldImage>),
}

/// One field of a shared record's state, with its clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldImage {
    /// The field's wire name.
    pub name: String,
    /// Its value.
    pub value: WireValue,
    /// The write that set it.
    pub hlc: Timestamp,
    /// The version that write replaced.
    pub base: Option<Timestamp>,
}

/// One field of an upsert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field's wire name.
    pub name: String,
    /// The new value.
    pub value: WireValue,
    /// For shared models: the version of the field the writer overwrote
    /// (`None` when it created the field). A receiver whose field is at a
    /// different version knows the two writes were concurrent.
    pub base: Option<Timestamp>,
}

impl FieldChange {
    /// Fields as written when they replace nothing a peer must know of: a
    /// creation, or a device-owned record's whole state.
    pub fn unversioned(fields: Vec<FieldValue>) -> Vec<FieldChange> {
        fields
            .into_iter()
            .map(|f| FieldChange {
                name: f.name,
                value: f.value,
                base: None,
            })
            .collect()
    }

    /// The field as a plain field value, for applying.
    pub fn to_field_value(&self) -> FieldValue {
        FieldValue::new(self.name.clone(), self.value.clone())
    }
}

impl Change {
    /// Whether this change deletes its record.
    pub fn is_delete(&self) -> bool {
        matches!(self.op, Op::Delete)
    }

    /// Encodes the change for storage or the wire.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec(self)
    }

    /// Decodes a change from storage or the wire.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}
