//! One event's own rules: the top-level keys, `event_time`'s window, `action_source` and what
//! each source requires, `data_processing_options`, `app_data` and messaging events.

use super::custom_data::validate_custom_data;
use super::user_data::validate_user_data;
use super::{invalid, missing, non_empty_str, shown, ACTION_SOURCES};
use super::{MAX_AGE_PHYSICAL_STORE_SECS, MAX_AGE_SECS, MAX_FUTURE_SECS};
use crate::error::*;
use crate::json::{Jv, Object};

pub(super) fn validate_event(i: usize, ev: &Object<'_>, now: i64) -> Result<(), GraphError> {
    for (key, value) in ev.iter() {
        let known = match key {
            "event_name" | "event_time" | "user_data" | "action_source" | "custom_data"
            | "app_data" => true,
            "event_id"
            | "event_source_url"
            | "referrer_url"
            | "messaging_channel"
            | "customer_segmentation" => {
                if !value.is_string() {
                    return Err(invalid(i, key, "must be a string"));
                }
                true
            }
            "opt_out" => {
                if !value.is_boolean() {
                    return Err(invalid(i, key, "must be a boolean"));
                }
                true
            }
            "original_event_data" | "attribution_data" | "advanced_measurement_table" => {
                if !value.is_object() {
                    return Err(invalid(i, key, "must be an object"));
                }
                true
            }
            "data_processing_options"
            | "data_processing_options_country"
            | "data_processing_options_state" => true,
            _ => false,
        };
        if !known {
            return Err(invalid(
                i,
                shown(key),
                "is not a valid server event parameter",
            ));
        }
    }

    // event_name
    match ev.get("event_name") {
        None | Some(Jv::Null) => return Err(missing(i, "event_name")),
        Some(v) if !non_empty_str(v) => {
            return Err(invalid(i, "event_name", "must be a non-empty string"))
        }
        _ => {}
    }
    let event_name = ev
        .get("event_name")
        .and_then(Jv::as_str)
        .unwrap_or_default();

    // event_time: a JSON integer, Unix seconds.
    let event_time = match ev.get("event_time") {
        None | Some(Jv::Null) => return Err(missing(i, "event_time")),
        Some(Jv::I64(t)) => *t,
        Some(Jv::U64(t)) => i64::try_from(*t).unwrap_or(i64::MAX),
        Some(Jv::F64(_)) => {
            return Err(invalid(
                i,
                "event_time",
                "must be an integer (Unix seconds), not a float",
            ))
        }
        Some(_) => {
            return Err(invalid(
                i,
                "event_time",
                "must be a JSON integer (Unix seconds)",
            ))
        }
    };

    // action_source
    let action_source = match ev.get("action_source") {
        None | Some(Jv::Null) => return Err(missing(i, "action_source")),
        Some(Jv::Str(s)) if ACTION_SOURCES.contains(&s.as_ref()) => s.as_ref(),
        Some(_) => return Err(invalid(i, "action_source", "must be one of email, website, app, phone_call, chat, physical_store, system_generated, business_messaging, other")),
    };

    // event_time window
    let max_age = if action_source == "physical_store" {
        MAX_AGE_PHYSICAL_STORE_SECS
    } else {
        MAX_AGE_SECS
    };
    if now.saturating_sub(event_time) > max_age {
        return Err(GraphError::event(
            SUB_TIMESTAMP_TOO_OLD,
            "Event Timestamp Too Old",
            format!(
                "data[{i}].event_time is more than {} days in the past; events that old cannot be sent",
                max_age / 86_400
            ),
        ));
    }
    if event_time.saturating_sub(now) > MAX_FUTURE_SECS {
        return Err(GraphError::event(
            SUB_TIMESTAMP_IN_FUTURE,
            "Event Timestamp In The Future",
            format!(
                "data[{i}].event_time is more than {} minutes in the future",
                MAX_FUTURE_SECS / 60
            ),
        ));
    }

    // user_data
    let user_data = match ev.get("user_data") {
        None | Some(Jv::Null) => return Err(missing(i, "user_data")),
        Some(Jv::Obj(m)) => m,
        Some(_) => return Err(invalid(i, "user_data", "must be an object")),
    };
    validate_user_data(i, user_data)?;

    // custom_data
    let custom_data = match ev.get("custom_data") {
        None => None,
        Some(Jv::Obj(m)) => Some(m),
        Some(_) => return Err(invalid(i, "custom_data", "must be an object")),
    };
    if let Some(cd) = custom_data {
        validate_custom_data(i, cd)?;
    }
    if event_name == "Purchase" {
        let value_ok = custom_data
            .and_then(|c| c.get("value"))
            .is_some_and(Jv::is_number);
        let currency_ok = custom_data
            .and_then(|c| c.get("currency"))
            .is_some_and(|v| v.is_string());
        if !value_ok || !currency_ok {
            let field = if !value_ok {
                "custom_data.value"
            } else {
                "custom_data.currency"
            };
            return Err(GraphError::event(
                SUB_PURCHASE_VALUE_CURRENCY,
                "Missing Purchase value or currency",
                format!("data[{i}].{field} is required for Purchase events (value: a number, currency: an ISO 4217 code)"),
            ));
        }
    }

    // event_id
    if let Some(v) = ev.get("event_id") {
        if !non_empty_str(v) {
            return Err(invalid(i, "event_id", "must be a non-empty string"));
        }
    }

    validate_dpo(i, ev)?;

    // per action_source
    match action_source {
        "website" => {
            match ev.get("event_source_url") {
                None => return Err(missing(i, "event_source_url (required for website events)")),
                Some(Jv::Str(s)) if is_http_url(s) => {}
                Some(_) => {
                    return Err(invalid(
                        i,
                        "event_source_url",
                        "must be an absolute http(s) URL",
                    ))
                }
            }
            if !user_data
                .get("client_user_agent")
                .is_some_and(non_empty_str)
            {
                return Err(missing(
                    i,
                    "user_data.client_user_agent (required for website events)",
                ));
            }
        }
        "app" => validate_app_data(i, ev.get("app_data"))?,
        "business_messaging" => validate_messaging(i, ev.get("messaging_channel"), user_data)?,
        "system_generated" => {
            let is_crm = custom_data
                .and_then(|c| c.get("event_source"))
                .and_then(Jv::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("crm"));
            if is_crm
                && !custom_data
                    .and_then(|c| c.get("lead_event_source"))
                    .is_some_and(non_empty_str)
            {
                return Err(missing(
                    i,
                    "custom_data.lead_event_source (required for CRM events)",
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

fn is_http_url(s: &str) -> bool {
    match url::Url::parse(s) {
        Ok(u) => matches!(u.scheme(), "http" | "https") && u.host().is_some(),
        Err(_) => false,
    }
}

/// `data_processing_options`: an array of strings (only `LDU` is defined); with LDU, country
/// (0 or 1) and state (0 or a 1000-range code) must be integers.
fn validate_dpo(i: usize, ev: &Object<'_>) -> Result<(), GraphError> {
    let mut ldu = false;
    if let Some(v) = ev.get("data_processing_options") {
        let Jv::Arr(items) = v else {
            return Err(invalid(
                i,
                "data_processing_options",
                "must be an array of strings",
            ));
        };
        for item in items {
            match item.as_str() {
                Some("LDU") => ldu = true,
                Some(_) => {
                    return Err(invalid(
                        i,
                        "data_processing_options",
                        "may only contain \"LDU\"",
                    ))
                }
                None => {
                    return Err(invalid(
                        i,
                        "data_processing_options",
                        "must be an array of strings",
                    ))
                }
            }
        }
    }
    let int_field = |key: &str| -> Result<Option<i64>, GraphError> {
        match ev.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(i, key, "must be an integer")),
        }
    };
    let country = int_field("data_processing_options_country")?;
    let state = int_field("data_processing_options_state")?;
    if ldu {
        let ldu_err = |msg: &str| {
            GraphError::event(
                SUB_LDU,
                "Limited Data Use selection required",
                format!("data[{i}].{msg}"),
            )
        };
        match country {
            None => {
                return Err(ldu_err(
                    "data_processing_options_country is required with LDU (0 or 1)",
                ))
            }
            Some(0 | 1) => {}
            Some(_) => return Err(ldu_err("data_processing_options_country must be 0 or 1")),
        }
        match state {
            None => {
                return Err(ldu_err(
                    "data_processing_options_state is required with LDU (0 or a state code)",
                ))
            }
            Some(0) | Some(1000..=1099) => {}
            Some(_) => {
                return Err(ldu_err(
                    "data_processing_options_state must be 0 or a 1000-range state code",
                ))
            }
        }
    }
    Ok(())
}

fn validate_app_data(i: usize, app_data: Option<&Jv<'_>>) -> Result<(), GraphError> {
    let ad = match app_data {
        None | Some(Jv::Null) => return Err(missing(i, "app_data (required for app events)")),
        Some(Jv::Obj(m)) => m,
        Some(_) => return Err(invalid(i, "app_data", "must be an object")),
    };
    match ad.get("advertiser_tracking_enabled") {
        None => return Err(missing(i, "app_data.advertiser_tracking_enabled")),
        Some(Jv::Bool(_)) => {}
        Some(v) if matches!(v.as_u64(), Some(0 | 1)) => {}
        Some(_) => {
            return Err(invalid(
                i,
                "app_data.advertiser_tracking_enabled",
                "must be 0 or 1",
            ))
        }
    }
    let extinfo = match ad.get("extinfo") {
        None => return Err(missing(i, "app_data.extinfo")),
        Some(Jv::Arr(a)) => a,
        Some(_) => {
            return Err(invalid(
                i,
                "app_data.extinfo",
                "must be an array of 16 elements",
            ))
        }
    };
    if extinfo.len() != 16 {
        return Err(invalid(
            i,
            "app_data.extinfo",
            "must have exactly 16 elements",
        ));
    }
    if !matches!(extinfo[0].as_str(), Some("a2" | "i2")) {
        return Err(invalid(
            i,
            "app_data.extinfo[0]",
            "must be \"a2\" (Android) or \"i2\" (iOS)",
        ));
    }
    if let Some(k) = extinfo
        .iter()
        .position(|v| !(v.is_string() || v.is_number()))
    {
        return Err(invalid(
            i,
            &format!("app_data.extinfo[{k}]"),
            "must be a string",
        ));
    }
    Ok(())
}

fn validate_messaging(
    i: usize,
    channel: Option<&Jv<'_>>,
    ud: &Object<'_>,
) -> Result<(), GraphError> {
    let channel = match channel {
        None | Some(Jv::Null) => {
            return Err(missing(
                i,
                "messaging_channel (required for business_messaging events)",
            ))
        }
        Some(Jv::Str(s)) => s.as_ref(),
        Some(_) => return Err(invalid(i, "messaging_channel", "must be a string")),
    };
    // Instagram: the docs disagree between `instagram_business_account_id` and `ig_account_id`;
    // either is accepted.
    let required: &[&[&str]] = match channel {
        "messenger" => &[&["page_id"], &["page_scoped_user_id"]],
        "whatsapp" => &[&["whatsapp_business_account_id"], &["ctwa_clid"]],
        "instagram" => &[
            &["instagram_business_account_id", "ig_account_id"],
            &["ig_sid"],
        ],
        _ => {
            return Err(invalid(
                i,
                "messaging_channel",
                "must be messenger, whatsapp or instagram",
            ))
        }
    };
    for alternatives in required {
        if !alternatives
            .iter()
            .any(|k| ud.get(k).is_some_and(non_empty_str))
        {
            return Err(GraphError::event(
                SUB_MESSAGING_IDS,
                "Missing business messaging parameter",
                format!(
                    "data[{i}].user_data.{} is required for {channel} business_messaging events",
                    alternatives[0]
                ),
            ));
        }
    }
    Ok(())
}
