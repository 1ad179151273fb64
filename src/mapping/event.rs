//! Rows → Conversions API server events: the per-row mapping with Meta's pre-flight rules,
//! following the model plan (`plan.rs`: which column feeds which parameter, decided once per
//! run).

pub use super::encode::DroppedValue;
use super::encode::{
    as_bool, custom_value, dpo_array, hash_values, integer_digits, json_of, plain_user_data,
    write_string_or_array,
};
pub use super::identifiers::{Identifiers, IDENTIFIER_NAMES};
use super::json::ObjectWriter;
pub use super::plan::{column_is_mapped, ColumnInfo, ModelPlan, PlanProblem};
use super::reason::RefusalReason;
use super::rules::{self, Refusal};
use super::value::{Unusable, Value};
use crate::normalize::{self, Hashed, NormalizeContext, PiiField};
use crate::params::{Target, TopField, UserDataKey};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// An event ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedEvent {
    pub event_id: String,
    pub event_name: String,
    pub event_time: i64,
    /// The event object as JSON.
    pub json: String,
    pub identifiers: Identifiers,
    /// 128-bit XXH3 of `json`, taken once when the event is made (see [`MappedEvent::fingerprint`]).
    pub digest: u128,
}

impl MappedEvent {
    pub fn new(
        event_id: String,
        event_name: String,
        event_time: i64,
        json: String,
        identifiers: Identifiers,
    ) -> MappedEvent {
        let digest = xxhash_rust::xxh3::xxh3_128(json.as_bytes());
        MappedEvent {
            event_id,
            event_name,
            event_time,
            json,
            identifiers,
            digest,
        }
    }

    /// A fingerprint of what was sent, for the delivery ledger: 128-bit XXH3 of the event's
    /// JSON in hex. It only tells a changed event from an unchanged one, so it needs no
    /// cryptographic strength, and SHA-256 over every event's whole JSON cost as much as
    /// hashing all its customer fields.
    /// Written by the digests' hex writer: 26 ns an event, where `format!("{:032x}")` took
    /// 58 ns (once per delivered event, on the workers that send).
    pub fn fingerprint(&self) -> String {
        crate::normalize::hex_string_16(&self.digest.to_be_bytes())
    }
}

