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

mod catchup;
mod change;
pub mod clock;
mod collect;
mod conflict;
mod engine;
mod error;
mod membership;
mod merge;
mod model;
mod peers;
mod project;
mod protocol;
mod receive;
mod registry;
mod schema;
mod session;
mod snapshot;
mod state;
mod store;
mod transaction;
mod trust;
mod value;
mod vector;
mod write;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use catchup::{MAX_PULL_LIMIT, PAGE_BYTES};
pub use change::{Change, EncodedChange, FieldChange, Op};
pub use collect::Collected;
pub use conflict::{Conflict, ConflictKind, Write};
pub use engine::{Engine, EngineConfig, Stats, SyncedRow, WAL_RESTART_FRAMES};
pub use error::EngineError;
pub use membership::MAX_MEMBER_RECORDS;
pub use model::{
    CaptureError, FieldMeta, FieldRole, FieldValue, ModelMeta, Ownership, Reference, SyncEntity,
    SyncModel,
};
pub use peers::{PeerStatus, Phase, Status};
pub use protocol::{
    Ack, Batch, DecodeError, ErrorCode, ErrorMessage, Heartbeat, HeldBack, HeldReport, Hello,
    MAX_AHEAD, MAX_LINKS, MAX_MESSAGE_BYTES, MIN_PROTOCOL_VERSION, Members, Message,
    PROTOCOL_VERSION, PullRequest, PullResponse, Push, SnapshotCursor, SnapshotRequest,
    SnapshotResponse, SnapshotRow, VectorSince, decode, encode, vector_digest,
};
pub use receive::{ApplyReport, Outcome, RejectReason, Rejection};
pub use registry::{ModelDescriptor, Registry, RegistryError, dependency_order};
pub use schema::SchemaMismatch;
pub use session::{FULL_HEARTBEAT_EVERY, Output, Session, SessionConfig, SessionState};
pub use snapshot::MAX_SNAPSHOT_LIMIT;
pub use state::SharedImage;
pub use store::{SCHEMA_VERSION, StoreError};
pub use sync_derive::Syncable;
pub use transaction::{Commit, SyncTransaction};
pub use trust::{
    Admission, DeviceKey, Hash, Husk, KeyError, Member, MemberRecord, ProofError, PublicKey,
    Removal, Seal, SealProof, origin_of,
};
pub use value::{ValueError, WireValue};
pub use vector::VersionVector;
