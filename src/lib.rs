//! Syncable: sea-orm models that sync between a user's devices, peer to
//! peer, with no server and no leader.
//!
//! An application annotates its models with `#[derive(Syncable)]` and depends
//! on this crate only. It re-exports the three parts of the framework:
//!
//! - [`derive`](mod@derive): the `#[derive(Syncable)]` macro (see its docs for every
//!   `#[sync(...)]` attribute);
//! - [`core`]: the engine (clock, change log, capture, merge, apply, the
//!   sans-IO protocol);
//! - [`net`]: the QUIC transport.
//!
//! ```
//! mod tag {
//!     use syncable::prelude::*;
//!
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
//!     #[sea_orm(table_name = "tags")]
//!     #[sync(shared)]
//!     pub struct Model {
//!         #[sea_orm(primary_key)]
//!         pub id: i32,
//!         #[sea_orm(unique)]
//!         #[sync(id)]
//!         pub gid: Uuid,
//!         pub name: String,
//!     }
//!
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     impl ActiveModelBehavior for ActiveModel {}
//! }
//!
//! let registry = syncable::core::Registry::global().unwrap();
//! assert_eq!(registry.models()[0].name(), "tags");
//! ```

pub use sync_core as core;
pub use sync_derive as derive;
pub use sync_derive::Syncable;
pub use sync_net as net;

/// What a module defining Syncable models needs: sea-orm's entity prelude,
/// the derive, and the model traits.
pub mod prelude {
    pub use sea_orm::entity::prelude::*;
    pub use sync_core::{SyncEntity, SyncModel};
    pub use sync_derive::Syncable;
}
