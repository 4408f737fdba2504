//! The wire form of a column value.
//!
//! [`WireValue`] mirrors the variants of sea-query's `Value` that sea-orm
//! models use, with the same Rust type inside each variant, so a value goes
//! model -> wire -> model without loss: an `i8` stays an `i8`, an `f32` keeps
//! its bits, a typed null stays a null of its type.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sea_orm::sea_query::{self, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One column value as it travels between devices.
///
/// Each variant carries an `Option`: `None` is a typed SQL null, so the
/// receiving side rebuilds exactly the sea-query value the sender read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WireValue {
    /// `bool`
    Bool(Option<bool>),
    /// `i8`
    I8(Option<i8>),
    /// `i16`
    I16(Option<i16>),
    /// `i32`
    I32(Option<i32>),
    /// `i64`
    I64(Option<i64>),
    /// `u8`
    U8(Option<u8>),
    /// `u16`
    U16(Option<u16>),
    /// `u32`
    U32(Option<u32>),
    /// `u64`
    U64(Option<u64>),
    /// `f32`, bit for bit
    F32(Option<f32>),
    /// `f64`, bit for bit
    F64(Option<f64>),
    /// `char`
    Char(Option<char>),
    /// `String`, and enums mapped to strings with `DeriveActiveEnum`
    String(Option<String>),
    /// A native database enum (`db_type = "Enum"`): its type name and value
    Enum {
        /// The database enum type
        type_name: String,
        /// The variant's string value, `None` for null
        value: Option<String>,
    },
    /// `Vec<u8>`
    Bytes(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// `serde_json::Value`, carried as its JSON text so that every number
    /// keeps its exact textual form
    Json(Option<String>),
    /// `chrono::NaiveDate`
    Date(Option<NaiveDate>),
    /// `chrono::NaiveTime`
    Time(Option<NaiveTime>),
    /// `chrono::NaiveDateTime`
    DateTime(Option<NaiveDateTime>),
    /// `chrono::DateTime<Utc>`
    DateTimeUtc(Option<DateTime<Utc>>),
    /// `chrono::DateTime<FixedOffset>`
    DateTimeWithOffset(Option<DateTime<FixedOffset>>),
    /// `chrono::DateTime<Local>`, sent with the writer's offset
    DateTimeLocal(Option<DateTime<FixedOffset>>),
    /// `uuid::Uuid`
    Uuid(Option<Uuid>),
}

/// A sea-query value that has no wire form, or a wire value that does not fit
/// the column it was sent for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The column type has no wire form (for example a Postgres array).
    #[error("column type {0} cannot be synced")]
    Unsupported(String),
    /// The wire value's type does not match the column's Rust type.
    #[error("a {found} value does not fit a column of type {expected}")]
    TypeMismatch {
        /// The Rust type of the column.
        expected: String,
        /// The wire variant that arrived.
        found: &'static str,
    },
    /// A `u64` above `i64::MAX`: SQLite stores 64-bit signed integers, and
    /// the SQLite driver would abort on it.
    #[error("{0} does not fit SQLite's 64-bit signed integer")]
    OutOfRange(u64),
    /// A JSON value whose text does not parse.
    #[error("malformed JSON value: {0}")]
    Json(String),
}

impl WireValue {
    /// Whether this is a typed null.
    pub fn is_null(&self) -> bool {
        match self {
            WireValue::Bool(v) => v.is_none(),
            WireValue::I8(v) => v.is_none(),
            WireValue::I16(v) => v.is_none(),
            WireValue::I32(v) => v.is_none(),
            WireValue::I64(v) => v.is_none(),
            WireValue::U8(v) => v.is_none(),
            WireValue::U16(v) => v.is_none(),
            WireValue::U32(v) => v.is_none(),
            WireValue::U64(v) => v.is_none(),
            WireValue::F32(v) => v.is_none(),
            WireValue::F64(v) => v.is_none(),
            WireValue::Char(v) => v.is_none(),
            WireValue::String(v) => v.is_none(),
            WireValue::Enum { value, .. } => value.is_none(),
            WireValue::Bytes(v) => v.is_none(),
            WireValue::Json(v) => v.is_none(),
            WireValue::Date(v) => v.is_none(),
            WireValue::Time(v) => v.is_none(),
            WireValue::DateTime(v) => v.is_none(),
            WireValue::DateTimeUtc(v) => v.is_none(),
            WireValue::DateTimeWithOffset(v) => v.is_none(),
            WireValue::DateTimeLocal(v) => v.is_none(),
            WireValue::Uuid(v) => v.is_none(),
        }
    }

