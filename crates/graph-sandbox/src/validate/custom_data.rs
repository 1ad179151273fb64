//! `custom_data`: its documented keys and their types (value, currency, contents, …).

use super::invalid;
use crate::currency::is_iso4217;
use crate::error::*;
use crate::json::{Jv, Object};

pub(super) fn validate_custom_data(i: usize, cd: &Object<'_>) -> Result<(), GraphError> {
    if let Some(v) = cd.get("value") {
        if !v.is_number() {
            return Err(GraphError::event(
                SUB_PURCHASE_VALUE_CURRENCY,
                "Invalid value",
                format!("data[{i}].custom_data.value must be a JSON number"),
            ));
        }
    }
    if let Some(c) = cd.get("currency") {
        let ok = matches!(c, Jv::Str(s) if is_iso4217(s));
        if !ok {
            return Err(GraphError::event(
                SUB_PURCHASE_VALUE_CURRENCY,
                "Invalid currency",
                format!(
                    "data[{i}].custom_data.currency must be an active ISO 4217 three-letter code"
                ),
            ));
        }
    }
    // order_id: Meta types it as a string; a JSON integer (an integer column) is tolerated.
    if let Some(v) = cd.get("order_id") {
        if !(v.is_string() || v.is_integer()) {
            return Err(invalid(i, "custom_data.order_id", "must be a string"));
        }
    }
    for key in ["event_source", "lead_event_source", "content_type"] {
        if let Some(v) = cd.get(key) {
            if !v.is_string() {
                return Err(invalid(
                    i,
                    &format!("custom_data.{key}"),
                    "must be a string",
                ));
            }
        }
    }
    if let Some(v) = cd.get("contents") {
        if !v.as_array().is_some_and(|a| a.iter().all(Jv::is_object)) {
            return Err(invalid(
                i,
                "custom_data.contents",
                "must be an array of objects",
            ));
        }
    }
    if let Some(v) = cd.get("content_ids") {
        if !v.is_array() {
            return Err(invalid(i, "custom_data.content_ids", "must be an array"));
        }
    }
    Ok(())
}
