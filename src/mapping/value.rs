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
            Value::Json(_) | Value::TextArray(_) => None,
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