    /// The variant's name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            WireValue::Bool(_) => "bool",
            WireValue::I8(_) => "i8",
            WireValue::I16(_) => "i16",
            WireValue::I32(_) => "i32",
            WireValue::I64(_) => "i64",
            WireValue::U8(_) => "u8",
            WireValue::U16(_) => "u16",
            WireValue::U32(_) => "u32",
            WireValue::U64(_) => "u64",
            WireValue::F32(_) => "f32",
            WireValue::F64(_) => "f64",
            WireValue::Char(_) => "char",
            WireValue::String(_) => "string",
            WireValue::Enum { .. } => "enum",
            WireValue::Bytes(_) => "bytes",
            WireValue::Json(_) => "json",
            WireValue::Date(_) => "date",
            WireValue::Time(_) => "time",
            WireValue::DateTime(_) => "datetime",
            WireValue::DateTimeUtc(_) => "datetime-utc",
            WireValue::DateTimeWithOffset(_) => "datetime-offset",
            WireValue::DateTimeLocal(_) => "datetime-local",
            WireValue::Uuid(_) => "uuid",
        }
    }

    /// Converts a sea-query value read from a model into its wire form.
    pub fn from_sea(value: Value) -> Result<Self, ValueError> {
        Ok(match value {
            Value::Bool(v) => WireValue::Bool(v),
            Value::TinyInt(v) => WireValue::I8(v),
            Value::SmallInt(v) => WireValue::I16(v),
            Value::Int(v) => WireValue::I32(v),
            Value::BigInt(v) => WireValue::I64(v),
            Value::TinyUnsigned(v) => WireValue::U8(v),
            Value::SmallUnsigned(v) => WireValue::U16(v),
            Value::Unsigned(v) => WireValue::U32(v),
            Value::BigUnsigned(v) => WireValue::U64(v),
            Value::Float(v) => WireValue::F32(v),
            Value::Double(v) => WireValue::F64(v),
            Value::Char(v) => WireValue::Char(v),
            Value::String(v) => WireValue::String(v),
            Value::Enum(sea_query::OptionEnum::Some(e)) => WireValue::Enum {
                type_name: e.type_name.to_string(),
                value: Some(e.value.into_owned()),
            },
            Value::Enum(sea_query::OptionEnum::None(type_name)) => WireValue::Enum {
                type_name: type_name.to_string(),
                value: None,
            },
            Value::Bytes(v) => WireValue::Bytes(v),
            Value::Json(v) => WireValue::Json(v.map(|json| json.to_string())),
            Value::ChronoDate(v) => WireValue::Date(v),
            Value::ChronoTime(v) => WireValue::Time(v),
            Value::ChronoDateTime(v) => WireValue::DateTime(v),
            Value::ChronoDateTimeUtc(v) => WireValue::DateTimeUtc(v),
            Value::ChronoDateTimeLocal(v) => WireValue::DateTimeLocal(v.map(|t| t.fixed_offset())),
            Value::ChronoDateTimeWithTimeZone(v) => WireValue::DateTimeWithOffset(v),
            Value::Uuid(v) => WireValue::Uuid(v),
            #[allow(unreachable_patterns)]
            other => return Err(ValueError::Unsupported(format!("{other:?}"))),
        })
    }

    /// Converts the wire form back into a sea-query value.
    pub fn into_sea(self) -> Result<Value, ValueError> {
        Ok(match self {
            WireValue::Bool(v) => Value::Bool(v),
            WireValue::I8(v) => Value::TinyInt(v),
            WireValue::I16(v) => Value::SmallInt(v),
            WireValue::I32(v) => Value::Int(v),
            WireValue::I64(v) => Value::BigInt(v),
            WireValue::U8(v) => Value::TinyUnsigned(v),
            WireValue::U16(v) => Value::SmallUnsigned(v),
            WireValue::U32(v) => Value::Unsigned(v),
            WireValue::U64(Some(v)) if i64::try_from(v).is_err() => {
                return Err(ValueError::OutOfRange(v));
            }
            WireValue::U64(v) => Value::BigUnsigned(v),
            WireValue::F32(v) => Value::Float(v),
            WireValue::F64(v) => Value::Double(v),
            WireValue::Char(v) => Value::Char(v),
            WireValue::String(v) => Value::String(v),
            WireValue::Enum { type_name, value } => Value::Enum(match value {
                Some(value) => sea_query::OptionEnum::Some(Box::new(sea_query::Enum {
                    type_name: type_name.as_str().into(),
                    value: value.into(),
                })),
                None => sea_query::OptionEnum::None(type_name.as_str().into()),
            }),
            WireValue::Bytes(v) => Value::Bytes(v),
            WireValue::Json(v) => Value::Json(match v {
                Some(text) => Some(Box::new(
                    serde_json::from_str(&text).map_err(|e| ValueError::Json(e.to_string()))?,
                )),
                None => None,
            }),
            WireValue::Date(v) => Value::ChronoDate(v),
            WireValue::Time(v) => Value::ChronoTime(v),
            WireValue::DateTime(v) => Value::ChronoDateTime(v),
            WireValue::DateTimeUtc(v) => Value::ChronoDateTimeUtc(v),
            WireValue::DateTimeWithOffset(v) => Value::ChronoDateTimeWithTimeZone(v),
            WireValue::DateTimeLocal(v) => {
                Value::ChronoDateTimeLocal(v.map(|t| t.with_timezone(&chrono::Local)))
            }
            WireValue::Uuid(v) => Value::Uuid(v),
        })
    }

    /// The sea-query value of a wire value already checked against its
    /// column (what `into_sea` gives, without consuming it).
    pub fn to_sea(&self) -> Result<Value, ValueError> {
        self.clone().into_sea()
    }

    /// Reads a wire value back into a model field's Rust type.
    pub fn decode<T: sea_query::ValueType>(self) -> Result<T, ValueError> {
        let found = self.kind();
        T::try_from(self.into_sea()?).map_err(|_| ValueError::TypeMismatch {
            expected: T::type_name(),
            found,
        })
    }

    /// Encodes a model field's value.
    pub fn encode<T: Into<Value>>(value: T) -> Result<Self, ValueError> {
        Self::from_sea(value.into())
    }
}

