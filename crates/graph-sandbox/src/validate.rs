//! Event validation: the rules Meta documents for `POST /{id}/events`, applied to every event of a
//! batch. The first invalid event rejects the whole request (Meta: "If any event you send in a
//! batch is invalid, we reject the entire batch").
//!
//! Works on the borrowed [`Jv`] values parsed once from the body; no regexes, no re-parsing.
//! Error messages name the event index and the field, never the value.

use super::json::{Jv, Object};

use super::currency::is_iso4217;
use super::error::*;

/// Maximum number of events per request.
pub const MAX_EVENTS: usize = 1000;
/// `event_time` may be at most this old (7 days)...
pub const MAX_AGE_SECS: i64 = 7 * 86_400;
/// ...or this old for `action_source = physical_store` (62 days; API enforcement UNCONFIRMED).
pub const MAX_AGE_PHYSICAL_STORE_SECS: i64 = 62 * 86_400;
/// Tolerance for an `event_time` in the future (Meta's tolerance is UNCONFIRMED).
pub const MAX_FUTURE_SECS: i64 = 600;

const ACTION_SOURCES: &[&str] = &[
    "email",
    "website",
    "app",
    "phone_call",
    "chat",
    "physical_store",
    "system_generated",
    "business_messaging",
    "other",
];

/// Checks the event count, then each event in order. `reject` is the fault hook: given an event's
/// `event_id`, says whether the sandbox must treat the event as invalid.
pub fn validate_batch(
    events: &[Jv<'_>],
    now: i64,
    reject: &dyn Fn(&str) -> bool,
) -> Result<(), GraphError> {
    if events.is_empty() || events.len() > MAX_EVENTS {
        return Err(GraphError::event(
            SUB_BATCH_SIZE,
            "Invalid number of events",
            format!(
                "data must hold 1 to {MAX_EVENTS} events; it holds {}",
                events.len()
            ),
        ));
    }
    for (i, ev) in events.iter().enumerate() {
        let Some(ev) = ev.as_object() else {
            return Err(GraphError::invalid_parameter(format!(
                "data[{i}] must be an object"
            )));
        };
        validate_event(i, ev, now)?;
        if let Some(Jv::Str(id)) = ev.get("event_id") {
            if reject(id) {
                return Err(GraphError::event(
                    SUB_INVALID_EVENT_PARAMETER,
                    "Invalid event",
                    format!("data[{i}] (event_id): the event was rejected as invalid (sandbox reject fault)"),
                ));
            }
        }
    }
    Ok(())
}

// --- helpers ---------------------------------------------------------------------------------

fn missing(i: usize, field: &str) -> GraphError {
    GraphError::event(
        SUB_MISSING_PARAMETER,
        "Missing required parameter",
        format!("data[{i}].{field} is required"),
    )
}

fn invalid(i: usize, field: &str, why: &str) -> GraphError {
    GraphError::event(
        SUB_INVALID_EVENT_PARAMETER,
        "Invalid parameter",
        format!("data[{i}].{field} {why}"),
    )
}

fn invalid_user_data(i: usize, field: &str, why: &str) -> GraphError {
    GraphError::event(
        SUB_INVALID_USER_DATA,
        "Invalid customer information parameter",
        format!("data[{i}].user_data.{field} {why}"),
    )
}

/// A key is shown only if it is short and plain; anything else is not echoed.
fn shown(key: &str) -> &str {
    if key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        key
    } else {
        "(unprintable key)"
    }
}

fn non_empty_str(v: &Jv<'_>) -> bool {
    matches!(v, Jv::Str(s) if !s.trim().is_empty())
}

// --- one event -------------------------------------------------------------------------------

