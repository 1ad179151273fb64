//! Meta's event-level rules, checked before anything is sent (capi-reference.md §10).
//! A row that breaks one is refused with a stable reason code and a detail that never
//! contains customer data.

use super::identifiers::Identifiers;
use super::reason::RefusalReason;
use super::value::Value;

/// Events older than this are refused by Meta for the whole request (code 100/2804003).
pub const MAX_AGE_SECS: i64 = 7 * 86_400;
/// Meta's offline guide: upload `physical_store` transactions within 62 days.
pub const MAX_AGE_PHYSICAL_STORE_SECS: i64 = 62 * 86_400;
/// Meta documents no tolerance for future timestamps; we allow a small clock skew.
pub const MAX_FUTURE_SECS: i64 = 5 * 60;

/// Why a row is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable snake_case code (`event_time_too_old`, `no_customer_information`, ...).
    pub reason: RefusalReason,
    /// What to fix, with no customer data in it.
    pub detail: String,
    pub event_id: Option<String>,
}

impl Refusal {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
            event_id: None,
        }
    }

    pub fn with_event_id(mut self, id: Option<String>) -> Refusal {
        if self.event_id.is_none() {
            self.event_id = id;
        }
        self
    }
}

/// `event_time` in Unix seconds from a timestamp, date or integer-seconds column.
pub fn event_time_seconds(v: &Value) -> Result<i64, Refusal> {
    let bad =
        |why: &str| Refusal::new(RefusalReason::InvalidEventTime, format!("event_time {why}"));
    let check_int = |secs: i64| {
        // Unix seconds in 13 digits would be year 33658: such values are milliseconds.
        if secs > 99_999_999_999 {
            Err(bad("looks like milliseconds; Meta expects Unix seconds"))
        } else if secs <= 0 {
            Err(bad("is not a positive Unix time in seconds"))
        } else {
            Ok(secs)
        }
    };
    match v {
        Value::TimestampTz(t) => Ok(t.timestamp()),
        Value::Timestamp(t) => Ok(t.and_utc().timestamp()),
        Value::Date(d) => Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or(0)),
        Value::Int(i) => check_int(*i),
        Value::Numeric(s) | Value::Text(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i64>() {
                return check_int(i);
            }
            if let Some(whole) = t.split_once('.').and_then(|(w, _)| w.parse::<i64>().ok()) {
                return check_int(whole);
            }
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.timestamp())
                .map_err(|_| bad("is neither a timestamp nor Unix seconds"))
        }
        _ => Err(bad("has a type that is not a time")),
    }
}

/// What the rules look at.
pub struct EventFacts<'a> {
    pub event_name: &'a str,
    pub event_time: i64,
    pub now: i64,
    pub action_source: &'a str,
    pub has_event_source_url: bool,
    pub identifiers: Identifiers,
    pub custom_keys: &'a [&'a str],
    pub custom_event_source_is_crm: bool,
    pub lead_id_digits: Option<&'a str>,
    pub nested_keys: &'a [(&'a str, &'a str)],
    pub messaging_channel: Option<&'a str>,
}

/// Identifier sets that Meta rejects as too broad when an event carries nothing beyond one
/// of them (best-practices page, since Graph v13.0; capi-reference.md §3.3).
const TOO_BROAD_SETS: [&[&str]; 4] = [
    &["ct", "country", "st", "zp", "ge", "client_user_agent"],
    &["db", "client_user_agent"],
    &["fn", "ge"],
    &["ln", "ge"],
];

