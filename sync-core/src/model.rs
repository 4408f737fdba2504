//! What `#[derive(Syncable)]` generates for a model: its static description
//! ([`ModelMeta`]) and the typed conversions of [`SyncModel`]. Everything
//! that touches the database is the engine's: the derive only says what the
//! columns are and how a value of each travels.

use std::future::Future;

use sea_orm::sea_query::Value;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, ModelTrait, QueryFilter, QueryResult,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::value::{ValueError, WireValue};

/// Who may write a model's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ownership {
    /// Exactly one device, named by the row's owner field, writes the row;
    /// its newest state wins whole.
    DeviceOwned,
    /// Any device writes the row; concurrent writes merge per field by
    /// hybrid logical clock.
    Shared,
}

/// The part a synced field plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldRole {
    /// The row's global id (`#[sync(id)]`).
    Id,
    /// The owning device's id (`#[sync(owner)]`).
    Owner,
    /// A local foreign key that travels as the referenced row's global id.
    Reference {
        /// Wire name of the referenced model.
        target: &'static str,
    },
    /// Any other synced column.
    Data,
}

/// A field that is sent to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldMeta {
    /// The field's wire name (the Rust field name).
    pub name: &'static str,
    /// The SQL column's name.
    pub column: &'static str,
    /// The Rust type as written in the model.
    pub rust_type: &'static str,
    /// Whether the column may be null (for a reference: whether its type is
    /// an `Option`, as the type system sees it, aliases included).
    pub nullable: bool,
    /// What the field is.
    pub role: FieldRole,
}

/// A model's sync semantics, fixed at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelMeta {
    /// The model's wire name (default: its table name).
    pub name: &'static str,
    /// The sea-orm table name.
    pub table: &'static str,
    /// Device-owned or shared.
    pub ownership: Ownership,
    /// Every synced field, the id first, in declaration order after it.
    pub fields: &'static [FieldMeta],
    /// The local primary key's field name: never sent.
    pub local_key: &'static str,
    /// The local primary key's column.
    pub local_key_column: &'static str,
    /// Fields marked `#[sync(skip)]`: never sent, never overwritten by a peer.
    pub local_only: &'static [&'static str],
    /// The columns of the local-only fields, in the same order.
    pub local_only_columns: &'static [&'static str],
}

impl ModelMeta {
    /// The position of the field holding the row's global id.
    pub fn id_index(&self) -> Option<usize> {
        self.fields.iter().position(|f| f.role == FieldRole::Id)
    }

    /// The field holding the row's global id.
    pub fn id_field(&self) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.role == FieldRole::Id)
    }

    /// The position of the field naming the owning device.
    pub fn owner_index(&self) -> Option<usize> {
        self.fields.iter().position(|f| f.role == FieldRole::Owner)
    }

    /// The field naming the owning device (device-owned models only).
    pub fn owner_field(&self) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.role == FieldRole::Owner)
    }

    /// The synced field stored in SQL column `column`.
    pub fn field_of_column(&self, column: &str) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.column == column)
    }

    /// A synced field by wire name.
    pub fn field(&self, name: &str) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// A synced field's position by wire name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The references to other models (and to this one), in field order.
    pub fn references(&self) -> impl Iterator<Item = Reference> + '_ {
        self.fields
            .iter()
            .enumerate()
            .filter_map(|(index, f)| match f.role {
                FieldRole::Reference { target } => Some(Reference {
                    field: f.name,
                    index,
                    target,
                    nullable: f.nullable,
                }),
                _ => None,
            })
    }
}

/// One edge of the models' dependency graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The referencing field.
    pub field: &'static str,
    /// The referencing field's position in [`ModelMeta::fields`].
    pub index: usize,
    /// The referenced model's wire name.
    pub target: &'static str,
    /// Whether the reference may be null (such an edge can break a cycle).
    pub nullable: bool,
}

/// One synced field's value on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The field's wire name.
    pub name: String,
    /// Its value; a reference carries the referenced row's global id.
    pub value: WireValue,
}

