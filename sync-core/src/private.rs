//! Support for the code `#[derive(Syncable)]` generates. Not a public API:
//! names here may change in any release.

pub use core::future::Future;
pub use core::option::Option;
pub use core::result::Result;
pub use inventory;
pub use sea_orm;
pub use uuid::Uuid;

pub use crate::model::{
    CaptureError, FieldMeta, FieldRole, ModelMeta, Ownership, SyncEntity, SyncModel,
};
pub use crate::registry::ModelDescriptor;
pub use crate::value::{ValueError, WireValue};
pub use sea_orm::sea_query::Value;

use sea_orm::sea_query::ValueType;
use sea_orm::{DbErr, QueryResult, TryGetable};

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

/// A reference's local key in wire form (`I64`, null when unset).
pub fn encode_key<K: ForeignKeyType>(key: &K) -> WireValue {
    WireValue::I64(key.to_key())
}

/// Checks a wire value against a field's Rust type and converts it into the
/// value sea-orm binds for the column.
pub fn to_sql<T: ValueType + Into<Value>>(value: &WireValue) -> Result<Value, ValueError> {
    value.clone().decode::<T>().map(Into::into)
}

/// Reads a column into a field's wire form.
pub fn read_field<T: TryGetable + Into<Value>>(
    row: &QueryResult,
    alias: &str,
) -> Result<WireValue, DbErr> {
    let value: T = row.try_get("", alias)?;
    WireValue::encode(value).map_err(|e| DbErr::Type(e.to_string()))
}

/// Reads a reference column: its local key, as `I64`.
pub fn read_key(row: &QueryResult, alias: &str) -> Result<WireValue, DbErr> {
    let key: Option<i64> = row.try_get("", alias)?;
    Ok(WireValue::I64(key))
}

/// The value of a local-only column on a row created by a peer.
pub fn default_value<T: Default + Into<Value>>() -> Value {
    T::default().into()
}

/// Whether a column is declared nullable.
pub fn column_nullable<C: sea_orm::ColumnTrait>(column: C) -> bool {
    column.def().is_null()
}

/// Whether a field changed. Floats compare by value, as sea-orm does.
pub fn field_eq<T: PartialEq>(old: &T, new: &T) -> bool {
    old == new
}

/// Places where a test can make the engine fail, to prove that a failure
/// there leaves nothing half-written.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail a commit after the rows are written, before the log is.
    pub fail_before_log_write: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Protocol steps a session takes, for tests that drive them one by one.
pub mod steps {
    use crate::engine::Engine;
    use crate::error::EngineError;
    use crate::protocol::{
        Batch, ErrorMessage, PullRequest, PullResponse, SnapshotRequest, SnapshotResponse,
    };
    use crate::receive::{ApplyReport, InBatch, Incoming};

    /// What a peer with this request lacks, one page of it.
    pub async fn serve_pull(
        engine: &Engine,
        request: &PullRequest,
    ) -> Result<Result<PullResponse, ErrorMessage>, EngineError> {
        engine.serve_pull(request).await
    }

    /// One page of a snapshot.
    pub async fn serve_snapshot(
        engine: &Engine,
        request: &SnapshotRequest,
    ) -> Result<Result<SnapshotResponse, ErrorMessage>, EngineError> {
        engine.serve_snapshot(request).await
    }

    /// How a record is stored here, in words: its presence and its state
    /// (for the simulation's report of a divergence).
    pub async fn describe_record(
        engine: &Engine,
        model: &str,
        id: uuid::Uuid,
    ) -> Result<String, EngineError> {
        let registry = engine.registry();
        let Some(rank) = registry.rank(model) else {
            return Ok(format!("no model {model}"));
        };
        let key = crate::project::RecordKey { rank, id };
        let rows =
            crate::store::load_rows(engine.db(), registry, &std::iter::once(key).collect()).await?;
        Ok(match rows.get(&key).and_then(|r| r.as_ref()) {
            None => "no state".into(),
            Some(s) => format!("{:?} key {:?}: {:?}", s.presence, s.key, s.state),
        })
    }

