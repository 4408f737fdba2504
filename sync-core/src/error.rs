//! The engine's errors.

use uuid::Uuid;

use crate::clock::ClockError;
use crate::model::{ApplyError, CaptureError};
use crate::registry::RegistryError;
use crate::store::StoreError;

/// An engine operation failed. Nothing it was doing was committed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sea_orm::DbErr),
    /// The registered models are not a valid set.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The clock refused.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// Reading a row into its wire form failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Writing a record failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The database belongs to another device.
    #[error("this database belongs to device {stored}, not {configured}")]
    WrongDevice {
        /// The device recorded in the database.
        stored: Uuid,
        /// The device the engine was opened as.
        configured: Uuid,
    },
    /// The model is not registered with this engine.
    #[error("model `{0}` is not registered with this engine")]
    UnknownModel(String),
    /// A write to a device-owned row this device does not own.
    #[error("`{model}` {record} is owned by device {owner}; only its owner may write it")]
    NotOwner {
        /// The model.
        model: &'static str,
        /// The record.
        record: Uuid,
        /// Its owner.
        owner: Uuid,
    },
    /// A device-owned row's owner cannot change.
    #[error("`{model}` {record}: the owner of a device-owned row cannot change")]
    OwnerChanged {
        /// The model.
        model: &'static str,
        /// The record.
        record: Uuid,
    },
    /// A write to a record that was deleted: deleted records never return.
    #[error("`{model}` {record} was deleted; a deleted record cannot be written again")]
    Deleted {
        /// The model.
        model: &'static str,
        /// The record.
        record: Uuid,
    },
    /// An update of a record that does not exist.
    #[error("`{model}` {record} does not exist")]
    NotFound {
        /// The model.
        model: &'static str,
        /// The record.
        record: Uuid,
    },
    /// An earlier write in this transaction failed, so it can only be
    /// rolled back.
    #[error("an earlier write in this transaction failed; it cannot be committed")]
    Poisoned,
    /// A message from a peer (or a cursor it echoed) does not decode.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A fault injected by a test (see `Faults`).
    #[error("injected fault: {0}")]
    Injected(&'static str),
}