impl FieldValue {
    /// A field value.
    pub fn new(name: impl Into<String>, value: WireValue) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
}

/// Reading a model into its wire form failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A column value has no wire form.
    #[error("field `{field}` of `{model}`: {source}")]
    Value {
        /// The model's wire name.
        model: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        source: ValueError,
    },
    /// A foreign key points at a row that does not exist locally.
    #[error(
        "field `{field}` of `{model}` refers to local key {key} of `{target}`, which does not exist"
    )]
    DanglingReference {
        /// The model's wire name.
        model: &'static str,
        /// The referencing field.
        field: &'static str,
        /// The referenced model.
        target: &'static str,
        /// The local key that was not found.
        key: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A sea-orm entity whose model derives `Syncable`.
///
/// `#[sync(references = path::Entity)]` names a type implementing this trait.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a Syncable entity",
    label = "`#[sync(references = ...)]` must name the `Entity` of a model that derives `Syncable`",
    note = "add `#[derive(Syncable)]` to the referenced model, and name its `Entity` type (for example `super::location::Entity`)"
)]
pub trait SyncEntity: EntityTrait<Model = <Self as SyncEntity>::SyncModel> {
    /// The model, which implements [`SyncModel`].
    type SyncModel: SyncModel;
}

/// A sea-orm model with sync semantics, implemented by `#[derive(Syncable)]`.
///
/// Field positions (`index`) are positions in [`ModelMeta::fields`].
pub trait SyncModel:
    ModelTrait<Entity: EntityTrait<Model = Self, ActiveModel: sea_orm::ActiveModelBehavior + Send>>
    + sea_orm::IntoActiveModel<<Self::Entity as EntityTrait>::ActiveModel>
    + sea_orm::FromQueryResult
    + Clone
    + Send
    + Sync
    + Sized
    + 'static
{
    /// The model's wire name (the same as `META.name`; a separate constant so
    /// that models referencing each other do not make their metadata
    /// constants depend on each other).
    const NAME: &'static str;

    /// The model's sync semantics.
    const META: ModelMeta;

    /// The row's global id.
    fn sync_id(&self) -> Uuid;

    /// The owning device, for device-owned models.
    fn owner(&self) -> Option<Uuid>;

    /// The local primary key.
    fn local_key(&self) -> i64;

    /// Positions of the synced fields whose values differ between `old` and
    /// `new` (local-only fields and the local key never count).
    fn changed_fields(old: &Self, new: &Self) -> Vec<usize>;

    /// Every synced field in wire form, in field order. A reference is its
    /// local key, as `WireValue::I64` (null when unset): the engine turns
    /// local keys into global ids for a whole transaction at once.
    fn wire(&self) -> Result<Vec<WireValue>, CaptureError>;

    /// Checks a wire value against data field `index`'s type and converts it
    /// into the value sea-orm binds for that column.
    fn to_sql(index: usize, value: &WireValue) -> Result<Value, ValueError>;

    /// Reads synced field `index` from a query row whose column `alias`
    /// holds it, in wire form (a reference as its local key, `I64`).
    fn read_field(index: usize, row: &QueryResult, alias: &str) -> Result<WireValue, DbErr>;

    /// The values of the local-only columns for a row created by a peer
    /// (`Default::default()` of each), in [`ModelMeta::local_only`] order.
    fn local_defaults() -> Vec<Value>;

    /// Whether column `index` of the synced fields is declared nullable in
    /// the model (what sea-orm creates the column with).
    fn column_nullable(index: usize) -> bool;

    /// The row with this global id.
    fn find_by_id<C: ConnectionTrait>(
        db: &C,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self>, DbErr>> + Send {
        let column = Self::META.id_field().map(|f| f.column).unwrap_or_default();
        let column = <<Self::Entity as EntityTrait>::Column as std::str::FromStr>::from_str(column)
            .map_err(|_| DbErr::Custom(format!("`{}` has no id column", Self::NAME)));
        async move {
            let column = column?;
            <Self::Entity as EntityTrait>::find()
                .filter(column.eq(id))
                .one(db)
                .await
        }
    }
}