pub fn check(f: &EventFacts<'_>) -> Result<(), Refusal> {
    if !crate::config::ACTION_SOURCES.contains(&f.action_source) {
        return Err(Refusal::new(
            RefusalReason::InvalidActionSource,
            // The row's own value is not quoted: a detail never carries a row's value.
            format!(
                "action_source is not one of {}",
                crate::config::ACTION_SOURCES.join(", ")
            ),
        ));
    }
    let max_age = if f.action_source == "physical_store" {
        MAX_AGE_PHYSICAL_STORE_SECS
    } else {
        MAX_AGE_SECS
    };
    let age = f.now - f.event_time;
    if age > max_age {
        return Err(Refusal::new(
            RefusalReason::EventTimeTooOld,
            format!(
                "event_time is {} days old; Meta accepts at most {} days for action_source {}",
                age / 86_400,
                max_age / 86_400,
                f.action_source
            ),
        ));
    }
    if -age > MAX_FUTURE_SECS {
        return Err(Refusal::new(
            RefusalReason::EventTimeInFuture,
            format!("event_time is {} minutes in the future", (-age) / 60),
        ));
    }
    match f.action_source {
        "website" => {
            if !f.has_event_source_url {
                return Err(Refusal::new(
                    RefusalReason::MissingEventSourceUrl,
                    "website events need event_source_url",
                ));
            }
            if !f.identifiers.has("client_user_agent") {
                return Err(Refusal::new(
                    RefusalReason::MissingClientUserAgent,
                    "website events need user_data.client_user_agent",
                ));
            }
        }
        "app" => {
            let has = |k: &str| {
                f.nested_keys
                    .iter()
                    .any(|(o, key)| *o == "app_data" && *key == k)
            };
            if !has("advertiser_tracking_enabled") || !has("extinfo") {
                return Err(Refusal::new(
                    RefusalReason::MissingAppData,
                    "app events need app_data.advertiser_tracking_enabled and app_data.extinfo",
                ));
            }
        }
        "business_messaging" => {
            let needed: &[&str] = match f.messaging_channel {
                Some("messenger") => &["page_id", "page_scoped_user_id"],
                Some("whatsapp") => &["whatsapp_business_account_id", "ctwa_clid"],
                Some("instagram") => &["instagram_business_account_id", "ig_sid"],
                _ => {
                    return Err(Refusal::new(
                        RefusalReason::MissingMessagingChannel,
                        "business_messaging events need messaging_channel (messenger, whatsapp or instagram)",
                    ))
                }
            };
            if let Some(missing) = needed.iter().find(|k| !f.identifiers.has(k)) {
                return Err(Refusal::new(
                    RefusalReason::MissingMessagingIds,
                    format!("business_messaging events on this channel need user_data.{missing}"),
                ));
            }
        }
        "system_generated"
            if f.custom_event_source_is_crm && !f.custom_keys.contains(&"lead_event_source") =>
        {
            return Err(Refusal::new(
                RefusalReason::MissingLeadEventSource,
                "CRM events (custom_data.event_source = crm) need custom_data.lead_event_source, the CRM's name",
            ));
        }
        _ => {}
    }
    if f.event_name == "Purchase" {
        if !f.custom_keys.contains(&"value") {
            return Err(Refusal::new(
                RefusalReason::PurchaseMissingValue,
                "Purchase events need custom_data.value",
            ));
        }
        if !f.custom_keys.contains(&"currency") {
            return Err(Refusal::new(
                RefusalReason::PurchaseMissingCurrency,
                "Purchase events need custom_data.currency",
            ));
        }
    }
    if let Some(d) = f.lead_id_digits {
        let n = d.trim_start_matches('-').len();
        if d.starts_with('-') || !(15..=17).contains(&n) {
            return Err(Refusal::new(
                RefusalReason::InvalidLeadId,
                format!("lead_id has {n} digits; Meta's Lead Ads lead IDs have 15-17"),
            ));
        }
    }
    if f.identifiers.is_empty() {
        return Err(Refusal::new(
            RefusalReason::NoCustomerInformation,
            "no usable customer information (every identifier was empty or invalid)",
        ));
    }
    if TOO_BROAD_SETS
        .iter()
        .any(|set| f.identifiers.names().all(|n| set.contains(&n)) && f.identifiers.0 < (1 << 16))
    {
        let present: Vec<&str> = f.identifiers.names().collect();
        return Err(Refusal::new(
            RefusalReason::CustomerInformationTooBroad,
            format!(
                "the only identifiers are {{{}}}, a combination Meta rejects as too broad; add em, ph, external_id, lead_id, fbc, fbp or a client IP",
                present.join(", ")
            ),
        ));
    }
    Ok(())
}

/// True for the plain decimal text Postgres prints for NUMERIC (no NaN or Infinity).
pub fn is_json_number(s: &str) -> bool {
    let b = s.strip_prefix('-').unwrap_or(s).as_bytes();
    if b.is_empty() || !b[0].is_ascii_digit() {
        return false;
    }
    let mut seen_dot = false;
    let mut last_digit = false;
    for &c in b {
        match c {
            b'0'..=b'9' => last_digit = true,
            b'.' if !seen_dot => {
                seen_dot = true;
                last_digit = false;
            }
            _ => return false,
        }
    }
    // JSON forbids leading zeros like 007.
    last_digit && !(b.len() > 1 && b[0] == b'0' && b[1] != b'.')
}

/// A monetary value as JSON number text, exact for NUMERIC.
pub fn number_json(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) if f.is_finite() => Some(serde_json::Number::from_f64(*f)?.to_string()),
        Value::Numeric(s) if is_json_number(s) => Some(s.to_string()),
        Value::Text(s) => {
            let t = s.trim();
            if is_json_number(t) {
                Some(t.to_string())
            } else {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .and_then(serde_json::Number::from_f64)
                    .map(|n| n.to_string())
            }
        }
        Value::Json(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Active ISO 4217 currency codes (uppercase).
const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS",
    "VED", "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW",
    "ZWG",
];

pub fn is_iso_currency(code: &str) -> bool {
    code.len() == 3 && ISO_4217.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_table_is_sorted_for_binary_search() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(is_iso_currency("USD") && is_iso_currency("EUR"));
        assert!(!is_iso_currency("usd") && !is_iso_currency("XYZ"));
    }

    #[test]
    fn json_numbers() {
        for ok in ["0", "12", "12.50", "-3.1", "0.5"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["", "NaN", "Infinity", "1e5", "007", "1.", ".5", "-"] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn event_time_from_integer_rejects_milliseconds() {
        assert_eq!(
            event_time_seconds(&Value::Int(1_700_000_000)).unwrap(),
            1_700_000_000
        );
        let r = event_time_seconds(&Value::Int(1_700_000_000_000)).unwrap_err();
        assert_eq!(r.reason, "invalid_event_time");
    }
}
