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
pub use crate::human::{group_digits, human_duration, rows, setting_duration, utc};
use crate::mapping::ColumnInfo;
pub use crate::source::{event_time_window, model_backlog};
use crate::source::{ModelQuery, Warehouse, WindowDays};
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
        WindowDays::ByActionSourceColumn { .. } => {
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
