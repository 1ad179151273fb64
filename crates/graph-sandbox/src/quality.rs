//! `GET /vNN.N/dataset_quality`: Meta's Dataset Quality API, with scores derived from what the
//! sandbox received for each pixel and event name.
//!
//! Meta's documents: the web block
//! <https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api>
//! and the offline block (beta)
//! <https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api/offline-events>.
//!
//! # Requests, checked in this order
//! * `access_token` (query) or `Authorization: Bearer`: missing or wrong, HTTP 401 code 190.
//! * `dataset_id`: required, digits; otherwise HTTP 400 code 100.
//! * `fields`: required; `web`, `web{...}`, `offline`, `offline{...}`, comma-separated. Another
//!   top-level field, or unbalanced braces: HTTP 400 code 100.
//! * A pixel set with [`crate::SandboxHandle::deny_quality`]: HTTP 400 code 10 ("Application
//!   does not have permission for this action"), what Meta answers without the permission.
//! * `offline` while [`crate::SandboxHandle::set_offline_quality_beta`] is off: HTTP 400 code 100
//!   (a field the app cannot read, as for a beta not enabled for it).
//! * A pixel that never received an event: HTTP 400 code 2044055 (the offline page's error
//!   table: "the given `dataset_id` does not exist"). Chosen over `{}`, which only third-party
//!   logs show for a dataset with nothing to report.
//! * A known pixel whose events give no entry for the requested blocks: HTTP 200 `{}`.
//!
//! # Which events count
//! `web` counts `website` events: Meta computes Event Match Quality for web events only, not for
//! offline, physical-store, app or Conversion Leads events (web page). `offline` counts
//! `physical_store` events. One entry per event name, as in Meta's examples; only the requested
//! sub-fields come back.
//!
//! # Scores (deterministic functions of what was received; Meta's own formulas are not public)
//! * `match_key_feedback[].coverage.percentage`: the share of the event name's events whose
//!   `user_data` carries the key (a non-empty string or array), in percent with one decimal.
//!   Keys map to identifier names as in [`IDENTIFIERS`]; `email`, `ip_address`, `user_agent` and
//!   `external_id` appear in Meta's examples, the other names are this sandbox's choice. Only
//!   keys some event carried are listed.
//! * `composite_score` = min(10, Σ weight × coverage / 100), one decimal ([`composite_score`]).
//! * `event_coverage.percentage`: the share of events carrying `event_id`, the key that lets a
//!   Pixel event be deduplicated against them (the sandbox sees no Pixel events);
//!   `goal_percentage` 75, as in Meta's examples.
//! * `data_freshness.upload_frequency`: from the mean delay between `event_time` and receipt:
//!   under an hour `real_time`, under a day `hourly`, under a week `daily`, else `weekly`.
//! * `acr` and the `potential_*` estimates need Pixel events or other advertisers: never
//!   returned.
//! * Offline: `match_key.score` = 10 × (0.6 email + 0.4 phone coverage); `freshness.score` =
//!   10 × (1 − mean delay / 62 days), at least 0; `frequency.score` = 10 × min(1, days with
//!   receipts / 7); `composite.score` = 0.5 match_key + 0.25 freshness + 0.25 frequency.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::error::GraphError;
use super::json::Jv;

/// `user_data` keys and the identifier names Meta's feedback uses for them, with each key's
/// weight in [`composite_score`].
pub const IDENTIFIERS: &[(&str, &str, f64)] = &[
    ("em", "email", 3.5),
    ("ph", "phone", 2.5),
    ("external_id", "external_id", 1.0),
    ("client_ip_address", "ip_address", 0.75),
    ("client_user_agent", "user_agent", 0.75),
    ("fbc", "click_id", 1.0),
    ("fbp", "browser_id", 0.5),
    ("fn", "first_name", 0.25),
    ("ln", "last_name", 0.25),
    ("db", "date_of_birth", 0.25),
    ("ge", "gender", 0.1),
    ("ct", "city", 0.1),
    ("st", "state", 0.1),
    ("zp", "zip", 0.1),
    ("country", "country", 0.1),
];

/// Meta's best-practice target for event coverage, as in its examples.
const GOAL_PERCENTAGE: f64 = 75.0;
/// The offline window: Meta wants store events within 62 days.
const OFFLINE_WINDOW_SECS: f64 = 62.0 * 86_400.0;