impl std::fmt::Display for WireValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn show<T: std::fmt::Display>(
            f: &mut std::fmt::Formatter<'_>,
            v: &Option<T>,
        ) -> std::fmt::Result {
            match v {
                Some(v) => write!(f, "{v}"),
                None => f.write_str("null"),
            }
        }
        match self {
            WireValue::Bool(v) => show(f, v),
            WireValue::I8(v) => show(f, v),
            WireValue::I16(v) => show(f, v),
            WireValue::I32(v) => show(f, v),
            WireValue::I64(v) => show(f, v),
            WireValue::U8(v) => show(f, v),
            WireValue::U16(v) => show(f, v),
            WireValue::U32(v) => show(f, v),
            WireValue::U64(v) => show(f, v),
            WireValue::F32(v) => show(f, v),
            WireValue::F64(v) => show(f, v),
            WireValue::Char(v) => show(f, v),
            WireValue::String(Some(s)) => write!(f, "{s:?}"),
            WireValue::String(None) => f.write_str("null"),
            WireValue::Enum { value, .. } => show(f, value),
            WireValue::Bytes(Some(b)) => write!(f, "<{} bytes>", b.len()),
            WireValue::Bytes(None) => f.write_str("null"),
            WireValue::Json(v) => show(f, v),
            WireValue::Date(v) => show(f, v),
            WireValue::Time(v) => show(f, v),
            WireValue::DateTime(v) => show(f, v),
            WireValue::DateTimeUtc(v) => show(f, v),
            WireValue::DateTimeWithOffset(v) => show(f, v),
            WireValue::DateTimeLocal(v) => show(f, v),
            WireValue::Uuid(v) => show(f, v),
        }
    }
}
