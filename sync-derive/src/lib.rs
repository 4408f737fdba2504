//! `#[derive(Syncable)]`: the sync semantics of a sea-orm model, fixed at
//! compile time.
//!
//! Put the derive on a sea-orm `Model` beside `DeriveEntityModel`. It
//! generates the model's metadata, how a row is captured into its wire form
//! and diffed against an older version, how a wire record is applied back
//! (an upsert, foreign keys mapped to local keys), delete by global id, and a
//! static registration: the engine knows the model without any call written
//! by the application. Misuse is a compile error at the offending token.
//!
//! ```
//! mod tag {
//!     use sea_orm::entity::prelude::*;
//!     use sync_core::Syncable;
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
//!         pub color: Option<String>,
//!     }
//!
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     impl ActiveModelBehavior for ActiveModel {}
//! }
//!
//! use sync_core::SyncModel;
//! assert_eq!(tag::Model::META.name, "tags");
//! ```
//!
//! # Attributes on the struct
//!
//! | attribute | meaning |
//! | --- | --- |
//! | `#[sync(shared)]` | any device may write a row; concurrent writes merge per field, the write with the higher hybrid logical clock winning each field |
//! | `#[sync(device_owned)]` | only the device named by the row's `#[sync(owner)]` field writes it; its newest state wins whole, and a change from any other device is rejected |
//! | `#[sync(name = "...")]` | the model's name on the wire; default: the sea-orm `table_name`. Keep it stable: it is how peers recognise the model |
//!
//! Exactly one of `shared` and `device_owned` is required.
//!
//! # Attributes on fields
//!
//! | attribute | meaning |
//! | --- | --- |
//! | `#[sync(id)]` | the row's global id, a `uuid::Uuid`; exactly one per model, never the primary key |
//! | `#[sync(owner)]` | the owning device's id, a `uuid::Uuid`; required on device-owned models, refused on shared ones |
//! | `#[sync(references = path::to::Entity)]` | a local integer foreign key (or `Option` of one) to another Syncable model; it travels as the referenced row's global id and is mapped back to the local key on apply. An `Option` reference may break a reference cycle |
//! | `#[sync(skip)]` | a local-only column: never sent, never overwritten by a peer; rows created by a peer get `Default::default()` |
//!
//! The `#[sea_orm(primary_key)]` field must be a single integer column: it is
//! the local key and never leaves the device. `#[sea_orm(ignore)]` fields are
//! not columns and are not synced.
//!
//! A device-owned model with a reference:
//!
//! ```
//! # mod volume {
//! #     use sea_orm::entity::prelude::*;
//! #     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, sync_core::Syncable)]
//! #     #[sea_orm(table_name = "volumes")]
//! #     #[sync(device_owned)]
//! #     pub struct Model {
//! #         #[sea_orm(primary_key)]
//! #         pub id: i32,
//! #         #[sync(id)]
//! #         pub gid: Uuid,
//! #         #[sync(owner)]
//! #         pub device: Uuid,
//! #     }
//! #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//! #     pub enum Relation {}
//! #     impl ActiveModelBehavior for ActiveModel {}
//! # }
//! mod location {
//!     use sea_orm::entity::prelude::*;
//!
//!     #[derive(Clone, Debug, PartialEq, DeriveEntityModel, sync_core::Syncable)]
//!     #[sea_orm(table_name = "locations")]
//!     #[sync(device_owned)]
//!     pub struct Model {
//!         #[sea_orm(primary_key)]
//!         pub id: i32,
//!         #[sync(id)]
//!         pub gid: Uuid,
//!         #[sync(owner)]
//!         pub device: Uuid,
//!         /// Sent as the volume's global id.
//!         #[sync(references = super::volume::Entity)]
//!         pub volume_id: Option<i32>,
//!         pub path: String,
//!         /// Where the local scanner is: this device's business only.
//!         #[sync(skip)]
//!         pub scan_state: String,
//!     }
//!
//!     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
//!     pub enum Relation {}
//!
//!     impl ActiveModelBehavior for ActiveModel {}
//! }
//! # fn main() {}
//! ```
//!
//! # Field types
//!
//! Every type sea-orm maps to a column value syncs exactly: all integer
//! widths, `f32`/`f64` (bit for bit), `bool`, `char`, `String`, `Vec<u8>`,
//! `Uuid`, chrono dates, times and date-times, `serde_json::Value`, enums
//! with `DeriveActiveEnum`, and `Option` of each.

mod ast;
mod attr;
mod ctxt;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `sync_core::SyncModel` for a sea-orm `Model` and
/// `sync_core::SyncEntity` for its `Entity`, and registers the model with the
/// engine. See the crate documentation for the attributes.
#[proc_macro_derive(Syncable, attributes(sync))]
pub fn derive_syncable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match derive(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            let mut tokens = err.to_compile_error();
            tokens.extend(expand::fallback(&input));
            tokens.into()
        }
    }
}

fn derive(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let cx = ctxt::Ctxt::new();
    let model = ast::Container::from_ast(&cx, input)
        .and_then(|container| valid::check(&cx, &container).map(|m| expand::expand(&m)));
    cx.check()?;
    model.ok_or_else(|| syn::Error::new_spanned(&input.ident, "invalid Syncable model"))
}
