//! Rows → Conversions API server events: the model plan (which column feeds which parameter,
//! decided once per run) and the per-row mapping with Meta's pre-flight rules.

pub use super::identifiers::{Identifiers, IDENTIFIER_NAMES};
use super::json::{write_str, ObjectWriter};
use super::reason::RefusalReason;
use super::rules::{self, Refusal};
use super::value::{Unusable, Value, ValueKind};
use crate::config::{ExternalIdMode, ModelConfig};
use crate::normalize::{self, Hashed, NormalizeContext, PiiField, PiiInput};
use crate::params::{Target, TopField, UserDataKey};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;

/// A model output column as described by the warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ValueKind,
}

/// A problem with a model's columns, found before any row is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    pub column: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "column `{c}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    target: Target,
    column: Option<usize>,
    constant: Option<Value>,
    /// Pre-computed hashes of a hashed-field constant.
    constant_hashes: Option<Vec<Hashed>>,
    /// Pre-computed JSON of a custom_data constant (checked once, not per row).
    constant_custom: Option<String>,
}

/// How one model's rows become events; built once per run from the model's config and the
/// columns its query returns.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    model: String,
    slots: Vec<Slot>,
    country_column: Option<usize>,
    country_constant: Option<String>,
    default_country: Option<&'static str>,
    external_id_raw: bool,
}

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
    pub fn fingerprint(&self) -> String {
        format!("{:032x}", self.digest)
    }
}

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

/// What became of one row.
#[derive(Debug, Clone)]
pub struct RowOutcome {
    pub result: Result<MappedEvent, Refusal>,
    pub dropped: Vec<DroppedValue>,
}

