//! The engine's errors.

use std::time::Duration;

use uuid::Uuid;

use crate::clock::ClockError;
use crate::model::CaptureError;
use crate::registry::RegistryError;
use crate::schema::SchemaMismatch;
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
    /// The application's tables do not match its models.
    #[error("the database does not match the synced models:\n{}", list(.0))]
    Schema(Vec<SchemaMismatch>),
    /// The clock refused.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// Reading a row into its wire form failed.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The database belongs to another device.
    #[error("this database belongs to device {stored}, not {configured}")]
    WrongDevice {
        /// The device recorded in the database.
        stored: Uuid,
        /// The device the engine was opened as.
        configured: Uuid,
    },
    /// A membership operation that cannot be done (pairing a removed
    /// device, removing this one).
    #[error("membership: {0}")]
    Membership(String),
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
    /// The engine's writer stayed taken (by another write, or by an open
    /// `SyncTransaction`, perhaps of this very task) for the whole timeout.
    #[error(
        "the engine's writer was busy for {waited:?}: a write (or an open SyncTransaction) holds it; \
         commit or drop it first"
    )]
    Busy {
        /// How long the write waited.
        waited: Duration,
    },
    /// A message from a peer (or a cursor it echoed) does not decode.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The projection of received states onto the tables did not settle.
    #[error("the tables could not be brought in line with the received states: {0}")]
    Unsettled(String),
    /// A fault injected by a test.
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

fn list(problems: &[SchemaMismatch]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