    /// Tries the snapshot rows held back for now again.
    pub async fn retry_held(engine: &Engine) -> Result<ApplyReport, EngineError> {
        engine.retry_held().await
    }

    /// The request that continues this device's backfill.
    pub fn backfill_request(engine: &Engine, limit: u32) -> SnapshotRequest {
        engine.backfill_request(limit)
    }

    /// Applies a snapshot page; whether the backfill is complete.
    pub async fn apply_snapshot(
        engine: &Engine,
        page: SnapshotResponse,
    ) -> Result<(ApplyReport, bool), EngineError> {
        engine.apply_snapshot(page, None).await
    }

    /// Applies batches with their claims, as a session does with a pull's
    /// answer.
    pub async fn apply_batches(
        engine: &Engine,
        batches: Vec<Batch>,
    ) -> Result<ApplyReport, EngineError> {
        apply_as(engine, batches, false).await
    }

    /// Applies batches with their claims, as a session does with a push.
    pub async fn apply_pushed(
        engine: &Engine,
        batches: Vec<Batch>,
    ) -> Result<ApplyReport, EngineError> {
        apply_as(engine, batches, true).await
    }

    async fn apply_as(
        engine: &Engine,
        batches: Vec<Batch>,
        pushed: bool,
    ) -> Result<ApplyReport, EngineError> {
        let batches = batches
            .into_iter()
            .map(|b| InBatch {
                origin: b.origin,
                device: b.device,
                claim: Some((b.after, b.upto)),
                changes: b.changes,
                handed: Vec::new(),
                proofs: Some(b.seals),
            })
            .collect();
        Ok(engine
            .receive(Incoming {
                batches,
                pushed,
                ..Incoming::default()
            })
            .await?
            .0)
    }

    /// `changes` (of `engine`'s current origin, numbered in a row) as one
    /// batch sealed by `engine`'s key, whatever they say: a paired device
    /// that signs what it should not (tests of what receivers refuse on
    /// content, not on signature).
    pub fn sealed_batch(
        engine: &Engine,
        changes: &[crate::change::Change],
    ) -> Result<Batch, EngineError> {
        use crate::trust::seal::{Seal, SealProof, change_leaf};
        let first = changes.first().map_or(0, |c| c.seq);
        let mut encoded = Vec::with_capacity(changes.len());
        let mut leaves = Vec::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            if c.origin != engine.origin() || c.seq != first + i as u64 {
                return Err(EngineError::Malformed(
                    "changes of this origin, numbered in a row".into(),
                ));
            }
            let bytes = c
                .encode()
                .map_err(|e| EngineError::Malformed(e.to_string()))?;
            leaves.push(change_leaf(c, bytes.as_bytes()));
            encoded.push(bytes);
        }
        let seal = Seal::sign(engine.key(), engine.inner.nonce, first, &leaves)
            .ok_or_else(|| EngineError::Malformed("nothing to seal".into()))?;
        Ok(Batch {
            origin: engine.origin(),
            device: engine.device(),
            after: first.saturating_sub(1),
            upto: seal.last,
            changes: encoded,
            seals: vec![SealProof {
                seal,
                husks: Vec::new(),
                hashes: Vec::new(),
            }],
        })
    }

    /// Notes a peer's acknowledgement, as a session does on an `Ack`.
    pub fn acknowledge(engine: &Engine, peer: uuid::Uuid, vector: &crate::vector::VersionVector) {
        engine.acknowledge(peer, vector, Vec::new());
    }

    /// Notes what `member` holds, as its heartbeat to `engine` reports it
    /// (tombstone collection weighs these reports).
    pub fn hear(engine: &Engine, member: &Engine) {
        let vector = member.vector();
        let own = member.device();
        let reports: Vec<_> = member
            .held_by_members(&vector, |_, _| false)
            .into_iter()
            .filter(|r| r.device == own)
            .collect();
        engine.note_held(&vector, &reports);
    }

    /// Starts the device's backfill over (`expired`: as a device away
    /// beyond the retention horizon, which settles what the snapshot lacks).
    pub async fn restart_backfill(engine: &Engine, expired: bool) -> Result<(), EngineError> {
        engine.restart_backfill(expired).await
    }
}
