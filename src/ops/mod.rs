//! Operator commands: `check`, `preview`, `status`, `runs`, `refused`, `reset` and the
//! up-front report of `sync --from`. They read (and `reset` moves a cursor); they never send.
//! Nothing they print carries customer data: row keys, event ids, cursor values, counts,
//! reason codes and hashed events only.

pub mod check;
pub mod history;
pub mod preview;
pub mod reset;
pub mod status;

use crate::config::{Config, ConfigError, ModelConfig};
use crate::mapping::params::{Target, TopField};
use crate::mapping::rules::{MAX_AGE_PHYSICAL_STORE_SECS, MAX_AGE_SECS};
use crate::mapping::ColumnInfo;
use crate::source::{EventTimeWindow, ModelQuery, Warehouse, WindowDays};
use crate::state::{CursorPosition, StateStore};

/// A command used wrongly (a value that does not fit, a missing `--yes`): exit code 2, like
/// a config error, with a message that says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The model named `name`, or a config error listing the models there are.
pub fn model_named<'a>(config: &'a Config, name: &str) -> Result<&'a ModelConfig, ConfigError> {
    config.model(name).ok_or_else(|| ConfigError {
        problems: vec![format!(
            "no model named `{name}` in {} (models: {})",
            config.source,
            config
                .models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )],
    })
}

/// Our tables, opened for reading only; None when capi-sync has never run against them.
pub async fn read_only_state(config: &Config) -> anyhow::Result<Option<StateStore>> {
    use anyhow::Context;
    StateStore::open_existing(config.state_url(), &config.state.schema)
        .await
        .with_context(|| {
            format!(
                "while connecting to the state database at {} (set state.url, or warehouse.url when they are the same)",
                crate::config::redact_url(config.state_url().expose())
            )
        })
}

/// Where `event_time` comes from, for counting rows outside Meta's window: a column of the
/// model's output (whatever SQL computes it), or the reason no estimate is possible.
pub fn event_time_window(
    model: &ModelConfig,
    columns: &[ColumnInfo],
) -> Result<EventTimeWindow, String> {
    let column_for = |field: TopField| -> Option<String> {
        let target = Target::Top(field);
        if let Some((_, c)) = model.columns.iter().find(|(t, _)| *t == target) {
            return columns.iter().any(|x| &x.name == c).then(|| c.clone());
        }
        columns
            .iter()
            .find(|c| {
                c.name == field.key()
                    && !model.ignore_columns.contains(&c.name)
                    && !model.columns.iter().any(|(_, mapped)| mapped == &c.name)
            })
            .map(|c| c.name.clone())
    };
    let Some(event_time_column) = column_for(TopField::EventTime) else {
        return Err(
            "event_time does not come from a column of the model, so rows outside Meta's window cannot be counted in advance"
                .into(),
        );
    };
    let days = match column_for(TopField::ActionSource) {
        Some(c) => WindowDays::ByActionSourceColumn(c),
        None => {
            let store = model.constants.iter().any(|(t, v)| {
                *t == Target::Top(TopField::ActionSource) && v.as_str() == Some("physical_store")
            });
            WindowDays::Fixed(if store {
                MAX_AGE_PHYSICAL_STORE_SECS / 86_400
            } else {
                MAX_AGE_SECS / 86_400
            })
        }
    };
    Ok(EventTimeWindow {
        event_time_column,
        days,
    })
}