/// The composite score for these coverages (identifier name → percent): min(10, Σ weight ×
/// coverage / 100), rounded to one decimal.
pub fn composite_score<'a>(coverage: impl IntoIterator<Item = (&'a str, f64)>) -> f64 {
    let sum: f64 = coverage
        .into_iter()
        .filter_map(|(id, pct)| {
            IDENTIFIERS
                .iter()
                .find(|(_, name, _)| *name == id)
                .map(|(_, _, w)| w * pct / 100.0)
        })
        .sum();
    round1(sum.min(10.0))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Block {
    Web = 0,
    Offline = 1,
}

/// What was received for one pixel, block and event name.
#[derive(Debug, Default, Clone)]
struct Tally {
    events: u64,
    /// Events carrying each key of [`IDENTIFIERS`], by its index.
    with_key: [u64; IDENTIFIERS.len()],
    with_event_id: u64,
    delay_secs: f64,
    /// Days (Unix day numbers) on which events arrived.
    days: BTreeSet<i64>,
}

/// One pixel's tallies, by event name and block (indexed by `Block as usize`).
type PixelTallies = BTreeMap<String, [Tally; 2]>;

/// Per pixel, what the quality answers are derived from, and the answers tests force.
#[derive(Default)]
pub(super) struct QualityBook {
    tallies: Mutex<HashMap<String, PixelTallies>>,
    denied: Mutex<BTreeSet<String>>,
    offline_beta_off: AtomicBool,
}

impl QualityBook {
    pub fn deny(&self, pixel: &str) {
        lock(&self.denied).insert(pixel.to_owned());
    }

    pub fn set_offline_beta(&self, on: bool) {
        self.offline_beta_off.store(!on, Ordering::SeqCst);
    }

    /// Counts accepted events for `pixel`; `now` is the receipt time (Unix seconds).
    pub fn record(&self, pixel: &str, events: &[Jv<'_>], now: i64) {
        let mut tallies = lock(&self.tallies);
        let book = tallies.entry(pixel.to_owned()).or_default();
        for ev in events {
            let Some(o) = ev.as_object() else { continue };
            let block = match o.get("action_source").and_then(Jv::as_str) {
                Some("website") => Block::Web,
                Some("physical_store") => Block::Offline,
                // Meta reports no quality for other sources; the pixel still becomes known.
                _ => continue,
            };
            let name = o.get("event_name").and_then(Jv::as_str).unwrap_or("");
            // One lookup per event; the name is copied only the first time it is seen.
            let tallies = match book.get_mut(name) {
                Some(t) => t,
                None => book.entry(name.to_owned()).or_default(),
            };
            let t = &mut tallies[block as usize];
            t.events += 1;
            if let Some(user) = o.get("user_data").and_then(Jv::as_object) {
                // Each key once per event, even if the object repeats it.
                let mut seen = 0u32;
                for (k, v) in user.iter() {
                    let present = match v {
                        Jv::Str(s) => !s.is_empty(),
                        Jv::Arr(a) => !a.is_empty(),
                        _ => false,
                    };
                    if let Some(i) = IDENTIFIERS.iter().position(|(key, _, _)| *key == k) {
                        if present && seen & (1 << i) == 0 {
                            seen |= 1 << i;
                            t.with_key[i] += 1;
                        }
                    }
                }
            }
            if o.get("event_id")
                .and_then(Jv::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                t.with_event_id += 1;
            }
            if let Some(at) = o.get("event_time").and_then(Jv::as_i64) {
                t.delay_secs += (now - at).max(0) as f64;
            }
            let day = now.div_euclid(86_400);
            if t.days.last() != Some(&day) {
                t.days.insert(day);
            }
        }
    }

    /// The answer to `GET /vNN.N/dataset_quality?{query}`.
    pub fn answer(
        &self,
        query: Option<&str>,
        token_ok: impl Fn(&str) -> bool,
        bearer: Option<String>,
    ) -> Result<Value, GraphError> {
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut tokens: Vec<String> = bearer.into_iter().collect();
        tokens.extend(
            params
                .iter()
                .filter(|(k, _)| k == "access_token")
                .map(|(_, v)| v.clone()),
        );
        if tokens.is_empty() || !tokens.iter().all(|t| token_ok(t)) {
            return Err(GraphError::invalid_token());
        }
        let dataset = match get("dataset_id") {
            Some(d) if !d.is_empty() && d.len() <= 32 && d.bytes().all(|b| b.is_ascii_digit()) => d,
            Some(_) => {
                return Err(GraphError::invalid_parameter(
                    "Param dataset_id must be a valid dataset ID",
                ))
            }
            None => {
                return Err(GraphError::invalid_parameter(
                    "The parameter dataset_id is required",
                ))
            }
        };
        let Some(fields) = get("fields") else {
            return Err(GraphError::invalid_parameter(
                "The parameter fields is required: web{...} or offline{...}",
            ));
        };
        let fields = parse_fields(fields)
            .ok_or_else(|| GraphError::invalid_parameter("Syntax error in the fields parameter"))?;
        for f in &fields {
            if f.name != "web" && f.name != "offline" {
                return Err(GraphError::invalid_parameter(format!(
                    "Tried accessing nonexisting field ({}) on node type (AdsPixelCAPIIntegrationQuality)",
                    shown_field(&f.name)
                )));
            }
        }
        if lock(&self.denied).contains(dataset) {
            return Err(GraphError::no_permission());
        }
        if self.offline_beta_off.load(Ordering::SeqCst)
            && fields.iter().any(|f| f.name == "offline")
        {
            return Err(GraphError::invalid_parameter(
                "Tried accessing nonexisting field (offline) on node type (AdsPixelCAPIIntegrationQuality)",
            ));
        }
        let tallies = lock(&self.tallies);
        let Some(book) = tallies.get(dataset) else {
            return Err(GraphError::unknown_dataset());
        };
        let mut out = Map::new();
        for f in &fields {
            let block = if f.name == "web" {
                Block::Web
            } else {
                Block::Offline
            };
            let entries: Vec<Value> = book
                .iter()
                .map(|(name, t)| (name, &t[block as usize]))
                .filter(|(_, t)| t.events > 0)
                .map(|(name, t)| {
                    let full = match block {
                        Block::Web => web_entry(name, t),
                        Block::Offline => offline_entry(name, t),
                    };
                    prune(full, f.children.as_deref())
                })
                .collect();
            if !entries.is_empty() {
                out.insert(f.name.clone(), Value::Array(entries));
            }
        }
        Ok(Value::Object(out))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A field name as an error shows it: only letters, digits and `_`.
fn shown_field(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(40)
        .collect()
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round1(part as f64 * 100.0 / whole as f64)
    }
}

fn coverages(t: &Tally) -> Vec<(&'static str, f64)> {
    IDENTIFIERS
        .iter()
        .zip(t.with_key)
        .filter(|(_, n)| *n > 0)
        .map(|((_, name, _), n)| (*name, pct(n, t.events)))
        .collect()
}

/// Events carrying the `user_data` key `key`.
fn carrying(t: &Tally, key: &str) -> u64 {
    IDENTIFIERS
        .iter()
        .position(|(k, _, _)| *k == key)
        .map_or(0, |i| t.with_key[i])
}

fn mean_delay(t: &Tally) -> f64 {
    if t.events == 0 {
        0.0
    } else {
        t.delay_secs / t.events as f64
    }
}

fn web_entry(name: &str, t: &Tally) -> Value {
    let cov = coverages(t);
    let delay = mean_delay(t);
    let frequency = if delay < 3600.0 {
        "real_time"
    } else if delay < 86_400.0 {
        "hourly"
    } else if delay < 7.0 * 86_400.0 {
        "daily"
    } else {
        "weekly"
    };
    json!({
        "event_name": name,
        "event_match_quality": {
            "composite_score": composite_score(cov.iter().copied()),
            "match_key_feedback": cov.iter().map(|(id, p)| json!({
                "identifier": id,
                "coverage": {"percentage": p},
            })).collect::<Vec<_>>(),
            "diagnostics": [],
        },
        "event_coverage": {
            "percentage": pct(t.with_event_id, t.events),
            "goal_percentage": GOAL_PERCENTAGE,
            "description": "Share of events carrying event_id, the key that deduplicates them against Pixel events.",
        },
        "dedupe_key_feedback": [{
            "dedupe_key": "event_id",
            "server_events_with_dedupe_key": {"percentage": pct(t.with_event_id, t.events), "description": "Server events carrying event_id."},
        }],
        "data_freshness": {
            "upload_frequency": frequency,
            "description": "From the mean delay between event_time and receipt.",
        },
    })
}

fn offline_entry(name: &str, t: &Tally) -> Value {
    let share = |k: &str| pct(carrying(t, k), t.events);
    let (email, phone) = (share("em"), share("ph"));
    let match_key = round1(10.0 * (0.6 * email + 0.4 * phone) / 100.0);
    let freshness = round1(10.0 * (1.0 - mean_delay(t) / OFFLINE_WINDOW_SECS).max(0.0));
    let frequency = round1(10.0 * (t.days.len() as f64 / 7.0).min(1.0));
    let composite = round1(0.5 * match_key + 0.25 * freshness + 0.25 * frequency);
    json!({
        "event_name": name,
        "composite": {"score": composite, "recommendation": "Send more customer information, more often and sooner."},
        "match_key": {"score": match_key, "recommendation": "Send email and phone on every event.", "coverage": {"email": email, "phone": phone}},
        "frequency": {"score": frequency, "recommendation": "Upload every day."},
        "freshness": {"score": freshness, "recommendation": "Upload within hours of the sale."},
    })
}

/// One requested field and, when braces follow it, the sub-fields asked for.
#[derive(Debug, Clone, PartialEq)]
struct Field {
    name: String,
    children: Option<Vec<Field>>,
}

/// Graph's field expansion: `a,b{c,d{e}}`. None when the braces do not balance or a name is
/// empty.
fn parse_fields(text: &str) -> Option<Vec<Field>> {
    fn list(s: &[u8], i: &mut usize) -> Option<Vec<Field>> {
        let mut out = Vec::new();
        loop {
            let start = *i;
            while *i < s.len() && !matches!(s[*i], b',' | b'{' | b'}') {
                *i += 1;
            }
            let name = std::str::from_utf8(&s[start..*i]).ok()?.trim().to_owned();
            if name.is_empty() {
                return None;
            }
            let children = if s.get(*i) == Some(&b'{') {
                *i += 1;
                let c = list(s, i)?;
                if s.get(*i) != Some(&b'}') {
                    return None;
                }
                *i += 1;
                Some(c)
            } else {
                None
            };
            out.push(Field { name, children });
            if s.get(*i) == Some(&b',') {
                *i += 1;
            } else {
                return Some(out);
            }
        }
    }
    let s = text.as_bytes();
    let mut i = 0;
    let fields = list(s, &mut i)?;
    (i == s.len()).then_some(fields)
}

/// `value` with only the requested fields (all of them when `fields` is None). Arrays are
/// pruned element by element; a requested field the value lacks is left out.
fn prune(value: Value, fields: Option<&[Field]>) -> Value {
    let Some(fields) = fields else { return value };
    match value {
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| prune(v, Some(fields))).collect())
        }
        Value::Object(mut map) => {
            let mut out = Map::new();
            for f in fields {
                if let Some(v) = map.remove(&f.name) {
                    out.insert(f.name.clone(), prune(v, f.children.as_deref()));
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<Jv<'static>> {
        let v: Value = serde_json::from_str(text).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                super::super::json::parse_str(&e.to_string())
                    .unwrap()
                    .into_owned()
            })
            .collect()
    }

    fn web(name: &str, user: &str) -> String {
        format!(
            r#"{{"event_name":"{name}","event_time":1000,"event_id":"e","action_source":"website","user_data":{user}}}"#
        )
    }

    fn book_with(evs: &[String]) -> QualityBook {
        let book = QualityBook::default();
        book.record("42", &events(&format!("[{}]", evs.join(","))), 1060);
        book
    }

    fn ok(_: &str) -> bool {
        true
    }

    const WEB_QUERY: &str = "dataset_id=42&access_token=t&fields=web{event_name,event_match_quality{composite_score,match_key_feedback{identifier,coverage}},data_freshness{upload_frequency}}";

    #[test]
    fn coverage_is_the_share_of_events_carrying_each_key() {
        let book = book_with(&[
            web("Lead", r#"{"em":["a"],"ph":["b"]}"#),
            web("Lead", r#"{"em":["a"]}"#),
        ]);
        let v = book.answer(Some(WEB_QUERY), ok, None).unwrap();
        let entry = &v["web"][0];
        assert_eq!(entry["event_name"], "Lead");
        let keys = &entry["event_match_quality"]["match_key_feedback"];
        assert_eq!(
            keys[0],
            json!({"identifier": "email", "coverage": {"percentage": 100.0}})
        );
        assert_eq!(
            keys[1],
            json!({"identifier": "phone", "coverage": {"percentage": 50.0}})
        );
        assert_eq!(
            entry["event_match_quality"]["composite_score"],
            json!(composite_score([("email", 100.0), ("phone", 50.0)]))
        );
        assert_eq!(entry["data_freshness"]["upload_frequency"], "real_time");
        // Only what was asked for.
        assert!(entry.get("event_coverage").is_none(), "{entry}");
        assert!(entry["event_match_quality"].get("diagnostics").is_none());
    }

    #[test]
    fn a_key_repeated_in_one_event_counts_once() {
        // Parsed as sent, duplicate kept (a `serde_json::Value` would drop it).
        let repeated = web("Lead", r#"{"em":["a"],"em":["b"]}"#);
        let other = web("Lead", r#"{"ph":["b"]}"#);
        let evs: Vec<Jv<'_>> = [&repeated, &other]
            .iter()
            .map(|t| super::super::json::parse_str(t).unwrap())
            .collect();
        let book = QualityBook::default();
        book.record("42", &evs, 1060);
        let v = book.answer(Some(WEB_QUERY), ok, None).unwrap();
        let keys = &v["web"][0]["event_match_quality"]["match_key_feedback"];
        assert_eq!(
            keys[0],
            json!({"identifier": "email", "coverage": {"percentage": 50.0}})
        );
    }

    #[test]
    fn the_composite_grows_with_coverage_and_stops_at_ten() {
        let low = composite_score([("email", 50.0)]);
        let high = composite_score([("email", 100.0)]);
        assert!(low < high, "{low} {high}");
        let all = IDENTIFIERS.iter().map(|(_, n, _)| (*n, 100.0));
        assert_eq!(composite_score(all), 10.0);
        assert_eq!(composite_score([]), 0.0);
    }

    #[test]
    fn entries_are_per_event_name_and_only_for_website_events() {
        let crm = r#"{"event_name":"Qualified","event_time":1000,"action_source":"system_generated","user_data":{"em":["a"]}}"#;
        let book = book_with(&[
            web("Lead", r#"{"em":["a"]}"#),
            web("Purchase", r#"{"ph":["a"]}"#),
            crm.into(),
        ]);
        let v = book
            .answer(
                Some("dataset_id=42&access_token=t&fields=web{event_name}"),
                ok,
                None,
            )
            .unwrap();
        assert_eq!(
            v,
            json!({"web": [{"event_name": "Lead"}, {"event_name": "Purchase"}]})
        );
        // Nothing offline was received: an empty answer, not an empty list.
        let v = book
            .answer(
                Some("dataset_id=42&access_token=t&fields=offline"),
                ok,
                None,
            )
            .unwrap();
        assert_eq!(v, json!({}));
    }

    #[test]
    fn offline_scores_come_as_score_objects_with_email_and_phone_coverage() {
        let store = r#"{"event_name":"Purchase","event_time":1000,"action_source":"physical_store","user_data":{"em":["a"],"ph":["b"]}}"#;
        let book = book_with(&[store.into()]);
        let v = book
            .answer(
                Some("dataset_id=42&access_token=t&fields=offline{event_name,composite,match_key}"),
                ok,
                None,
            )
            .unwrap();
        let e = &v["offline"][0];
        assert_eq!(e["match_key"]["score"], 10.0);
        assert_eq!(
            e["match_key"]["coverage"],
            json!({"email": 100.0, "phone": 100.0})
        );
        assert!(e["composite"]["score"].as_f64().unwrap() > 5.0, "{e}");
        assert!(e.get("freshness").is_none());
    }

    #[test]
    fn errors_follow_meta_codes() {
        let book = book_with(&[web("Lead", r#"{"em":["a"]}"#)]);
        let code = |q: &str, token_ok: fn(&str) -> bool| {
            book.answer(Some(q), token_ok, None).unwrap_err().code
        };
        assert_eq!(code("dataset_id=42&fields=web", ok), 190, "no token");
        assert_eq!(
            code("dataset_id=42&access_token=x&fields=web", |_| false),
            190
        );
        assert_eq!(code("access_token=t&fields=web", ok), 100);
        assert_eq!(code("dataset_id=4x2&access_token=t&fields=web", ok), 100);
        assert_eq!(code("dataset_id=42&access_token=t", ok), 100);
        assert_eq!(
            code("dataset_id=42&access_token=t&fields=web{event_name", ok),
            100
        );
        assert_eq!(code("dataset_id=42&access_token=t&fields=crm", ok), 100);
        assert_eq!(code("dataset_id=7&access_token=t&fields=web", ok), 2044055);
        book.set_offline_beta(false);
        assert_eq!(code("dataset_id=42&access_token=t&fields=offline", ok), 100);
        book.deny("42");
        assert_eq!(code("dataset_id=42&access_token=t&fields=web", ok), 10);
    }

    #[test]
    fn field_expansion_parses_nested_braces() {
        let f = parse_fields("web{a,b{c}},offline").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0].children.as_ref().unwrap()[1]
                .children
                .as_ref()
                .unwrap()[0]
                .name,
            "c"
        );
        assert!(f[1].children.is_none());
        for bad in ["", "web{", "web}", "web{}", "a,,b", "web{a}x"] {
            assert!(parse_fields(bad).is_none(), "{bad}");
        }
    }
}
