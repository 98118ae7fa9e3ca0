//! Values kept in a TEXT column: each type says once how it is written ([`StoredText`]), and
//! [`stored_as_text!`] derives from that its column type (sqlx, for any backend whose strings
//! are TEXT) and its serde form (the same text, used where a value sits inside stored JSON,
//! such as a callout's call template).

use std::borrow::Cow;

/// A stored text that does not read as the type it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?}")]
pub struct TextError {
    /// What was expected (`call status`, `HTTP method`, …).
    pub what: &'static str,
    pub text: String,
}

impl TextError {
    pub(crate) fn new(what: &'static str, text: &str) -> Self {
        TextError {
            what,
            text: text.to_owned(),
        }
    }
}

/// A value with one text form, written to and read from its column as that text.
pub trait StoredText: Sized {
    /// The text stored.
    fn to_text(&self) -> Cow<'_, str>;
    /// Reads what [`StoredText::to_text`] wrote (and what earlier builds wrote).
    fn from_text(text: &str) -> Result<Self, TextError>;
}

/// Implements sqlx's `Type`, `Decode` and `Encode` and serde's `Serialize` and `Deserialize`
/// for a [`StoredText`] type, all through its text.
macro_rules! stored_as_text {
    ($t:ty) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $t
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $t
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(<$t as $crate::text::StoredText>::from_text(&text)?)
            }
        }

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $t
        where
            String: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let text = $crate::text::StoredText::to_text(self).into_owned();
                <String as sqlx::Encode<'q, DB>>::encode(text, buf)
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&$crate::text::StoredText::to_text(self))
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                <$t as $crate::text::StoredText>::from_text(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use stored_as_text;

/// A yes or no kept in an INTEGER column as 1 or 0, on every backend (read into a `bool` field
/// with `#[sqlx(try_from = "Flag")]`, written as `i64::from(b)`).
pub(crate) struct Flag(bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

impl<DB: sqlx::Database> sqlx::Type<DB> for Flag
where
    i64: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <i64 as sqlx::Type<DB>>::type_info()
    }
    fn compatible(ty: &DB::TypeInfo) -> bool {
        <i64 as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for Flag
where
    i64: sqlx::Decode<'r, DB>,
{
    fn decode(
        value: <DB as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(Flag(<i64 as sqlx::Decode<'r, DB>>::decode(value)? != 0))
    }
}
