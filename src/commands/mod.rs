//! The commands, one file each. `src/cli.rs` reads the flags and calls one of them; each
//! returns the code the process exits with ([`Exit`]).
//!
//! `sync`, `retry`, `run` and `demo` send; `migrate` creates our tables; `quality` reads from
//! Meta and records what it read; `sandbox` and `normalize` stand alone. `check`, `preview`, `status`, `runs` and `refused` read (and
//! `reset` moves a cursor); they never send. Nothing a command prints carries customer data:
//! row keys, event ids, cursor values, counts, reason codes and hashed events only.

pub mod check;
pub mod demo;
pub mod history;
pub mod migrate;
pub mod normalize;
pub mod preview;
pub mod quality;
pub mod reset;
pub mod retry;
pub mod run;
pub mod sandbox;
pub mod status;
pub mod summary;
pub mod sync;

use crate::config::{Config, ConfigError, ModelConfig};
pub use crate::exit::{Exit, UsageError};
pub use crate::human::{group_digits, human_duration, rows, utc};
use crate::mapping::rules::{MAX_AGE_PHYSICAL_STORE_SECS, MAX_AGE_SECS};
use crate::mapping::ColumnInfo;
use crate::params::{Target, TopField};
pub use crate::source::model_backlog;
use crate::source::{EventTimeWindow, ModelQuery, Warehouse, WindowDays};
use crate::state::{CursorPosition, StateStore};
use anyhow::Context;
use std::sync::Arc;

/// The config file at `path`, loaded and validated.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<Arc<Config>> {
    Ok(Arc::new(Config::load(path)?))
}

/// The models named (all enabled ones when none is), or an error naming the models there are.
pub fn select_models<'a>(
    config: &'a Config,
    names: &[String],
) -> anyhow::Result<Vec<&'a ModelConfig>> {
    if names.is_empty() {
        return Ok(config.models.iter().filter(|m| m.enabled).collect());
    }
    names
        .iter()
        .map(|n| {
            config.model(n).with_context(|| {
                format!(
                    "no model named `{n}` in {} (models: {})",
                    config.source,
                    config
                        .models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })
        .collect()
}

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
            crate::human::rows_are(c.outside_window)
        ),
        Ok(None) => format!(
            "the event_time column `{}` is text, so rows outside Meta's window cannot be counted in advance",
            window.event_time_column
        ),
        Err(e) => format!("rows outside Meta's window could not be counted: {e}"),
    }
}

/// A cursor position as shown to people: the cursor value and the row key.
pub fn position_text(p: &CursorPosition) -> String {
    format!("{} / key {}", p.cursor_value, p.row_key.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
