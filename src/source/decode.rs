//! Warehouse values → [`Value`], without a panic and without failing the read for any value
//! Postgres can hold. A value that cannot be sent (a date at `infinity`, a year chrono cannot
//! name, `NaN`, text over [`MAX_VALUE_BYTES`], JSON serde cannot hold, anything that does not
//! decode) becomes a [`Value::Unusable`]; the mapping then refuses the row or drops the field
//! with a reason. One odd value must not stop a model: a failed read fails every later run at
//! the same page.
//!
//! Dates and timestamps are decoded from Postgres' binary format here, not by sqlx: its chrono
//! decoding adds the value to 2000-01-01 with unchecked arithmetic, which panics at
//! `infinity` (stored as the extreme integer) and beyond chrono's range.

use crate::mapping::value::{is_non_finite_numeric, Text, Unusable, MAX_VALUE_BYTES};
use crate::mapping::{Value, ValueKind};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use sqlx::postgres::{PgRow, PgValueFormat, PgValueRef};
use sqlx::{Decode, Postgres, Row};

/// A decoded value and the bytes it took on the wire (for the page's byte budget).
pub(super) struct Decoded {
    pub value: Value,
    pub wire_bytes: usize,
}

/// `sql_type` is the column's `format_type` name, decided once per run, so the integer and
/// float widths need no per-value type lookup. The kinds were checked against the columns'
/// types when the run described the query, so the values are decoded without sqlx's per-value
/// type check, a few percent of a backfill's CPU.
pub(super) fn decode_value(row: &PgRow, i: usize, kind: ValueKind, sql_type: &str) -> Decoded {
    let unusable = |u: Unusable, wire_bytes: usize| Decoded {
        value: Value::Unusable(u),
        wire_bytes,
    };
    let Ok(raw) = row.try_get_raw(i) else {
        return unusable(Unusable::Unreadable, 0);
    };
    let Ok(bytes) = raw.as_bytes() else {
        // The only error of `as_bytes` is SQL NULL.
        return Decoded {
            value: Value::Null,
            wire_bytes: 0,
        };
    };
    let wire_bytes = bytes.len();
    if wire_bytes > MAX_VALUE_BYTES {
        return unusable(Unusable::TooLong, wire_bytes);
    }
    let value = match typed(raw, bytes, kind, sql_type) {
        Ok(v) => v,
        Err(u) => Value::Unusable(u),
    };
    Decoded { value, wire_bytes }
}

fn typed(
    raw: PgValueRef<'_>,
    bytes: &[u8],
    kind: ValueKind,
    sql_type: &str,
) -> Result<Value, Unusable> {
    let binary = raw.format() == PgValueFormat::Binary;
    Ok(match kind {
        ValueKind::Bool => Value::Bool(sqlx_decode(raw)?),
        ValueKind::Int => Value::Int(match sql_type {
            "smallint" => sqlx_decode::<i16>(raw)?.into(),
            "integer" => sqlx_decode::<i32>(raw)?.into(),
            _ => sqlx_decode::<i64>(raw)?,
        }),
        ValueKind::Float => {
            let f = if sql_type == "real" {
                sqlx_decode::<f32>(raw)?.into()
            } else {
                sqlx_decode::<f64>(raw)?
            };
            if !f.is_finite() {
                return Err(Unusable::NotFinite);
            }
            Value::Float(f)
        }
        // Read as `::text` (see `ModelQuery::build`): the bytes are UTF-8 text either way.
        ValueKind::Numeric | ValueKind::Text => {
            let s = std::str::from_utf8(bytes).map_err(|_| Unusable::Unreadable)?;
            if kind == ValueKind::Numeric {
                if is_non_finite_numeric(s) {
                    return Err(Unusable::NotFinite);
                }
                Value::Numeric(Text::new(s))
            } else {
                Value::Text(Text::new(s))
            }
        }
        ValueKind::Date if binary => Value::Date(pg_date(be_i32(bytes)?)?),
        ValueKind::Timestamp if binary => Value::Timestamp(pg_timestamp(be_i64(bytes)?)?),
        ValueKind::TimestampTz if binary => {
            Value::TimestampTz(pg_timestamp(be_i64(bytes)?)?.and_utc())
        }
        ValueKind::Date | ValueKind::Timestamp | ValueKind::TimestampTz => {
            text_time(raw, bytes, kind)?
        }
        ValueKind::Json => {
            let mut buf = bytes;
            if binary && sql_type == "jsonb" {
                // Binary jsonb is a version byte (1, the only one Postgres has) and the text.
                match buf.split_first() {
                    Some((1, rest)) => buf = rest,
                    _ => return Err(Unusable::Unreadable),
                }
            }
            Value::Json(serde_json::from_slice(buf).map_err(|_| Unusable::InvalidJson)?)
        }
        ValueKind::TextArray => Value::TextArray(sqlx_decode(raw)?),
    })
}