/// What became of one row.
#[derive(Debug, Clone)]
pub struct RowOutcome {
    pub result: Result<MappedEvent, Refusal>,
    pub dropped: Vec<DroppedValue>,
}
impl ModelPlan {
    /// Maps one row. `key` is the row's primary key (text form), `now` the send time.
    pub fn map_row(&self, values: &[Value], key: &[String], now: i64) -> RowOutcome {
        let mut dropped = Vec::new();
        let row_country = self
            .country_column
            .and_then(|i| values.get(i))
            .and_then(|v| match v {
                Value::Text(s) if !s.trim().is_empty() => Some(s.as_str()),
                _ => None,
            })
            .or(self.country_constant.as_deref())
            // Resolved once per row: the phone and ZIP rules both ask for it, and an unknown
            // value means the same to them as none (the default country applies).
            .and_then(normalize::country_code);
        let ctx = NormalizeContext {
            default_country: self.default_country,
            row_country,
            external_id_raw: self.external_id_raw,
        };

        let mut top: [Option<&Value>; TopField::ALL.len()] = [None; TopField::ALL.len()];
        let mut user_data = ScratchBuffer::take();
        let mut ud = ObjectWriter::new(&mut user_data.0);
        let mut identifiers = Identifiers::default();
        let mut custom: Vec<(&str, Cow<'_, str>)> = Vec::new();
        let mut nested: Vec<(&'static str, &str, String)> = Vec::new();
        let mut lead_id_digits: Option<String> = None;
        let mut refusal: Option<Refusal> = None;
        let mut hashes: Vec<Hashed> = Vec::new();

        for slot in &self.slots {
            let from_column = slot
                .column
                .and_then(|i| values.get(i))
                .filter(|v| !v.is_null());
            let (value, from_constant) = match from_column {
                Some(v) => (v, false),
                None => match &slot.constant {
                    Some(c) => (c, true),
                    None => continue,
                },
            };
            if let Some(u) = value.unusable() {
                match unusable_effect(&slot.target, u) {
                    Err(r) => {
                        refusal.get_or_insert(r);
                    }
                    Ok(d) => dropped.push(d),
                }
                continue;
            }
            match &slot.target {
                Target::Top(f) => top[*f as usize] = Some(value),
                Target::UserData(UserDataKey::Hashed(field)) => {
                    hashes.clear();
                    if from_constant {
                        if let Some(h) = &slot.constant_hashes {
                            hashes.extend(h.iter().cloned());
                        }
                    } else {
                        hash_values(*field, value, &ctx, &mut hashes, &mut dropped);
                    }
                    if !hashes.is_empty() {
                        identifiers.set_hashed(*field);
                        // Only a raw external_id can hold characters JSON must escape; hashes
                        // are lowercase hex.
                        let raw = *field == PiiField::ExternalId && self.external_id_raw;
                        write_string_or_array(ud.key(field.key()), &hashes, raw);
                    }
                }
                Target::UserData(UserDataKey::Plain(k)) => match plain_user_data(k, value) {
                    Ok(Some(text)) => {
                        identifiers.set(k);
                        ud.str(k, &text);
                    }
                    Ok(None) => {}
                    Err(reason) => dropped.push(DroppedValue::new(k, reason)),
                },
                Target::UserData(UserDataKey::Integer(k)) => match integer_digits(value) {
                    Some(d) => {
                        identifiers.set(k);
                        ud.raw(k, &d);
                        if *k == "lead_id" {
                            lead_id_digits = Some(d);
                        }
                    }
                    None => {
                        if *k == "lead_id" {
                            refusal.get_or_insert(Refusal::new(
                                RefusalReason::InvalidLeadId,
                                "lead_id is not an integer (Meta's Lead Ads lead IDs are 15-17 digits)",
                            ));
                        } else {
                            dropped.push(DroppedValue::new(k, "not_an_integer"));
                        }
                    }
                },
                Target::CustomData(k) => match (&slot.constant_custom, from_constant) {
                    (Some(raw), true) => custom.push((k.as_str(), Cow::Borrowed(raw))),
                    _ => match custom_value(k, value) {
                        Ok(raw) => custom.push((k.as_str(), Cow::Owned(raw))),
                        // `contents` is optional and no rule depends on it: text that is not a
                        // JSON array loses the field, not the event.
                        Err(r) if k == "contents" => dropped
                            .push(DroppedValue::new("custom_data.contents", r.reason.as_str())),
                        Err(r) => {
                            refusal.get_or_insert(r);
                        }
                    },
                },
                Target::Nested { object, key } => {
                    nested.push((object, key.as_str(), json_of(value)));
                }
            }
        }
        ud.finish();

        // Trimmed text of a top-level field, borrowed from the row where it can be.
        let text_of = |f: TopField| -> Option<Cow<'_, str>> {
            top[f as usize].and_then(|v| v.as_text()).map(|t| match t {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
                Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
            })
        };
        let event_name = text_of(TopField::EventName).filter(|s| !s.is_empty());
        let mut action_source = text_of(TopField::ActionSource).map(|s| {
            if s.is_ascii() && !s.bytes().any(|b| b.is_ascii_uppercase()) {
                s
            } else {
                Cow::Owned(s.to_lowercase())
            }
        });
        if action_source.as_deref() == Some("crm") {
            // Meta has no `crm` action_source: its CRM integration is system_generated with
            // custom_data.event_source = "crm" (conversion-leads-integration guide).
            action_source = Some(Cow::Borrowed("system_generated"));
            if !custom.iter().any(|(k, _)| *k == "event_source") {
                custom.push(("event_source", Cow::Borrowed("\"crm\"")));
            }
        }
        let event_id = match text_of(TopField::EventId).filter(|s| !s.is_empty()) {
            Some(id) => Some(id.into_owned()),
            None => event_name
                .as_deref()
                .map(|n| derive_event_id(&self.model, key, n)),
        };
        let refuse =
            |r: Refusal, dropped: Vec<DroppedValue>, event_id: Option<String>| RowOutcome {
                result: Err(r.with_event_id(event_id)),
                dropped,
            };
        if let Some(r) = refusal {
            return refuse(r, dropped, event_id);
        }
        let Some(event_name) = event_name else {
            return refuse(
                Refusal::new(RefusalReason::MissingEventName, "event_name is empty"),
                dropped,
                event_id,
            );
        };
        let event_id = event_id.unwrap_or_default();
        let event_time = match top[TopField::EventTime as usize] {
            None => {
                return refuse(
                    Refusal::new(RefusalReason::MissingEventTime, "event_time is empty"),
                    dropped,
                    Some(event_id),
                )
            }
            Some(v) => match rules::event_time_seconds(v) {
                Ok(t) => t,
                Err(r) => return refuse(r, dropped, Some(event_id)),
            },
        };
        let Some(action_source) = action_source else {
            return refuse(
                Refusal::new(RefusalReason::MissingActionSource, "action_source is empty"),
                dropped,
                Some(event_id),
            );
        };

        let messaging_channel = text_of(TopField::MessagingChannel);
        let facts = rules::EventFacts {
            event_name: &event_name,
            event_time,
            now,
            action_source: &action_source,
            has_event_source_url: text_of(TopField::EventSourceUrl).is_some_and(|s| !s.is_empty()),
            identifiers,
            custom_keys: &custom.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            custom_event_source_is_crm: custom
                .iter()
                .any(|(k, v)| *k == "event_source" && v == "\"crm\""),
            lead_id_digits: lead_id_digits.as_deref(),
            nested_keys: &nested.iter().map(|(o, k, _)| (*o, *k)).collect::<Vec<_>>(),
            messaging_channel: messaging_channel.as_deref(),
        };
        if let Err(r) = rules::check(&facts) {
            return refuse(r, dropped, Some(event_id));
        }

        let mut json = String::with_capacity(256 + user_data.0.len());
        let mut ev = ObjectWriter::new(&mut json);
        ev.str("event_name", &event_name);
        ev.int("event_time", event_time);
        ev.str("event_id", &event_id);
        ev.str("action_source", &action_source);
        for f in [
            TopField::EventSourceUrl,
            TopField::ReferrerUrl,
            TopField::MessagingChannel,
            TopField::CustomerSegmentation,
        ] {
            if let Some(t) = text_of(f).filter(|s| !s.is_empty()) {
                ev.str(f.key(), &t);
            }
        }
        if let Some(v) = top[TopField::OptOut as usize] {
            if let Some(b) = as_bool(v) {
                ev.raw("opt_out", if b { "true" } else { "false" });
            }
        }
        if let Some(v) = top[TopField::DataProcessingOptions as usize] {
            ev.raw("data_processing_options", &dpo_array(v));
        }
        for f in [
            TopField::DataProcessingOptionsCountry,
            TopField::DataProcessingOptionsState,
        ] {
            if let Some(d) = top[f as usize].and_then(integer_digits) {
                ev.raw(f.key(), &d);
            }
        }
        ev.raw("user_data", &user_data.0);
        if !custom.is_empty() {
            let out = ev.key("custom_data");
            let mut cd = ObjectWriter::new(out);
            for (k, raw) in &custom {
                cd.raw(k, raw);
            }
            cd.finish();
        }
        for object in crate::params::OTHER_OBJECTS {
            if nested.iter().any(|(o, _, _)| o == object) {
                let out = ev.key(object);
                let mut obj = ObjectWriter::new(out);
                for (_, k, raw) in nested.iter().filter(|(o, _, _)| o == object) {
                    obj.raw(k, raw);
                }
                obj.finish();
            }
        }
        ev.finish();

        RowOutcome {
            result: Ok(MappedEvent::new(
                event_id,
                event_name.into_owned(),
                event_time,
                json,
                identifiers,
            )),
            dropped,
        }
    }
}

thread_local! {
    static USER_DATA: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The `user_data` object of the row being mapped: built apart (its fields decide whether the
/// event goes at all), then copied into the event. One buffer per thread, lent for a row and
/// given back on drop, instead of a kilobyte allocated and freed per event.
struct ScratchBuffer(String);

impl ScratchBuffer {
    fn take() -> ScratchBuffer {
        let mut buf = USER_DATA.with(|b| std::mem::take(&mut *b.borrow_mut()));
        buf.clear();
        ScratchBuffer(buf)
    }
}

impl Drop for ScratchBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        USER_DATA.with(|b| *b.borrow_mut() = buf);
    }
}

/// What an unusable value does to its row: an event-level value (the event's name, time, id
/// or action source, and a Lead Ads lead_id, which the event stands for) refuses the row; any
/// other drops its field, and the event goes without it.
fn unusable_effect(target: &Target, u: Unusable) -> Result<DroppedValue, Refusal> {
    let refuse = |reason: RefusalReason, name: &str| {
        Err(Refusal::new(reason, format!("{name} {}", u.describe())))
    };
    match target {
        Target::Top(TopField::EventTime) => refuse(RefusalReason::InvalidEventTime, "event_time"),
        Target::Top(TopField::EventName) => refuse(RefusalReason::InvalidEventName, "event_name"),
        Target::Top(TopField::EventId) => refuse(RefusalReason::InvalidEventId, "event_id"),
        Target::Top(TopField::ActionSource) => {
            refuse(RefusalReason::InvalidActionSource, "action_source")
        }
        Target::UserData(UserDataKey::Integer("lead_id")) => {
            refuse(RefusalReason::InvalidLeadId, "lead_id")
        }
        Target::Top(f) => Ok(DroppedValue::new(f.key(), u.reason())),
        Target::UserData(k) => Ok(DroppedValue::new(k.key(), u.reason())),
        Target::CustomData(_) | Target::Nested { .. } => Ok(DroppedValue {
            field: Cow::Owned(target.path()),
            reason: u.reason(),
        }),
    }
}

/// The default event id: derived from the model name, the row's primary key and the event
/// name only, so a row in a given stage keeps its id across retries, re-reads, crashes and
/// replicas, and a new stage gets a new id. 32 hex characters of SHA-256 over
/// `capi-sync/v1 NUL model NUL key1 [NUL key2 ...] NUL event_name` (NUL cannot occur in
/// Postgres text, so the encoding is unambiguous).
pub fn derive_event_id(model: &str, key: &[String], event_name: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"capi-sync/v1\0");
    h.update(model.as_bytes());
    for k in key {
        h.update(b"\0");
        h.update(k.as_bytes());
    }
    h.update(b"\0");
    h.update(event_name.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    crate::normalize::hex_string_16(&first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::mapping::value::ValueKind;

    fn config(constants: &str) -> Config {
        Config::from_toml_str(
            &format!(
                r#"
[warehouse]
url = "postgres://localhost/x"
[[models]]
name = "m"
pixel_id = "1"
schedule = "0 * * * *"
sql = "SELECT 1"
primary_key = "id"
cursor = "updated_at"
[models.constants]
action_source = "system_generated"
{constants}
"#
            ),
            std::path::Path::new("."),
        )
        .expect("config")
    }

    fn columns(names: &[(&str, ValueKind)]) -> Vec<ColumnInfo> {
        names
            .iter()
            .map(|(n, k)| ColumnInfo {
                name: n.to_string(),
                kind: *k,
            })
            .collect()
    }

    #[test]
    fn custom_data_constants_are_checked_once_when_the_plan_is_made() {
        let cols = columns(&[
            ("id", ValueKind::Int),
            ("updated_at", ValueKind::TimestampTz),
            ("event_name", ValueKind::Text),
            ("event_time", ValueKind::TimestampTz),
            ("em", ValueKind::Text),
            ("value", ValueKind::Numeric),
        ]);
        let bad = config("\"custom_data.currency\" = \"dollars\"");
        let problems = ModelPlan::new(&bad.models[0], &cols).expect_err("bad constant");
        assert!(
            problems
                .iter()
                .any(|p| p.message.contains("custom_data.currency") && p.column.is_none()),
            "{problems:?}"
        );

        let good = config("\"custom_data.currency\" = \" usd \"");
        let plan = ModelPlan::new(&good.models[0], &cols).expect("plan");
        let now = chrono::Utc::now();
        let values = vec![
            Value::Int(7),
            Value::TimestampTz(now),
            Value::Text("  Purchase ".into()),
            Value::TimestampTz(now - chrono::Duration::hours(1)),
            Value::Text("a@example.com".into()),
            Value::Numeric("12.50".into()),
        ];
        let event = plan
            .map_row(&values, &["7".to_string()], now.timestamp())
            .result
            .expect("event");
        let json: serde_json::Value = serde_json::from_str(&event.json).expect("json");
        assert_eq!(json["custom_data"]["currency"], "USD");
        assert_eq!(json["custom_data"]["value"], 12.5);
        // Top-level text is trimmed, as before.
        assert_eq!(json["event_name"], "Purchase");
        assert_eq!(json["action_source"], "system_generated");
        assert_eq!(event.event_name, "Purchase");
    }

    #[test]
    fn the_rows_country_in_any_form_sets_the_phone_and_zip_rules() {
        let cols = columns(&[
            ("id", ValueKind::Int),
            ("updated_at", ValueKind::TimestampTz),
            ("event_name", ValueKind::Text),
            ("event_time", ValueKind::TimestampTz),
            ("ph", ValueKind::Text),
            ("zp", ValueKind::Text),
            ("country", ValueKind::Text),
        ]);
        let mut cfg = config("");
        cfg.models[0].default_country = Some("us");
        let plan = ModelPlan::new(&cfg.models[0], &cols).expect("plan");
        let now = chrono::Utc::now();
        let map = |ph: &str, zp: &str, country: &str| {
            let values = vec![
                Value::Int(1),
                Value::TimestampTz(now),
                Value::Text("Lead".into()),
                Value::TimestampTz(now - chrono::Duration::hours(1)),
                Value::Text(ph.into()),
                Value::Text(zp.into()),
                Value::Text(country.into()),
            ];
            let event = plan
                .map_row(&values, &["1".to_string()], now.timestamp())
                .result
                .expect("event");
            let json: serde_json::Value = serde_json::from_str(&event.json).expect("json");
            (
                json["user_data"]["ph"].clone(),
                json["user_data"]["zp"].clone(),
            )
        };
        let h = |s: &str| serde_json::Value::from(normalize::sha256_hex(s));
        // A country name: a British national number and a postcode, read as British.
        assert_eq!(
            map("020 7946 0958", "SW1A 1AA", " United Kingdom "),
            (h("442079460958"), h("sw1a1aa"))
        );
        // A country the tables do not know counts as none: the model's default (US) applies.
        assert_eq!(
            map("(650) 555-1212", "94105-1234", "Narnia"),
            (h("16505551212"), h("94105"))
        );
    }

    #[test]
    fn hashed_field_bits_match_identifier_names() {
        for f in PiiField::ALL {
            let mut by_field = Identifiers::default();
            by_field.set_hashed(f);
            let mut by_name = Identifiers::default();
            by_name.set(f.key());
            assert_eq!(by_field, by_name, "{f:?}");
        }
    }

    /// A derived id never changes between versions: a changed derivation would send every
    /// row of a lookback again under new ids. These values are SHA-256 of the documented
    /// encoding, computed apart (Python's hashlib), first 16 bytes in lowercase hex.
    #[test]
    fn derived_event_ids_are_pinned() {
        assert_eq!(
            derive_event_id("leads", &["1".to_string()], "Lead"),
            "073bcf19b36f49b876d57be6e37f3198"
        );
        assert_eq!(
            derive_event_id(
                "orders",
                &["INV-7".to_string(), "3".to_string()],
                "Purchase"
            ),
            "3a85f20c89b68a7dd2659326e6552d71"
        );
    }

    /// Fingerprints stored by earlier versions were `format!("{:032x}")` of the digest; a
    /// different text would mark every re-read event as changed.
    #[test]
    fn fingerprints_are_the_digest_in_32_hex_digits() {
        let mut digest = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        for shift in 0..200u32 {
            let e = MappedEvent {
                event_id: String::new(),
                event_name: String::new(),
                event_time: 0,
                json: String::new(),
                identifiers: Identifiers::default(),
                digest,
            };
            assert_eq!(e.fingerprint(), format!("{digest:032x}"));
            digest = digest.rotate_left(shift % 7 + 1) ^ u128::from(shift);
        }
    }
}
