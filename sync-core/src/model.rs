//! What `#[derive(Syncable)]` generates for a model: its static description
//! ([`ModelMeta`]) and the typed operations of [`SyncModel`].

use std::future::Future;

use sea_orm::{ConnectionTrait, DbErr, EntityTrait};
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
    /// Whether the field is an `Option`.
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
    /// The local primary key: never sent.
    pub local_key: &'static str,
    /// Fields marked `#[sync(skip)]`: never sent, never overwritten by a peer.
    pub local_only: &'static [&'static str],
}

impl ModelMeta {
    /// The field holding the row's global id.
    pub fn id_field(&self) -> Option<&'static FieldMeta> {
        self.fields.iter().find(|f| f.role == FieldRole::Id)
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

    /// The references to other models (and to this one), in field order.
    pub fn references(&self) -> impl Iterator<Item = Reference> + '_ {
        self.fields.iter().filter_map(|f| match f.role {
            FieldRole::Reference { target } => Some(Reference {
                field: f.name,
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

/// What to do with a nullable reference whose parent is not in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingParent {
    /// Refuse the whole write with [`ApplyError::MissingParent`].
    #[default]
    Refuse,
    /// Write null into the nullable reference, apply the rest, and report the
    /// reference in [`Applied::deferred`] so the caller can set it when the
    /// parent arrives. Non-nullable references are still refused.
    DeferNullable,
}

/// A reference left null by [`MissingParent::DeferNullable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredReference {
    /// The referencing field.
    pub field: &'static str,
    /// The referenced model's wire name.
    pub target: &'static str,
    /// The global id that is not in the database yet.
    pub parent: Uuid,
}

/// The result of applying a record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// Whether the row was created (rather than updated).
    pub inserted: bool,
    /// References written as null because their parent is missing.
    pub deferred: Vec<DeferredReference>,
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

/// Writing a wire record into the database failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A referenced row has not arrived yet. The caller parks the change
    /// under `parent` and applies it once the parent lands.
    #[error("`{model}` {id}: field `{field}` refers to `{target}` {parent}, which has not arrived")]
    MissingParent {
        /// The model's wire name.
        model: &'static str,
        /// The row being applied.
        id: Uuid,
        /// The referencing field.
        field: &'static str,
        /// The referenced model.
        target: &'static str,
        /// The missing parent's global id.
        parent: Uuid,
    },
    /// The record names a field the model does not sync.
    #[error("`{model}` has no synced field `{field}`")]
    UnknownField {
        /// The model's wire name.
        model: &'static str,
        /// The unknown field name.
        field: String,
    },
    /// The record names a field twice.
    #[error("`{model}`: field `{field}` appears twice in one record")]
    DuplicateField {
        /// The model's wire name.
        model: &'static str,
        /// The repeated field.
        field: String,
    },
    /// A field value does not fit its column.
    #[error("`{model}` field `{field}`: {source}")]
    Value {
        /// The model's wire name.
        model: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        source: ValueError,
    },
    /// The row does not exist and the record does not carry every field
    /// needed to create it.
    #[error("`{model}` {id} does not exist and the record lacks field `{field}` to create it")]
    Incomplete {
        /// The model's wire name.
        model: &'static str,
        /// The row.
        id: Uuid,
        /// The first missing field.
        field: &'static str,
    },
    /// The record's id field disagrees with the id it is applied under.
    #[error("`{model}`: record for {id} carries a different id")]
    IdMismatch {
        /// The model's wire name.
        model: &'static str,
        /// The id the record was applied under.
        id: Uuid,
    },
    /// The write would give two rows the same value in a unique column
    /// (or set of columns).
    #[error(
        "`{model}` {id}: another row ({holder:?}) holds the same value in unique column(s) {columns:?}"
    )]
    Unique {
        /// The model's wire name.
        model: &'static str,
        /// The row being written.
        id: Uuid,
        /// The unique columns.
        columns: Vec<String>,
        /// The global id of the row holding the value, if it could be found.
        holder: Option<Uuid>,
    },
    /// The database refused the write.
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

    /// The local key of the row with this global id, if it exists.
    fn local_key_of<C: ConnectionTrait>(
        db: &C,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<i64>, DbErr>> + Send;

    /// The global id of the row with this local key, if it exists.
    fn global_id_of<C: ConnectionTrait>(
        db: &C,
        key: i64,
    ) -> impl Future<Output = Result<Option<Uuid>, DbErr>> + Send;
}

/// A sea-orm model with sync semantics, implemented by `#[derive(Syncable)]`.
pub trait SyncModel: Clone + Send + Sync + Sized + 'static {
    /// The model's sea-orm entity.
    type Entity: SyncEntity<SyncModel = Self>;

    /// The model's sea-orm active model.
    type ActiveModel: sea_orm::ActiveModelTrait<Entity = Self::Entity>
        + sea_orm::ActiveModelBehavior
        + From<Self>
        + Send
        + Sync;

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

    /// Wire names of the synced fields whose values differ between `old` and
    /// `new` (local-only fields and the local key never count).
    fn changed_fields(old: &Self, new: &Self) -> Vec<&'static str>;

    /// Every synced field in wire form, references as global ids.
    fn capture<C: ConnectionTrait>(
        &self,
        db: &C,
    ) -> impl Future<Output = Result<Vec<FieldValue>, CaptureError>> + Send;

    /// Only the fields named, in wire form.
    fn capture_fields<C: ConnectionTrait>(
        &self,
        db: &C,
        fields: &[&str],
    ) -> impl Future<Output = Result<Vec<FieldValue>, CaptureError>> + Send;

    /// Exactly the fields that changed from `old` to `new`, with their new
    /// values.
    fn diff<C: ConnectionTrait>(
        old: &Self,
        new: &Self,
        db: &C,
    ) -> impl Future<Output = Result<Vec<FieldValue>, CaptureError>> + Send {
        let changed = Self::changed_fields(old, new);
        async move {
            if changed.is_empty() {
                return Ok(Vec::new());
            }
            new.capture_fields(db, &changed).await
        }
    }

    /// Upserts a row from wire fields: updates the named fields of the row
    /// with this id, or creates it when every synced field is given.
    fn apply<C: ConnectionTrait>(
        db: &C,
        id: Uuid,
        fields: &[FieldValue],
        missing_parent: MissingParent,
    ) -> impl Future<Output = Result<Applied, ApplyError>> + Send;

    /// Deletes the row with this global id; `true` if one was deleted.
    fn delete_by_id<C: ConnectionTrait>(
        db: &C,
        id: Uuid,
    ) -> impl Future<Output = Result<bool, DbErr>> + Send;

    /// Global ids of the rows whose reference `field` holds local key `key`.
    fn rows_referencing<C: ConnectionTrait>(
        db: &C,
        field: &str,
        key: i64,
    ) -> impl Future<Output = Result<Vec<Uuid>, DbErr>> + Send;

    /// Sets the nullable reference `field` to null in every row where it
    /// holds local key `key`; the number of rows changed. A non-nullable
    /// or unknown field changes nothing.
    fn clear_references<C: ConnectionTrait>(
        db: &C,
        field: &str,
        key: i64,
    ) -> impl Future<Output = Result<u64, DbErr>> + Send;

    /// Up to `limit` rows whose local key is above `after`, by local key:
    /// a page of a scan of the whole table.
    fn page<C: ConnectionTrait>(
        db: &C,
        after: i64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Self>, DbErr>> + Send;

    /// The row with this global id.
    fn find_by_id<C: ConnectionTrait>(
        db: &C,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Self>, DbErr>> + Send;
}