fn validate_event(i: usize, ev: &Object<'_>, now: i64) -> Result<(), GraphError> {
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

fn validate_custom_data(i: usize, cd: &Object<'_>) -> Result<(), GraphError> {
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

// --- user_data -------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Must be SHA-256: lowercase 64-hex, optionally `.` + 8-char base64url appendix. String or array.
    Hashed,
    /// Raw or hashed: non-empty string or array of non-empty strings.
    ExternalId,
    Ip,
    Fbc,
    Fbp,
    LeadId,
    FbLoginId,
    /// A plain non-empty string (never hashed, no arrays).
    Text,
}

fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "em" | "ph" | "fn" | "ln" | "ct" | "st" | "zp" | "country" | "db" | "ge" => Kind::Hashed,
        // Legacy split keys that the SDKs still hash (whether Meta honours them is UNCONFIRMED).
        "f5first" | "f5last" | "fi" | "dobd" | "dobm" | "doby" => Kind::Hashed,
        "external_id" => Kind::ExternalId,
        "client_ip_address" => Kind::Ip,
        "fbc" => Kind::Fbc,
        "fbp" => Kind::Fbp,
        "lead_id" => Kind::LeadId,
        "fb_login_id" => Kind::FbLoginId,
        "client_user_agent"
        | "subscription_id"
        | "anon_id"
        | "madid"
        | "page_id"
        | "page_scoped_user_id"
        | "ctwa_clid"
        | "ig_account_id"
        | "ig_sid"
        | "whatsapp_business_account_id"
        | "instagram_business_account_id" => Kind::Text,
        _ => return None,
    })
}

// Bits for the keys that appear in the too-broad sets (§3.3).
const B_CT: u16 = 1;
const B_COUNTRY: u16 = 1 << 1;
const B_ST: u16 = 1 << 2;
const B_ZP: u16 = 1 << 3;
const B_GE: u16 = 1 << 4;
const B_UA: u16 = 1 << 5;
const B_DB: u16 = 1 << 6;
const B_FN: u16 = 1 << 7;
const B_LN: u16 = 1 << 8;
/// Any other identifier: never too broad.
const B_OTHER: u16 = 1 << 15;

const TOO_BROAD: [u16; 4] = [
    B_CT | B_COUNTRY | B_ST | B_ZP | B_GE | B_UA,
    B_DB | B_UA,
    B_FN | B_GE,
    B_LN | B_GE,
];

fn bit_of(key: &str) -> u16 {
    match key {
        "ct" => B_CT,
        "country" => B_COUNTRY,
        "st" => B_ST,
        "zp" => B_ZP,
        "ge" => B_GE,
        "client_user_agent" => B_UA,
        "db" => B_DB,
        "fn" => B_FN,
        "ln" => B_LN,
        _ => B_OTHER,
    }
}

fn validate_user_data(i: usize, ud: &Object<'_>) -> Result<(), GraphError> {
    let mut present: u16 = 0;
    for (key, value) in ud.iter() {
        let Some(kind) = kind_of(key) else {
            return Err(invalid_user_data(
                i,
                shown(key),
                "is not a valid customer information parameter",
            ));
        };
        if value.is_null() {
            return Err(invalid_user_data(
                i,
                key,
                "must not be null (omit the key instead)",
            ));
        }
        if check_user_value(i, key, kind, value)? {
            present |= bit_of(key);
        }
    }
    if present == 0 {
        return Err(insufficient(i, "has no customer information parameters"));
    }
    if present & B_OTHER == 0 && TOO_BROAD.iter().any(|set| present & !set == 0) {
        return Err(insufficient(
            i,
            "only has a combination of customer information parameters too broad to match",
        ));
    }
    Ok(())
}

fn insufficient(i: usize, what: &str) -> GraphError {
    GraphError::event(
        SUB_INSUFFICIENT_CUSTOMER_INFO,
        "Insufficient customer information",
        format!(
            "data[{i}].user_data {what}; add a strong identifier such as em, ph, external_id, fbc, fbp, client_ip_address, lead_id or fn+ln"
        ),
    )
}

