//! The Syncable engine: clock, change log, capture, merge and apply, in the
//! application's own SQLite database. It never touches a socket.
//!
//! An application opens one [`Engine`] per device over its database, writes
//! synced models through [`Engine::begin`], and hands the changes it
//! receives from peers to [`Engine::apply`].
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

extern crate self as sync_core;

mod apply;
mod catchup;
mod change;
pub mod clock;
mod conflict;
mod engine;
mod error;
mod model;
mod peers;
mod protocol;
mod registry;
mod session;
mod snapshot;
mod store;
mod transaction;
mod value;
mod vector;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use apply::{ApplyReport, RejectReason, Rejection};
pub use catchup::{Claim, MAX_PULL_LIMIT, PAGE_BYTES};
pub use change::{Change, FieldChange, FieldImage, Op};
pub use conflict::{Conflict, ConflictKind, Write};
pub use engine::{Engine, EngineConfig, Faults, Stats, SyncedRow};
pub use error::EngineError;
pub use model::{
    Applied, ApplyError, CaptureError, DeferredReference, FieldMeta, FieldRole, FieldValue,
    MissingParent, ModelMeta, Ownership, Reference, SyncEntity, SyncModel,
};
pub use peers::{PeerStatus, Phase, Status};
pub use protocol::{
    Ack, Batch, DecodeError, ErrorCode, ErrorMessage, Heartbeat, Hello, MAX_MESSAGE_BYTES,
    MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, PullRequest, PullResponse, Push,
    SnapshotCursor, SnapshotRequest, SnapshotResponse, decode, encode,
};
pub use registry::{
    BoxFuture, ModelDescriptor, Registry, RegistryError, RowPage, dependency_order,
};
pub use session::{Output, Session, SessionConfig, SessionState, push_of};
pub use snapshot::MAX_SNAPSHOT_LIMIT;
pub use store::{SCHEMA_VERSION, StoreError};
pub use sync_derive::Syncable;
pub use transaction::SyncTransaction;
pub use value::{ValueError, WireValue};
pub use vector::VersionVector;
