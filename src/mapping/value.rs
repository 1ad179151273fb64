//! Values as read from the warehouse, typed by their SQL column type.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// The SQL type family of a model's output column, decided once per run from the query's
/// description; unknown types are read as their text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    Int,
    Float,
    /// NUMERIC, read as its exact decimal text.
    Numeric,
    Text,
    Date,
    /// TIMESTAMP WITHOUT TIME ZONE, taken as UTC.
    Timestamp,
    TimestampTz,
    Json,
    TextArray,
}

impl ValueKind {
    pub fn describe(self) -> &'static str {
        match self {
            ValueKind::Bool => "boolean",
            ValueKind::Int => "integer",
            ValueKind::Float => "float",
            ValueKind::Numeric => "numeric",
            ValueKind::Text => "text",
            ValueKind::Date => "date",
            ValueKind::Timestamp => "timestamp",
            ValueKind::TimestampTz => "timestamptz",
            ValueKind::Json => "json",
            ValueKind::TextArray => "array",
        }
    }
}

/// Text read from the warehouse. Values up to 24 bytes (most names, cities, codes, phone
/// numbers, ids and amounts) are kept inline: a backfill reads a dozen per row, and a heap
/// string for each, allocated by the reader and freed by the mapper, cost more than decoding.
pub type Text = compact_str::CompactString;

/// The most bytes one value may have (its wire size as read). Meta caps the whole request body
/// far below a megabyte per event, so a longer value is a column mapped by mistake or a blob;
/// it is dropped with a reason instead of being carried through the pipeline.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a warehouse value cannot be sent, although the row was read. The reader yields this
/// instead of failing (one odd value must not stop a model), and the mapping refuses the row
/// when the value was event-level, or drops the field otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unusable {
    /// A date or timestamp at `infinity` or `-infinity`.
    InfiniteTime,
    /// A date or timestamp Postgres holds but chrono cannot (beyond the year 262143, which
    /// Postgres dates and timestamps reach).
    TimeOutOfRange,
    /// `NaN`, `Infinity` or `-Infinity` in a float or numeric column: JSON has no such number.
    NotFinite,
    /// Longer than [`MAX_VALUE_BYTES`].
    TooLong,
    /// JSON that Postgres accepts but no JSON reader here can hold (a number beyond the range
    /// of a double, nesting deeper than 128 levels).
    InvalidJson,
    /// Any other value that could not be decoded (an array of several dimensions, text that is
    /// not UTF-8 in a SQL_ASCII database, ...).
    Unreadable,
}

impl Unusable {
    /// Stable snake_case reason, as counted in `dropped_by_field`.
    pub fn reason(self) -> &'static str {
        match self {
            Unusable::InfiniteTime => "infinite_time",
            Unusable::TimeOutOfRange => "time_out_of_range",
            Unusable::NotFinite => "not_a_finite_number",
            Unusable::TooLong => "value_too_long",
            Unusable::InvalidJson => "invalid_json",
            Unusable::Unreadable => "unreadable_value",
        }
    }

    /// What is wrong, for a refusal's detail (never the value itself).
    pub fn describe(self) -> String {
        match self {
            Unusable::InfiniteTime => "is infinity or -infinity".into(),
            Unusable::TimeOutOfRange => {
                "is a date or timestamp beyond the year 262143".into()
            }
            Unusable::NotFinite => "is NaN or infinite".into(),
            Unusable::TooLong => format!("is longer than {} KiB", MAX_VALUE_BYTES / 1024),
            Unusable::InvalidJson => "is JSON that cannot be read (a number beyond a double's range or nesting deeper than 128)".into(),
            Unusable::Unreadable => "could not be decoded".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Numeric(Text),
    Text(Text),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Json(serde_json::Value),
    TextArray(Vec<Option<String>>),
    /// A value that was read but cannot be sent (see [`Unusable`]).
    Unusable(Unusable),
}

impl Value {
    pub fn is_null(&self) -> bool {
        match self {
            Value::Null => true,
            // Most values start with a visible ASCII character: no need to trim them.
            Value::Text(s) => match s.as_bytes().first() {
                None => true,
                Some(b) if b.is_ascii_graphic() => false,
                Some(_) => s.trim().is_empty(),
            },
            Value::TextArray(a) => a
                .iter()
                .all(|v| v.as_deref().is_none_or(|s| s.trim().is_empty())),
            Value::Json(serde_json::Value::Null) => true,
            _ => false,
        }
    }

    /// Why the value cannot be sent, if it cannot: an [`Unusable`] from the reader, or a
    /// float or numeric that is not a finite number.
    pub fn unusable(&self) -> Option<Unusable> {
        match self {
            Value::Unusable(u) => Some(*u),
            Value::Float(f) if !f.is_finite() => Some(Unusable::NotFinite),
            Value::Numeric(s) if is_non_finite_numeric(s) => Some(Unusable::NotFinite),
            _ => None,
        }
    }

    /// The value as a JSON value (generic conversion for custom_data and other free-form keys).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Numeric(s) => s
                .parse::<serde_json::Number>()
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Text(s) => J::String(s.to_string()),
            Value::Date(d) => J::String(d.format("%Y-%m-%d").to_string()),
            Value::Timestamp(t) => J::String(t.and_utc().to_rfc3339()),
            Value::TimestampTz(t) => J::String(t.to_rfc3339()),
            Value::Json(j) => j.clone(),
            Value::TextArray(a) => J::Array(
                a.iter()
                    .map(|v| v.as_ref().map(|s| J::String(s.clone())).unwrap_or(J::Null))
                    .collect(),
            ),
            Value::Unusable(_) => J::Null,
        }
    }

    /// Text form for string parameters; None for JSON objects and arrays.
    pub fn as_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Null => None,
            Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            Value::Int(i) => Some(Cow::Owned(i.to_string())),
            Value::Float(f) => Some(Cow::Owned(f.to_string())),
            Value::Numeric(s) | Value::Text(s) => Some(Cow::Borrowed(s.as_str())),
            Value::Date(d) => Some(Cow::Owned(d.format("%Y-%m-%d").to_string())),
            Value::Timestamp(t) => Some(Cow::Owned(t.and_utc().to_rfc3339())),
            Value::TimestampTz(t) => Some(Cow::Owned(t.to_rfc3339())),
            Value::Json(serde_json::Value::String(s)) => Some(Cow::Borrowed(s.as_str())),
            Value::Json(serde_json::Value::Number(n)) => Some(Cow::Owned(n.to_string())),
            Value::Json(serde_json::Value::Bool(b)) => Some(Cow::Owned(b.to_string())),
            Value::Json(_) | Value::TextArray(_) | Value::Unusable(_) => None,
        }
    }

    /// A JSON value converted into a warehouse-like value (for constants).
    pub fn from_json(j: &serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Numeric(n.to_string().into()),
            },
            serde_json::Value::String(s) => Value::Text(s.as_str().into()),
            other => Value::Json(other.clone()),
        }
    }
}

/// Postgres prints these for NUMERIC (and float) values that are no number.
pub fn is_non_finite_numeric(s: &str) -> bool {
    matches!(s, "NaN" | "Infinity" | "-Infinity")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_text_is_null_whatever_its_whitespace() {
        for blank in ["", " ", "\t\n", "\u{a0}", " \u{2003}\u{3000} "] {
            assert!(Value::Text(blank.into()).is_null(), "{blank:?}");
        }
        for text in ["a", " a", "\u{a0}x", "é", "-", "0"] {
            assert!(!Value::Text(text.into()).is_null(), "{text:?}");
        }
    }
}