/// The line reported before a backfill or a reset: how many of the rows the next run reads
/// are older than Meta accepts ("3 120 rows are older than 7 days and cannot be sent").
pub async fn window_report(
    warehouse: &Warehouse,
    model: &ModelConfig,
    query: &ModelQuery,
    columns: &[ColumnInfo],
    after: Option<&CursorPosition>,
) -> String {
    let window = match event_time_window(model, columns) {
        Ok(w) => w,
        Err(why) => return why,
    };
    let counted = warehouse
        .count_outside_window(model, query, after, &window)
        .await;
    let age = match &window.days {
        WindowDays::Fixed(d) => format!("{d} days"),
        WindowDays::ByActionSourceColumn(_) => {
            "Meta's window (7 days; 62 for physical_store)".into()
        }
    };
    match counted {
        Ok(Some(c)) if c.outside_window == 0 => format!(
            "{} to read; none is older than {age}",
            rows(c.rows)
        ),
        Ok(Some(c)) => format!(
            "{} to read; {} older than {age} and cannot be sent (they will be recorded as refused: event_time_too_old)",
            rows(c.rows),
            are(c.outside_window)
        ),
        Ok(None) => format!(
            "the event_time column `{}` is text, so rows outside Meta's window cannot be counted in advance",
            window.event_time_column
        ),
        Err(e) => format!("rows outside Meta's window could not be counted: {e}"),
    }
}

/// "1 row" / "3 120 rows".
pub fn rows(n: i64) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{} rows", group_digits(n))
    }
}

/// "1 row is" / "3 120 rows are".
fn are(n: i64) -> String {
    if n == 1 {
        "1 row is".into()
    } else {
        format!("{} rows are", group_digits(n))
    }
}

/// Thousands separated by a space: 3120 → "3 120".
pub fn group_digits(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    out
}

/// A short human duration: "45s", "3m 10s", "2h 5m", "3d 4h".
pub fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `2026-03-01 12:00:02 UTC`.
pub fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A cursor position as shown to people: the cursor value and the row key.
pub fn position_text(p: &CursorPosition) -> String {
    format!("{} / key {}", p.cursor_value, p.row_key.join(", "))
}

/// The rows after `after` that the model's next run would read (one describe, one aggregate).
pub async fn model_backlog(
    warehouse: &Warehouse,
    model: &ModelConfig,
    after: Option<&CursorPosition>,
) -> Result<crate::source::Backlog, crate::source::SourceError> {
    let (query, _) = warehouse.describe(model).await?;
    warehouse.backlog(model, &query, after).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_by_three_with_spaces() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(3120), "3 120");
        assert_eq!(group_digits(1_234_567), "1 234 567");
        assert_eq!(rows(1), "1 row");
        assert_eq!(rows(3120), "3 120 rows");
    }

    fn model(constants: &str, sql: &str) -> ModelConfig {
        let text = format!(
            "[[models]]\nname = \"m\"\npixel_id = \"1\"\nschedule = \"0 * * * *\"\nsql = \"{sql}\"\nprimary_key = \"id\"\ncursor = \"u\"\n[models.constants]\n{constants}\n"
        );
        Config::from_toml_str(&text, std::path::Path::new("."))
            .unwrap()
            .models
            .remove(0)
    }

    fn cols(names: &[&str]) -> Vec<ColumnInfo> {
        names
            .iter()
            .map(|n| ColumnInfo {
                name: n.to_string(),
                kind: crate::mapping::ValueKind::TimestampTz,
            })
            .collect()
    }

    #[test]
    fn physical_store_events_get_metas_62_day_window() {
        let m = model("action_source = \"physical_store\"", "SELECT 1");
        let w = event_time_window(&m, &cols(&["id", "u", "event_time"])).unwrap();
        assert_eq!(w.event_time_column, "event_time");
        assert_eq!(w.days, WindowDays::Fixed(62));
    }

    #[test]
    fn an_action_source_column_decides_the_window_row_by_row() {
        let m = model("", "SELECT 1");
        let w = event_time_window(&m, &cols(&["id", "u", "event_time", "action_source"])).unwrap();
        assert_eq!(
            w.days,
            WindowDays::ByActionSourceColumn("action_source".into())
        );
    }

    #[test]
    fn an_event_time_without_a_column_cannot_be_counted() {
        let m = model("action_source = \"crm\"", "SELECT 1");
        assert!(event_time_window(&m, &cols(&["id", "u"])).is_err());
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(42.4), "42s");
        assert_eq!(human_duration(190.0), "3m 10s");
        assert_eq!(human_duration(7500.0), "2h 5m");
        assert_eq!(human_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3d 4h");
    }
}
