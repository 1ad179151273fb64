//! Validation of one model: its name, pixel, query, key and cursor, which column feeds which
//! parameter, its constants and its per-model settings.

use super::raw::{OneOrMany, RawModel};
use super::{is_digits, parse_duration, ExternalIdMode, ModelConfig, Schedule, ACTION_SOURCES};
use crate::normalize::country_code;
use crate::params::{self, Target, TopField};
use std::path::Path;
use std::time::Duration;

/// What a model's settings default to, or are bounded by, from the global sections.
pub(super) struct ModelDefaults<'a> {
    pub(super) batch_size: usize,
    pub(super) page_size: u32,
    /// `state.ledger_retention` as written and parsed; None when it does not parse.
    pub(super) ledger_retention: Option<(&'a str, Duration)>,
}

pub(super) fn validate_model(
    m: RawModel,
    base_dir: &Path,
    defaults: &ModelDefaults<'_>,
    problems: &mut Vec<String>,
) -> Option<ModelConfig> {
    let name = match m.name {
        Some(n) if is_model_name(&n) => n,
        Some(n) => {
            problems.push(format!(
                "key `name`: `{n}` must be 1-63 letters, digits, `_` or `-`"
            ));
            return None;
        }
        None => {
            problems.push("key `name` is missing".into());
            return None;
        }
    };
    let pixel_id = match m.pixel_id {
        Some(toml::Value::String(s)) if is_digits(s.trim()) => s.trim().to_string(),
        Some(toml::Value::Integer(n)) if n > 0 => n.to_string(),
        Some(_) => {
            problems.push(
                "key `pixel_id`: must be the numeric pixel or dataset ID, e.g. \"123456789012345\""
                    .into(),
            );
            String::new()
        }
        None => {
            problems.push("key `pixel_id` is missing".into());
            String::new()
        }
    };
    let schedule = match m.schedule.as_deref().map(Schedule::parse) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            problems.push(format!("key `schedule`: {e}"));
            None
        }
        None => {
            problems.push(
                "key `schedule` is missing (a cron expression such as \"*/15 * * * *\")".into(),
            );
            None
        }
    };
    let (sql, sql_origin) = match (m.sql, m.sql_file) {
        (Some(_), Some(_)) => {
            problems.push("keys `sql` and `sql_file` are both set; keep one".into());
            (String::new(), String::new())
        }
        (Some(s), None) => (s, "inline `sql`".to_string()),
        (None, Some(f)) => {
            let path = base_dir.join(&f);
            match std::fs::read_to_string(&path) {
                Ok(s) => (s, path.display().to_string()),
                Err(e) => {
                    problems.push(format!(
                        "key `sql_file`: cannot read {}: {e}",
                        path.display()
                    ));
                    (String::new(), String::new())
                }
            }
        }
        (None, None) => {
            problems.push("key `sql` is missing (or give `sql_file`)".into());
            (String::new(), String::new())
        }
    };
    let sql = sql.trim().trim_end_matches(';').trim().to_string();
    if sql.is_empty() && problems.is_empty() {
        problems.push("key `sql`: the query is empty".into());
    }
    let primary_key = match m.primary_key {
        Some(OneOrMany::One(k)) if !k.trim().is_empty() => vec![k.trim().to_string()],
        Some(OneOrMany::Many(ks)) if !ks.is_empty() && ks.iter().all(|k| !k.trim().is_empty()) => {
            ks.into_iter().map(|k| k.trim().to_string()).collect()
        }
        Some(_) => {
            problems.push("key `primary_key`: give one column name or a list of them".into());
            vec![]
        }
        None => {
            problems.push(
                "key `primary_key` is missing (the column, or columns, that identify a row)".into(),
            );
            vec![]
        }
    };
    let cursor = match m.cursor {
        Some(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            problems.push("key `cursor` is missing (a timestamp, date or integer column that grows as rows are added or changed)".into());
            String::new()
        }
    };

    let mut constants = Vec::new();
    let mut crm_shorthand = false;
    for (key, value) in m.constants {
        let target = match params::resolve(&key) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("key `constants.\"{key}\"`: {e}"));
                continue;
            }
        };
        let json = match toml_to_json(&value) {
            Some(j) => j,
            None => {
                problems.push(format!(
                    "key `constants.\"{key}\"`: dates are not allowed as constants"
                ));
                continue;
            }
        };
        if target == Target::Top(TopField::ActionSource) {
            match json.as_str() {
                Some("crm") => {
                    crm_shorthand = true;
                    constants.push((target, serde_json::Value::String("system_generated".into())));
                    continue;
                }
                Some(s) if ACTION_SOURCES.contains(&s) => {}
                _ => {
                    problems.push(format!(
                        "key `constants.action_source`: {json} is not one of {} (or `crm`, shorthand for system_generated with custom_data.event_source = \"crm\")",
                        ACTION_SOURCES.join(", ")
                    ));
                    continue;
                }
            }
        }
        constants.push((target, json));
    }
    if crm_shorthand {
        let es = Target::CustomData("event_source".into());
        if !constants.iter().any(|(t, _)| *t == es) {
            constants.push((es, serde_json::Value::String("crm".into())));
        }
    }

    let mut columns = Vec::new();
    for (param, column) in m.columns {
        match params::resolve(&param) {
            Ok(t) => columns.push((t, column)),
            Err(e) => problems.push(format!("key `columns.\"{param}\"`: {e}")),
        }
    }

    let default_country = match m.default_country.as_deref() {
        None => None,
        Some(c) => match country_code(c) {
            Some(code) => Some(code),
            None => {
                problems.push(format!(
                    "key `default_country`: `{c}` is not a country (use an ISO 3166-1 code like \"us\" or \"gb\")"
                ));
                None
            }
        },
    };
    let external_id = match m.external_id.as_deref() {
        None | Some("hash") => ExternalIdMode::Hash,
        Some("raw") => ExternalIdMode::Raw,
        Some(other) => {
            problems.push(format!(
                "key `external_id`: `{other}` must be \"hash\" or \"raw\""
            ));
            ExternalIdMode::Hash
        }
    };
    let batch_size = match m.batch_size {
        None => defaults.batch_size,
        Some(n) if (1..=1000).contains(&n) => n as usize,
        Some(n) => {
            problems.push(format!(
                "key `batch_size`: {n} is outside 1..=1000 (Meta accepts at most 1000 events per request)"
            ));
            defaults.batch_size
        }
    };
    let page_size = match m.page_size {
        None => defaults.page_size,
        Some(0) => {
            problems
                .push("key `page_size`: 0 rows per keyset page; it must be at least 1".to_string());
            defaults.page_size
        }
        Some(n) => n,
    };
    let lookback = match m.lookback.as_deref() {
        None => Duration::ZERO,
        Some(t) => parse_duration(t).unwrap_or_else(|e| {
            problems.push(format!("key `lookback`: {e}"));
            Duration::ZERO
        }),
    };
    // The lookback re-reads rows already settled; the delivery ledger is what keeps a re-read
    // row from being sent again, and it forgets events after its retention. A longer lookback
    // would re-send, under the same event id, rows whose ledger entry was pruned (Meta
    // deduplicates an event_id for 48 hours only, capi-reference.md §7).
    if let (Some(text), Some((retention_text, retention))) =
        (m.lookback.as_deref(), defaults.ledger_retention)
    {
        if lookback > retention {
            problems.push(format!(
                "key `lookback` = \"{}\" is longer than key `state.ledger_retention` = \"{retention_text}\": the delivery ledger suppresses re-sends only within its retention, so rows re-read after their ledger entry is pruned would be sent again; shorten lookback or lengthen state.ledger_retention",
                text.trim()
            ));
        }
    }

    Some(ModelConfig {
        name,
        pixel_id,
        schedule: schedule.unwrap_or_else(|| Schedule::parse("0 * * * *").expect("valid")),
        sql,
        sql_origin,
        primary_key,
        cursor,
        constants,
        columns,
        ignore_columns: m.ignore_columns,
        default_country,
        external_id,
        test_event_code: m.test_event_code.filter(|s| !s.is_empty()),
        batch_size,
        page_size,
        lookback,
        enabled: m.enabled,
    })
}

fn toml_to_json(v: &toml::Value) -> Option<serde_json::Value> {
    Some(match v {
        toml::Value::String(s) => serde_json::Value::String(s.clone()),
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(_) => return None,
        toml::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(toml_to_json).collect::<Option<Vec<_>>>()?)
        }
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k, v)| Some((k.clone(), toml_to_json(v)?)))
                .collect::<Option<serde_json::Map<_, _>>>()?,
        ),
    })
}

fn is_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
