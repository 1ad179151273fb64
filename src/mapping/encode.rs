//! One parameter's value as the event's JSON: user_data fields normalized and hashed (or sent
//! plain), and custom_data values, checked against Meta's rules; a value that cannot go is
//! dropped with its reason, or refuses the row.

use super::json::write_str;
use super::reason::RefusalReason;
use super::rules::{self, Refusal};
use super::value::Value;
use crate::normalize::{self, Hashed, NormalizeContext, PiiField, PiiInput};
use std::borrow::Cow;

/// A value of one field dropped from an event (the event itself may still go).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DroppedValue {
    /// The parameter: a `user_data` key (`em`), or a path for free-form keys
    /// (`custom_data.plan`).
    pub field: Cow<'static, str>,
    pub reason: &'static str,
}

impl DroppedValue {
    pub fn new(field: &'static str, reason: &'static str) -> DroppedValue {
        DroppedValue {
            field: Cow::Borrowed(field),
            reason,
        }
    }
}

pub(super) fn hash_values(
    field: PiiField,
    value: &Value,
    ctx: &NormalizeContext<'_>,
    hashes: &mut Vec<Hashed>,
    dropped: &mut Vec<DroppedValue>,
) {
    let mut one = |input: PiiInput<'_>| match normalize::normalize_and_hash(field, input, ctx) {
        Ok(h) => {
            if !hashes.contains(&h) {
                hashes.push(h)
            }
        }
        Err(reason) => dropped.push(DroppedValue::new(field.key(), reason.code())),
    };
    match value {
        Value::Null => {}
        Value::Text(s) => one(PiiInput::Text(s)),
        Value::Numeric(s) => one(PiiInput::Text(s)),
        Value::Int(i) => one(PiiInput::Int(*i)),
        Value::Date(d) => one(PiiInput::Date(*d)),
        Value::Timestamp(t) => one(PiiInput::Date(t.date())),
        Value::TimestampTz(t) => one(PiiInput::Date(t.date_naive())),
        Value::TextArray(items) => {
            for s in items.iter().flatten() {
                if !s.trim().is_empty() {
                    one(PiiInput::Text(s));
                }
            }
        }
        Value::Json(serde_json::Value::Array(items)) => {
            for item in items {
                match item {
                    serde_json::Value::String(s) => one(PiiInput::Text(s)),
                    serde_json::Value::Number(n) => one(PiiInput::Text(&n.to_string())),
                    _ => {}
                }
            }
        }
        Value::Json(serde_json::Value::String(s)) => one(PiiInput::Text(s)),
        Value::Bool(_) | Value::Float(_) | Value::Json(_) => {
            dropped.push(DroppedValue::new(field.key(), "unsupported_type"))
        }
        Value::Unusable(u) => dropped.push(DroppedValue::new(field.key(), u.reason())),
    }
}

/// Hashes (or raw external ids, which may need escaping) as a JSON string or array.
pub(super) fn write_string_or_array(out: &mut String, items: &[Hashed], escape: bool) {
    let one = |out: &mut String, s: &str| {
        if escape {
            write_str(out, s);
        } else {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
    };
    if items.len() == 1 {
        one(out, &items[0]);
    } else {
        out.push('[');
        for (i, s) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            one(out, s);
        }
        out.push(']');
    }
}

pub(super) fn plain_user_data(key: &str, value: &Value) -> Result<Option<String>, &'static str> {
    let Some(text) = value.as_text() else {
        return Err("unsupported_type");
    };
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if key == "client_ip_address" && t.parse::<std::net::IpAddr>().is_err() {
        return Err("invalid_ip_address");
    }
    Ok(Some(t.to_string()))
}

/// Decimal digits of an integer value, never via floating point (17-digit lead IDs exceed 2^53).
pub(super) fn integer_digits(value: &Value) -> Option<String> {
    let digits = |s: &str| -> Option<String> {
        let t = s.trim();
        let t = t.strip_suffix(".0").unwrap_or(t);
        let (sign, body) = match t.strip_prefix('-') {
            Some(b) => ("-", b),
            None => ("", t),
        };
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let trimmed = body.trim_start_matches('0');
        Some(if trimmed.is_empty() {
            "0".into()
        } else {
            format!("{sign}{trimmed}")
        })
    };
    match value {
        Value::Int(i) => Some(i.to_string()),
        Value::Numeric(s) | Value::Text(s) => digits(s),
        Value::Json(serde_json::Value::Number(n)) => digits(&n.to_string()),
        Value::Json(serde_json::Value::String(s)) => digits(s),
        _ => None,
    }
}

pub(super) fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Int(i) => Some(*i != 0),
        Value::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "1" => Some(true),
            "false" | "f" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn dpo_array(v: &Value) -> String {
    let items: Vec<String> = match v {
        Value::TextArray(a) => a
            .iter()
            .flatten()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Value::Json(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        other => other
            .as_text()
            .map(|t| {
                t.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(&mut out, s);
    }
    out.push(']');
    out
}

/// Generic value → JSON text for free-form keys.
pub(super) fn json_of(v: &Value) -> String {
    match v {
        Value::Text(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            write_str(&mut out, s);
            out
        }
        Value::Int(i) => i.to_string(),
        Value::Numeric(s) if rules::is_json_number(s) => s.to_string(),
        other => serde_json::to_string(&other.to_json()).unwrap_or_else(|_| "null".into()),
    }
}

pub(super) fn custom_value(key: &str, v: &Value) -> Result<String, Refusal> {
    match key {
        "value" | "predicted_ltv" | "net_revenue" => rules::number_json(v).ok_or_else(|| {
            Refusal::new(
                RefusalReason::InvalidValue,
                format!(
                    "custom_data.{key} is not a number (Meta requires a numeric monetary value)"
                ),
            )
        }),
        "currency" => {
            let text = v
                .as_text()
                .map(|t| t.trim().to_ascii_uppercase())
                .unwrap_or_default();
            if rules::is_iso_currency(&text) {
                Ok(format!("\"{text}\""))
            } else {
                Err(Refusal::new(
                    RefusalReason::InvalidCurrency,
                    "custom_data.currency is not an ISO 4217 code such as USD or EUR",
                ))
            }
        }
        "num_items" => integer_digits(v).ok_or_else(|| {
            Refusal::new(
                RefusalReason::InvalidNumItems,
                "custom_data.num_items is not an integer",
            )
        }),
        "content_ids" => Ok(match v {
            Value::Text(s) => {
                let mut out = String::from("[");
                write_str(&mut out, s);
                out.push(']');
                out
            }
            Value::Int(i) => format!("[\"{i}\"]"),
            other => json_of(other),
        }),
        "contents" => match v {
            Value::Text(s) => serde_json::from_str::<serde_json::Value>(s)
                .ok()
                .filter(|j| j.is_array())
                .map(|j| j.to_string())
                .ok_or_else(|| {
                    Refusal::new(
                        RefusalReason::InvalidContents,
                        "custom_data.contents is not a JSON array",
                    )
                }),
            Value::Json(j) if j.is_array() => Ok(j.to_string()),
            _ => Err(Refusal::new(
                RefusalReason::InvalidContents,
                "custom_data.contents is not a JSON array",
            )),
        },
        _ => Ok(json_of(v)),
    }
}
