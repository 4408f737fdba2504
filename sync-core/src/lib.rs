//! The Syncable engine.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

extern crate self as sync_core;

mod model;
mod registry;
mod value;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use model::{
    Applied, ApplyError, CaptureError, DeferredReference, FieldMeta, FieldRole, FieldValue,
    MissingParent, ModelMeta, Ownership, Reference, SyncEntity, SyncModel,
};
pub use registry::{BoxFuture, ModelDescriptor, Registry, RegistryError, dependency_order};
pub use sync_derive::Syncable;
pub use value::{ValueError, WireValue};