impl ModelPlan {
    /// Builds the plan, or every problem with the model's columns at once.
    pub fn new(model: &ModelConfig, columns: &[ColumnInfo]) -> Result<ModelPlan, Vec<PlanProblem>> {
        let mut problems = Vec::new();
        let index: HashMap<&str, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let mut slots: Vec<Slot> = Vec::new();
        let mut explicitly_mapped: Vec<bool> = vec![false; columns.len()];

        for (target, column) in &model.columns {
            match index.get(column.as_str()) {
                Some(&i) => {
                    explicitly_mapped[i] = true;
                    add_column_slot(&mut slots, target.clone(), i, columns, &mut problems);
                }
                None => problems.push(PlanProblem {
                    column: Some(column.clone()),
                    message: format!(
                        "mapped to `{}` in [models.columns] but the query returns no such column",
                        target.path()
                    ),
                }),
            }
        }
        for (i, col) in columns.iter().enumerate() {
            if explicitly_mapped[i] || model.ignore_columns.iter().any(|c| c == &col.name) {
                continue;
            }
            match crate::params::resolve(&col.name) {
                Ok(target) => add_column_slot(&mut slots, target, i, columns, &mut problems),
                Err(e) => {
                    let is_key = model.primary_key.contains(&col.name) || model.cursor == col.name;
                    if !is_key {
                        problems.push(PlanProblem {
                            column: Some(col.name.clone()),
                            message: format!("{e}; or list it in ignore_columns"),
                        });
                    }
                }
            }
        }
        for key in model
            .primary_key
            .iter()
            .chain(std::iter::once(&model.cursor))
        {
            if !index.contains_key(key.as_str()) {
                problems.push(PlanProblem {
                    column: Some(key.clone()),
                    message: if *key == model.cursor {
                        "is the model's cursor but the query returns no such column".into()
                    } else {
                        "is in the model's primary_key but the query returns no such column".into()
                    },
                });
            }
        }
        if let Some(&ci) = index.get(model.cursor.as_str()) {
            let kind = columns[ci].kind;
            if matches!(
                kind,
                ValueKind::Json | ValueKind::TextArray | ValueKind::Bool
            ) {
                problems.push(PlanProblem {
                    column: Some(model.cursor.clone()),
                    message: format!(
                        "is the cursor but its type is {}; use a timestamp, date or integer column",
                        kind.describe()
                    ),
                });
            }
        }

        let ctx = NormalizeContext {
            default_country: model.default_country,
            row_country: None,
            external_id_raw: model.external_id == ExternalIdMode::Raw,
        };
        for (target, json) in &model.constants {
            let value = Value::from_json(json);
            let constant_hashes = match target {
                Target::UserData(UserDataKey::Hashed(f)) => {
                    let mut hashes = Vec::new();
                    let mut dropped = Vec::new();
                    hash_values(*f, &value, &ctx, &mut hashes, &mut dropped);
                    if let Some(d) = dropped.first() {
                        problems.push(PlanProblem {
                            column: None,
                            message: format!(
                                "constant `{}` cannot be used: {}",
                                target.path(),
                                d.reason
                            ),
                        });
                    }
                    Some(hashes)
                }
                _ => None,
            };
            let constant_custom = match target {
                Target::CustomData(k) => match custom_value(k, &value) {
                    Ok(raw) => Some(raw),
                    Err(r) => {
                        problems.push(PlanProblem {
                            column: None,
                            message: format!(
                                "constant `{}` cannot be used: {}",
                                target.path(),
                                r.detail
                            ),
                        });
                        None
                    }
                },
                _ => None,
            };
            match slots.iter_mut().find(|s| s.target == *target) {
                Some(slot) => {
                    slot.constant = Some(value);
                    slot.constant_hashes = constant_hashes;
                    slot.constant_custom = constant_custom;
                }
                None => slots.push(Slot {
                    target: target.clone(),
                    column: None,
                    constant: Some(value),
                    constant_hashes,
                    constant_custom,
                }),
            }
        }

        for required in [
            TopField::EventName,
            TopField::EventTime,
            TopField::ActionSource,
        ] {
            if !slots.iter().any(|s| s.target == Target::Top(required)) {
                problems.push(PlanProblem {
                    column: None,
                    message: format!(
                        "no column or constant gives `{}` (every event needs event_name, event_time and action_source)",
                        required.key()
                    ),
                });
            }
        }

        let country_target = Target::UserData(UserDataKey::Hashed(PiiField::Country));
        let country_slot = slots.iter().find(|s| s.target == country_target);
        let country_column = country_slot.and_then(|s| s.column);
        let country_constant = country_slot
            .and_then(|s| s.constant.as_ref())
            .and_then(|v| v.as_text().map(|t| t.into_owned()));

        if problems.is_empty() {
            Ok(ModelPlan {
                model: model.name.clone(),
                slots,
                country_column,
                country_constant,
                default_country: model.default_country,
                external_id_raw: model.external_id == ExternalIdMode::Raw,
            })
        } else {
            Err(problems)
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// True when a column or constant gives `event_id` (the model owns its identity).
    pub fn maps_event_id(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.target == Target::Top(TopField::EventId))
    }

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

/// True when a parameter takes the column's values: it is mapped in `[models.columns]`, or
/// named after a parameter and not in `ignore_columns` (the rule [`ModelPlan::new`] applies).
/// Other columns are never fetched: the reader selects only these.
pub fn column_is_mapped(model: &ModelConfig, name: &str) -> bool {
    model.columns.iter().any(|(_, c)| c == name)
        || (!model.ignore_columns.iter().any(|c| c == name) && crate::params::resolve(name).is_ok())
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

fn add_column_slot(
    slots: &mut Vec<Slot>,
    target: Target,
    index: usize,
    columns: &[ColumnInfo],
    problems: &mut Vec<PlanProblem>,
) {
    if let Some(existing) = slots.iter().find(|s| s.target == target) {
        let other = existing
            .column
            .map(|i| columns[i].name.clone())
            .unwrap_or_default();
        problems.push(PlanProblem {
            column: Some(columns[index].name.clone()),
            message: format!(
                "maps to `{}`, which column `{other}` already gives",
                target.path()
            ),
        });
        return;
    }
    if let Some(msg) = type_problem(&target, columns[index].kind) {
        problems.push(PlanProblem {
            column: Some(columns[index].name.clone()),
            message: msg,
        });
        return;
    }
    slots.push(Slot {
        target,
        column: Some(index),
        constant: None,
        constant_hashes: None,
        constant_custom: None,
    });
}

/// Column types that can never give a valid value for a parameter.
fn type_problem(target: &Target, kind: ValueKind) -> Option<String> {
    use ValueKind::*;
    let ok = match target {
        Target::Top(TopField::EventTime) => {
            matches!(kind, Int | Numeric | Date | Timestamp | TimestampTz | Text)
        }
        Target::Top(TopField::OptOut) => matches!(kind, Bool | Text | Int),
        Target::Top(TopField::DataProcessingOptions) => matches!(kind, TextArray | Json | Text),
        Target::Top(_) => !matches!(kind, Json | TextArray),
        Target::UserData(UserDataKey::Hashed(PiiField::Db)) => matches!(
            kind,
            Date | Timestamp | TimestampTz | Text | Int | TextArray
        ),
        Target::UserData(UserDataKey::Hashed(_)) => {
            matches!(kind, Text | Int | Numeric | TextArray | Date)
        }
        Target::UserData(UserDataKey::Integer(_)) => matches!(kind, Int | Numeric | Text),
        Target::UserData(UserDataKey::Plain(_)) => !matches!(kind, Json | TextArray),
        Target::CustomData(k)
            if matches!(k.as_str(), "value" | "predicted_ltv" | "net_revenue") =>
        {
            matches!(kind, Int | Float | Numeric | Text)
        }
        _ => true,
    };
    (!ok).then(|| {
        format!(
            "its type {} cannot give `{}`",
            kind.describe(),
            target.path()
        )
    })
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
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        out.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        out.push(char::from_digit((b & 15) as u32, 16).unwrap_or('0'));
    }
    out
}

fn hash_values(
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
fn write_string_or_array(out: &mut String, items: &[Hashed], escape: bool) {
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

fn plain_user_data(key: &str, value: &Value) -> Result<Option<String>, &'static str> {
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
fn integer_digits(value: &Value) -> Option<String> {
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

fn as_bool(v: &Value) -> Option<bool> {
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

fn dpo_array(v: &Value) -> String {
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
fn json_of(v: &Value) -> String {
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

fn custom_value(key: &str, v: &Value) -> Result<String, Refusal> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
}
