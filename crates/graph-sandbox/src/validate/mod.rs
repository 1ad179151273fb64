//! Event validation: the rules Meta documents for `POST /{id}/events`, applied to every event of a
//! batch. The first invalid event rejects the whole request (Meta: "If any event you send in a
//! batch is invalid, we reject the entire batch").
//!
//! Works on the borrowed [`Jv`] values parsed once from the body; no regexes, no re-parsing.
//! Error messages name the event index and the field, never the value.

mod custom_data;
mod event;
mod user_data;

use super::error::*;
use super::json::Jv;
use event::validate_event;

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

#[cfg(test)]
mod tests {
    use super::super::json as crate_json;
    use super::user_data::{is_fb_cookie, is_hashed, is_ip};
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
