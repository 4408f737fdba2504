//! The conflict log: every write that lost, to what, when, from where.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Timestamp;
use crate::value::WireValue;

/// Why a write did not (fully) take effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConflictKind {
    /// A field's value here was overwritten by a concurrent write with a
    /// higher clock. The loser is the value that was here.
    Overwritten,
    /// An incoming write to a field lost to a concurrent write already here
    /// with a higher clock. The loser is the incoming value.
    Outdated,
    /// A write to a record that has been deleted; deletes win.
    Deleted,
    /// A write to a record whose non-nullable reference points at a deleted
    /// record; the record is deleted with its parent.
    ParentDeleted,
    /// A change to a device-owned record from a device that does not own it.
    NotOwner,
    /// Two records collided on a unique column; the loser is shown renamed
    /// (text columns) or not at all until the collision ends. The winner's
    /// value names the record that kept the value.
    Unique,
    /// The application's database refused a record's state (a constraint of
    /// its own, say): the state is kept and synced, but not shown here.
    Refused,
}

impl ConflictKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictKind::Overwritten => "overwritten",
            ConflictKind::Outdated => "outdated",
            ConflictKind::Deleted => "deleted",
            ConflictKind::ParentDeleted => "parent_deleted",
            ConflictKind::NotOwner => "not_owner",
            ConflictKind::Unique => "unique",
            ConflictKind::Refused => "refused",
        }
    }

    /// The kind with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "overwritten" => ConflictKind::Overwritten,
            "outdated" => ConflictKind::Outdated,
            "deleted" => ConflictKind::Deleted,
            "parent_deleted" => ConflictKind::ParentDeleted,
            "not_owner" => ConflictKind::NotOwner,
            "unique" => ConflictKind::Unique,
            "refused" => ConflictKind::Refused,
            _ => return None,
        })
    }
}

/// One side of a conflict: a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    /// The device that made it.
    pub device: Uuid,
    /// Its clock.
    pub hlc: Timestamp,
    /// The value written to the field (`None` for whole-record conflicts).
    pub value: Option<WireValue>,
}

/// A write that lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// Position in the log (increasing).
    pub id: i64,
    /// What happened.
    pub kind: ConflictKind,
    /// The model's wire name.
    pub model: String,
    /// The record.
    pub record: Uuid,
    /// The field, for field conflicts.
    pub field: Option<String>,
    /// The write that lost.
    pub loser: Write,
    /// What it lost to, when that is a write.
    pub winner: Option<Write>,
}
