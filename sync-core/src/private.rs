//! Support for the code `#[derive(Syncable)]` generates. Not a public API:
//! names here may change in any release.

pub use core::future::Future;
pub use core::option::Option;
pub use core::result::Result;
pub use inventory;
pub use sea_orm;
pub use uuid::Uuid;

pub use crate::model::{
    Applied, ApplyError, CaptureError, DeferredReference, FieldMeta, FieldRole, FieldValue,
    MissingParent, ModelMeta, Ownership, SyncEntity, SyncModel,
};
pub use crate::registry::ModelDescriptor;
pub use crate::value::{ValueError, WireValue};

use sea_orm::sea_query::{Value, ValueType};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

/// The type of a `#[sync(id)]` field.
#[diagnostic::on_unimplemented(
    message = "the `#[sync(id)]` field must be a `uuid::Uuid`, not `{Self}`",
    label = "the global id must be a `Uuid`",
    note = "a row's global id names it on every device; keep the local integer key as the \
            `#[sea_orm(primary_key)]` and add a `Uuid` column for `#[sync(id)]`"
)]
pub trait GlobalIdType {
    /// The id as a `Uuid`.
    fn to_uuid(&self) -> Uuid;
    /// The field value for a `Uuid`.
    fn from_uuid(id: Uuid) -> Self;
}

impl GlobalIdType for Uuid {
    fn to_uuid(&self) -> Uuid {
        *self
    }
    fn from_uuid(id: Uuid) -> Self {
        id
    }
}

/// The type of a `#[sync(owner)]` field.
#[diagnostic::on_unimplemented(
    message = "the `#[sync(owner)]` field must be a `uuid::Uuid`, not `{Self}`",
    label = "the owner is a device id, a `Uuid`",
    note = "store the owning device's global id in a non-null `Uuid` column"
)]
pub trait OwnerIdType {
    /// The owning device's id.
    fn to_uuid(&self) -> Uuid;
}

impl OwnerIdType for Uuid {
    fn to_uuid(&self) -> Uuid {
        *self
    }
}

/// The type of the local primary key.
#[diagnostic::on_unimplemented(
    message = "a Syncable model's `#[sea_orm(primary_key)]` must be an integer, not `{Self}`",
    label = "the local key must be an integer",
    note = "the local key never leaves the device; the `#[sync(id)]` `Uuid` names the row between \
            devices"
)]
pub trait PrimaryKeyType {
    /// The key as an `i64`.
    fn to_key(&self) -> i64;
    /// The key from an `i64`, `None` if it does not fit.
    fn from_key(key: i64) -> Option<Self>
    where
        Self: Sized;
}

/// The type of a `#[sync(references = ...)]` field: an integer local key,
/// optional when the reference may be null.
#[diagnostic::on_unimplemented(
    message = "`#[sync(references = ...)]` needs an integer foreign key field, not `{Self}`",
    label = "`references` marks a local integer foreign key",
    note = "the field must hold the referenced row's local primary key (an integer, or `Option` of \
            one); it travels as that row's global id"
)]
pub trait ForeignKeyType: Sized {
    /// Whether the reference may be null.
    const NULLABLE: bool;
    /// The referenced local key, `None` for null.
    fn to_key(&self) -> Option<i64>;
    /// The field value for a local key (`None`: null), `None` if it does not
    /// fit the type.
    fn from_key(key: Option<i64>) -> Option<Self>;
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl PrimaryKeyType for $t {

            fn to_key(&self) -> i64 {
                <i64 as core::convert::TryFrom<_>>::try_from(*self).unwrap_or(i64::MAX)
            }
            fn from_key(key: i64) -> Option<Self> {
                <$t as core::convert::TryFrom<i64>>::try_from(key).ok()
            }
        }
        impl ForeignKeyType for $t {
            const NULLABLE: bool = false;
            fn to_key(&self) -> Option<i64> {
                <i64 as core::convert::TryFrom<_>>::try_from(*self).ok()
            }
            fn from_key(key: Option<i64>) -> Option<Self> {
                <$t as core::convert::TryFrom<i64>>::try_from(key?).ok()
            }
        }
        impl ForeignKeyType for Option<$t> {
            const NULLABLE: bool = true;
            fn to_key(&self) -> Option<i64> {
                self.and_then(|k| <i64 as core::convert::TryFrom<_>>::try_from(k).ok())
            }
            fn from_key(key: Option<i64>) -> Option<Self> {
                match key {
                    None => Some(None),
                    Some(k) => <$t as core::convert::TryFrom<i64>>::try_from(k).ok().map(Some),
                }
            }
        }
    )*};
}

integer_keys!(i8, i16, i32, i64, u8, u16, u32, u64);

/// The key type inside a nullable foreign key, to build its typed null.
pub trait NullableKey {
    /// The integer inside the `Option`.
    type Inner;
}

impl<T> NullableKey for Option<T> {
    type Inner = T;
}

/// Whether a field changed. Floats compare by value, as sea-orm does.
pub fn field_eq<T: PartialEq>(old: &T, new: &T) -> bool {
    old == new
}