fn sqlx_decode<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, Unusable> {
    T::decode(raw).map_err(|_| Unusable::Unreadable)
}

fn be_i32(bytes: &[u8]) -> Result<i32, Unusable> {
    Ok(i32::from_be_bytes(
        bytes.try_into().map_err(|_| Unusable::Unreadable)?,
    ))
}

fn be_i64(bytes: &[u8]) -> Result<i64, Unusable> {
    Ok(i64::from_be_bytes(
        bytes.try_into().map_err(|_| Unusable::Unreadable)?,
    ))
}

/// Postgres' epoch for dates and timestamps.
fn pg_epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default()
}

/// A binary `date`: days since 2000-01-01; `i32::MAX` and `i32::MIN` are `±infinity`.
pub fn pg_date(days: i32) -> Result<NaiveDate, Unusable> {
    if days == i32::MAX || days == i32::MIN {
        return Err(Unusable::InfiniteTime);
    }
    pg_epoch()
        .checked_add_signed(TimeDelta::days(days.into()))
        .ok_or(Unusable::TimeOutOfRange)
}

/// A binary `timestamp` or `timestamptz` (UTC): microseconds since 2000-01-01 00:00;
/// `i64::MAX` and `i64::MIN` are `±infinity`.
pub fn pg_timestamp(micros: i64) -> Result<NaiveDateTime, Unusable> {
    if micros == i64::MAX || micros == i64::MIN {
        return Err(Unusable::InfiniteTime);
    }
    // Any i64 of microseconds is a valid TimeDelta (its range is ±i64::MAX milliseconds).
    pg_epoch()
        .and_time(chrono::NaiveTime::MIN)
        .checked_add_signed(TimeDelta::microseconds(micros))
        .ok_or(Unusable::TimeOutOfRange)
}

/// Dates and timestamps in text format (Postgres sends binary to sqlx's queries; this is for
/// completeness). sqlx parses text without overflow, so only `infinity` needs catching.
fn text_time(raw: PgValueRef<'_>, bytes: &[u8], kind: ValueKind) -> Result<Value, Unusable> {
    if matches!(bytes, b"infinity" | b"-infinity") {
        return Err(Unusable::InfiniteTime);
    }
    Ok(match kind {
        ValueKind::Date => Value::Date(sqlx_decode(raw)?),
        ValueKind::Timestamp => Value::Timestamp(sqlx_decode(raw)?),
        _ => Value::TimestampTz(sqlx_decode::<DateTime<Utc>>(raw)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn infinity_and_the_ends_of_chrono_are_unusable_not_panics() {
        assert_eq!(pg_timestamp(i64::MAX), Err(Unusable::InfiniteTime));
        assert_eq!(pg_timestamp(i64::MIN), Err(Unusable::InfiniteTime));
        assert_eq!(pg_date(i32::MAX), Err(Unusable::InfiniteTime));
        assert_eq!(pg_date(i32::MIN), Err(Unusable::InfiniteTime));
        // Year ~271000: Postgres timestamps reach 294276, chrono stops at 262143.
        assert_eq!(
            pg_timestamp(8_500_000_000_000_000_000),
            Err(Unusable::TimeOutOfRange)
        );
        assert_eq!(pg_date(2_000_000_000), Err(Unusable::TimeOutOfRange));
        assert_eq!(
            pg_timestamp(0).unwrap(),
            NaiveDate::from_ymd_opt(2000, 1, 1)
                .unwrap()
                .and_hms_opt(0, 0, 0)
                .unwrap()
        );
        assert_eq!(
            pg_date(-1).unwrap(),
            NaiveDate::from_ymd_opt(1999, 12, 31).unwrap()
        );
    }

    proptest! {
        #[test]
        fn any_binary_time_decodes_or_is_unusable(micros in any::<i64>(), days in any::<i32>()) {
            if let Ok(t) = pg_timestamp(micros) {
                let back = (t - pg_epoch().and_time(chrono::NaiveTime::MIN)).num_microseconds();
                prop_assert_eq!(back, Some(micros));
            }
            if let Ok(d) = pg_date(days) {
                prop_assert_eq!((d - pg_epoch()).num_days(), i64::from(days));
            }
        }
    }
}