/// Validates one user_data value; returns whether it counts as a present identifier
/// (an empty array does not).
fn check_user_value(i: usize, key: &str, kind: Kind, value: &Jv<'_>) -> Result<bool, GraphError> {
    match kind {
        Kind::Hashed => {
            let check = |s: &str, at: Option<usize>| -> Result<(), GraphError> {
                if is_hashed(s) {
                    return Ok(());
                }
                let field = match at {
                    Some(k) => format!("{key}[{k}]"),
                    None => key.to_owned(),
                };
                Err(GraphError::event(
                    SUB_NOT_HASHED,
                    "Unhashed customer information",
                    format!(
                        "data[{i}].user_data.{field} must be a lowercase hex SHA-256 digest of the normalized value \
                         (optionally followed by a Parameter Builder appendix); this value is not hashed"
                    ),
                ))
            };
            match value {
                Jv::Str(s) => check(s, None).map(|_| true),
                Jv::Arr(items) => {
                    for (k, item) in items.iter().enumerate() {
                        match item {
                            Jv::Str(s) => check(s, Some(k))?,
                            _ => {
                                return Err(invalid_user_data(
                                    i,
                                    &format!("{key}[{k}]"),
                                    "must be a string",
                                ))
                            }
                        }
                    }
                    Ok(!items.is_empty())
                }
                _ => Err(invalid_user_data(
                    i,
                    key,
                    "must be a string or an array of strings",
                )),
            }
        }
        Kind::ExternalId => match value {
            Jv::Str(s) if !s.is_empty() => Ok(true),
            Jv::Arr(items) => {
                if let Some(k) = items
                    .iter()
                    .position(|v| !matches!(v, Jv::Str(s) if !s.is_empty()))
                {
                    return Err(invalid_user_data(
                        i,
                        &format!("{key}[{k}]"),
                        "must be a non-empty string",
                    ));
                }
                Ok(!items.is_empty())
            }
            _ => Err(invalid_user_data(
                i,
                key,
                "must be a non-empty string or an array of strings",
            )),
        },
        Kind::Ip => match value {
            Jv::Str(s) if is_ip(s) => Ok(true),
            _ => Err(invalid_user_data(
                i,
                key,
                "must be a valid IPv4 or IPv6 address (unhashed)",
            )),
        },
        Kind::Fbc | Kind::Fbp => match value {
            Jv::Str(s) if is_fb_cookie(s) => Ok(true),
            _ => Err(invalid_user_data(
                i,
                key,
                "must have the format fb.<subdomain index>.<creation time ms>.<value>",
            )),
        },
        Kind::LeadId => {
            // A JSON integer of 15-17 digits. serde_json parses integer literals into u64 exactly
            // (17 digits < 2^64), so no float rounding is involved. Digit strings are rejected:
            // whether Meta accepts them is UNCONFIRMED, and capi-sync sends integers.
            let ok = value
                .as_u64()
                .is_some_and(|n| (100_000_000_000_000..100_000_000_000_000_000).contains(&n));
            if ok {
                Ok(true)
            } else {
                Err(GraphError::event(
                    SUB_INVALID_LEAD_ID,
                    "Invalid lead ID",
                    format!(
                        "data[{i}].user_data.lead_id must be a JSON integer of 15 to 17 digits"
                    ),
                ))
            }
        }
        Kind::FbLoginId => match value.as_u64() {
            Some(n) if n > 0 => Ok(true),
            _ => Err(invalid_user_data(i, key, "must be a positive JSON integer")),
        },
        Kind::Text => match value {
            Jv::Str(s) if !s.trim().is_empty() => Ok(true),
            _ => Err(invalid_user_data(i, key, "must be a non-empty string")),
        },
    }
}

/// `LOWER_HEX[b]` is true for `0-9` and `a-f`.
static LOWER_HEX: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = true;
        c += 1;
    }
    let mut c = b'a';
    while c <= b'f' {
        t[c as usize] = true;
        c += 1;
    }
    t
};

fn is_lower_hex64(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().fold(true, |ok, &c| ok & LOWER_HEX[c as usize])
}

fn is_base64url(b: &[u8]) -> bool {
    b.iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Lowercase 64-hex, optionally followed by `.` and an 8-character base64url appendix.
pub fn is_hashed(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        64 => is_lower_hex64(b),
        73 => is_lower_hex64(&b[..64]) && b[64] == b'.' && is_base64url(&b[65..]),
        _ => false,
    }
}

/// A valid IP address, optionally followed by a Parameter Builder appendix.
fn is_ip(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once('.') {
        Some((ip, appendix)) if appendix.len() == 8 && is_base64url(appendix.as_bytes()) => {
            ip.parse::<std::net::IpAddr>().is_ok()
        }
        _ => false,
    }
}