/// A field's wire form.
pub fn encode_field<T: Into<Value> + Clone>(
    value: &T,
    model: &'static str,
    field: &'static str,
) -> Result<WireValue, CaptureError> {
    WireValue::encode(value.clone()).map_err(|source| CaptureError::Value {
        model,
        field,
        source,
    })
}

/// A field's value from its wire form.
pub fn decode_field<T: ValueType>(
    value: &WireValue,
    model: &'static str,
    field: &'static str,
) -> Result<T, ApplyError> {
    value
        .clone()
        .decode::<T>()
        .map_err(|source| ApplyError::Value {
            model,
            field,
            source,
        })
}

/// A local foreign key as the referenced row's global id.
pub async fn capture_reference<E: SyncEntity, K: ForeignKeyType, C: ConnectionTrait>(
    db: &C,
    key: &K,
    model: &'static str,
    field: &'static str,
) -> Result<WireValue, CaptureError> {
    let Some(key) = key.to_key() else {
        return Ok(WireValue::Uuid(None));
    };
    match E::global_id_of(db, key).await? {
        Some(id) => Ok(WireValue::Uuid(Some(id))),
        None => Err(CaptureError::DanglingReference {
            model,
            field,
            target: <E::SyncModel as SyncModel>::NAME,
            key,
        }),
    }
}

/// Where a reference is resolved, for error reports.
pub struct ReferenceSite {
    /// The referencing model.
    pub model: &'static str,
    /// The row being applied.
    pub id: Uuid,
    /// The referencing field.
    pub field: &'static str,
}

/// A global id from the wire as the local key of the referenced row.
pub async fn resolve_reference<E: SyncEntity, K: ForeignKeyType, C: ConnectionTrait>(
    db: &C,
    value: &WireValue,
    site: ReferenceSite,
    missing_parent: MissingParent,
    deferred: &mut Vec<DeferredReference>,
) -> Result<K, ApplyError> {
    let target = <E::SyncModel as SyncModel>::NAME;
    let mismatch = |found: &'static str| ApplyError::Value {
        model: site.model,
        field: site.field,
        source: ValueError::TypeMismatch {
            expected: if K::NULLABLE {
                "Option<Uuid> (reference)".into()
            } else {
                "Uuid (reference)".into()
            },
            found,
        },
    };
    let parent = match value {
        WireValue::Uuid(Some(parent)) => *parent,
        WireValue::Uuid(None) => return K::from_key(None).ok_or_else(|| mismatch("null")),
        other => return Err(mismatch(other.kind())),
    };
    match E::local_key_of(db, parent).await? {
        Some(key) => K::from_key(Some(key)).ok_or_else(|| mismatch("out-of-range key")),
        None if K::NULLABLE && missing_parent == MissingParent::DeferNullable => {
            deferred.push(DeferredReference {
                field: site.field,
                target,
                parent,
            });
            K::from_key(None).ok_or_else(|| mismatch("null"))
        }
        None => Err(ApplyError::MissingParent {
            model: site.model,
            id: site.id,
            field: site.field,
            target,
            parent,
        }),
    }
}

/// The wire names of a model's synced fields.
pub fn field_names(meta: &ModelMeta) -> Vec<&'static str> {
    meta.fields.iter().map(|f| f.name).collect()
}

/// The columns named by SQLite's "UNIQUE constraint failed: t.a, t.b".
pub fn unique_columns(message: &str) -> Vec<String> {
    let list = message.rsplit(": ").next().unwrap_or_default();
    list.split(", ")
        .map(|c| c.rsplit('.').next().unwrap_or(c).trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Turns a failed write into [`ApplyError::Unique`] (naming the row that
/// holds the value) when it broke a unique constraint, else a database error.
pub async fn unique_or_db<E, A, C>(
    db: &C,
    model: &'static str,
    id: Uuid,
    attempted: &A,
    error: sea_orm::DbErr,
) -> ApplyError
where
    E: EntityTrait,
    E::Model: SyncModel,
    A: ActiveModelTrait<Entity = E>,
    C: ConnectionTrait,
{
    let Some(sea_orm::SqlErr::UniqueConstraintViolation(message)) = error.sql_err() else {
        return ApplyError::Db(error);
    };
    let columns = unique_columns(&message);
    let mut query = E::find();
    for name in &columns {
        let Ok(column) = <E::Column as std::str::FromStr>::from_str(name) else {
            return ApplyError::Unique {
                model,
                id,
                columns,
                holder: None,
            };
        };
        match attempted.get(column).into_value() {
            Some(value) => query = query.filter(column.eq(value)),
            None => {
                return ApplyError::Unique {
                    model,
                    id,
                    columns,
                    holder: None,
                };
            }
        }
    }
    let holder = match query.one(db).await {
        Ok(row) => row.map(|r| r.sync_id()).filter(|h| *h != id),
        Err(e) => return ApplyError::Db(e),
    };
    ApplyError::Unique {
        model,
        id,
        columns,
        holder,
    }
}