/// `fb.<digits>.<digits>.<payload>` (the payload may carry a `.appendix`).
fn is_fb_cookie(s: &str) -> bool {
    let mut parts = s.splitn(4, '.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    parts.next() == Some("fb")
        && digits(parts.next())
        && digits(parts.next())
        && parts.next().is_some_and(|p| {
            !p.is_empty()
                && !p
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        })
}

#[cfg(test)]
mod tests {
    use super::super::json as crate_json;
    use super::*;
    use serde_json::{json, Map, Value};

    const H: &str = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f";
    const NOW: i64 = 1_800_000_000;

    fn base() -> Value {
        json!({
            "event_name": "Lead", "event_time": NOW - 60, "action_source": "email",
            "user_data": {"em": [H]}
        })
    }

    fn jv(v: &Value) -> Jv<'static> {
        crate_json::parse(&serde_json::to_vec(v).unwrap())
            .unwrap()
            .into_owned()
    }

    fn check(ev: Value) -> Result<(), GraphError> {
        validate_batch(&[jv(&ev)], NOW, &|_| false)
    }

    fn sub(ev: Value) -> Option<i64> {
        check(ev).unwrap_err().subcode
    }

    #[test]
    fn base_event_is_valid() {
        check(base()).unwrap();
    }

    #[test]
    fn hashed_values() {
        assert!(is_hashed(H));
        assert!(is_hashed(&format!("{H}.AQQCAQIB")));
        assert!(!is_hashed(&H.to_uppercase()));
        assert!(!is_hashed("john@example.com"));
        assert!(!is_hashed(&format!("{H}.AQQ")));
        let mut ev = base();
        ev["user_data"]["em"] = json!("John@Example.com");
        assert_eq!(sub(ev), Some(SUB_NOT_HASHED));
    }

    #[test]
    fn error_messages_do_not_echo_values() {
        let mut ev = base();
        ev["user_data"]["em"] = json!(["secret@example.com"]);
        let e = check(ev).unwrap_err();
        let all = format!("{} {} {}", e.message, e.user_title, e.user_msg);
        assert!(!all.contains("secret"), "{all}");
        assert!(all.contains("data[0].user_data.em[0]"), "{all}");
    }

    #[test]
    fn too_broad_sets() {
        for keys in [
            &["fn", "ge"][..],
            &["ln"],
            &["ct", "st", "country", "client_user_agent"],
            &["db", "client_user_agent"],
            &["client_user_agent"],
        ] {
            let mut ev = base();
            let mut ud = Map::new();
            for k in keys {
                let v = if *k == "client_user_agent" {
                    json!("Mozilla/5.0")
                } else {
                    json!(H)
                };
                ud.insert((*k).to_owned(), v);
            }
            ev["user_data"] = Value::Object(ud);
            assert_eq!(sub(ev), Some(SUB_INSUFFICIENT_CUSTOMER_INFO), "{keys:?}");
        }
        let mut ev = base();
        ev["user_data"] = json!({"fn": H, "ln": H});
        check(ev).unwrap();
        let mut ev = base();
        ev["user_data"] = json!({"em": []});
        assert_eq!(sub(ev), Some(SUB_INSUFFICIENT_CUSTOMER_INFO));
    }

    #[test]
    fn time_window() {
        let mut ev = base();
        ev["event_time"] = json!(NOW - 8 * 86_400);
        assert_eq!(sub(ev.clone()), Some(SUB_TIMESTAMP_TOO_OLD));
        ev["action_source"] = json!("physical_store");
        check(ev.clone()).unwrap();
        ev["event_time"] = json!(NOW - 63 * 86_400);
        assert_eq!(sub(ev.clone()), Some(SUB_TIMESTAMP_TOO_OLD));
        ev["event_time"] = json!(NOW + 601);
        assert_eq!(sub(ev.clone()), Some(SUB_TIMESTAMP_IN_FUTURE));
        ev["event_time"] = json!(NOW + 600);
        check(ev.clone()).unwrap();
        ev["event_time"] = json!(1.8e9);
        assert_eq!(sub(ev.clone()), Some(SUB_INVALID_EVENT_PARAMETER));
        ev["event_time"] = json!("1800000000");
        assert_eq!(sub(ev), Some(SUB_INVALID_EVENT_PARAMETER));
    }

    #[test]
    fn lead_id_digits() {
        let mut ev = base();
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        for (lit, ok) in [
            ("12345678901234567", true),
            ("123456789012345", true),
            ("99999999999999999", true),
            ("12345678901234", false),
            ("123456789012345678", false),
            ("\"12345678901234567\"", false),
            ("1.2345678901234567e16", false),
        ] {
            ev["user_data"]["lead_id"] = parse(lit);
            assert_eq!(check(ev.clone()).is_ok(), ok, "{lit}");
        }
        // exact round-trip of a 17-digit id
        let v = parse(r#"{"lead_id": 98765432109876543}"#);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"lead_id":98765432109876543}"#
        );
    }

    #[test]
    fn per_source_requirements() {
        let mut ev = base();
        ev["action_source"] = json!("app");
        assert_eq!(sub(ev.clone()), Some(SUB_MISSING_PARAMETER));
        let mut ext = vec![json!(""); 16];
        ext[0] = json!("i2");
        ev["app_data"] = json!({"advertiser_tracking_enabled": 1, "extinfo": ext});
        check(ev.clone()).unwrap();
        ev["app_data"]["extinfo"] = json!(["a2"]);
        assert_eq!(sub(ev), Some(SUB_INVALID_EVENT_PARAMETER));

        let mut ev = base();
        ev["action_source"] = json!("business_messaging");
        ev["messaging_channel"] = json!("whatsapp");
        ev["user_data"]["ctwa_clid"] = json!("abc");
        assert_eq!(sub(ev.clone()), Some(SUB_MESSAGING_IDS));
        ev["user_data"]["whatsapp_business_account_id"] = json!("123");
        check(ev).unwrap();

        let mut ev = base();
        ev["action_source"] = json!("system_generated");
        ev["custom_data"] = json!({"event_source": "crm"});
        assert_eq!(sub(ev.clone()), Some(SUB_MISSING_PARAMETER));
        ev["custom_data"]["lead_event_source"] = json!("Salesforce");
        check(ev).unwrap();
    }

    #[test]
    fn ldu_needs_country_and_state() {
        let mut ev = base();
        ev["data_processing_options"] = json!(["LDU"]);
        assert_eq!(sub(ev.clone()), Some(SUB_LDU));
        ev["data_processing_options_country"] = json!(1);
        ev["data_processing_options_state"] = json!(1000);
        check(ev.clone()).unwrap();
        ev["data_processing_options"] = json!([]);
        check(ev).unwrap();
    }

    #[test]
    fn purchase_and_currency() {
        let mut ev = base();
        ev["event_name"] = json!("Purchase");
        assert_eq!(sub(ev.clone()), Some(SUB_PURCHASE_VALUE_CURRENCY));
        ev["custom_data"] = json!({"value": 10.5, "currency": "usd"});
        check(ev.clone()).unwrap();
        ev["custom_data"]["currency"] = json!("XYZ");
        assert_eq!(sub(ev.clone()), Some(SUB_PURCHASE_VALUE_CURRENCY));
        ev["custom_data"] = json!({"value": "10.5", "currency": "EUR"});
        assert_eq!(sub(ev), Some(SUB_PURCHASE_VALUE_CURRENCY));
    }

    #[test]
    fn cookies_and_ip() {
        assert!(is_fb_cookie("fb.1.1554763741205.AbCdEfGh"));
        assert!(is_fb_cookie("fb.1.1596403881668.1116446470.AQQAAQIB"));
        assert!(!is_fb_cookie("fb.1.abc.x"));
        assert!(!is_fb_cookie("fb.1.123."));
        assert!(!is_fb_cookie("xx.1.123.abc"));
        assert!(is_ip("168.212.226.204"));
        assert!(is_ip("2001:db8::1"));
        assert!(is_ip("2001:db8::1.AQQAAQIB"));
        assert!(!is_ip("999.1.1.1"));
    }

    #[test]
    fn unknown_keys_rejected() {
        let mut ev = base();
        ev["user_data"]["email"] = json!(H);
        assert_eq!(sub(ev), Some(SUB_INVALID_USER_DATA));
        let mut ev = base();
        ev["foo"] = json!(1);
        assert_eq!(sub(ev), Some(SUB_INVALID_EVENT_PARAMETER));
    }

    #[test]
    fn batch_size_limits() {
        assert_eq!(
            validate_batch(&[], NOW, &|_| false).unwrap_err().subcode,
            Some(SUB_BATCH_SIZE)
        );
        let many = vec![jv(&base()); 1001];
        assert_eq!(
            validate_batch(&many, NOW, &|_| false).unwrap_err().subcode,
            Some(SUB_BATCH_SIZE)
        );
        let ok = vec![jv(&base()); 1000];
        validate_batch(&ok, NOW, &|_| false).unwrap();
    }
}
