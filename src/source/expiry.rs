//! Rows about to leave Meta's window. Meta refuses an event whose `event_time` is older than 7
//! days (62 for `physical_store`): "If any event in `data` is older, the whole request fails"
//! (https://developers.facebook.com/documentation/ads-commerce/conversions-api/using-the-api ;
//! the 62 days: https://developers.facebook.com/documentation/ads-commerce/conversions-api/offline-events ).
//! A row waiting after the cursor has a deadline, `event_time` + its window: past it, the next
//! run can only refuse the row (`event_time_too_old`). The counts come with the backlog's own
//! aggregate, so `status` and the metrics still ask the warehouse once per model.

use super::inspect::event_time_sql;
use super::{quote_ident, Backlog, ModelQuery, Result, Warehouse};
use crate::config::ModelConfig;
use crate::mapping::rules::{MAX_AGE_PHYSICAL_STORE_SECS, MAX_AGE_SECS};
use crate::mapping::ColumnInfo;
use crate::params::{Target, TopField};
use crate::state::CursorPosition;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

/// How long Meta accepts events after their `event_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowDays {
    /// One window for every row (7 days; 62 for `physical_store`).
    Fixed(i64),
    /// `action_source` comes from this column: 62 days where it says physical_store, else 7.
    /// Where the column is NULL the model's constant applies, which may be physical_store.
    ByActionSourceColumn {
        column: String,
        constant_is_store: bool,
    },
}

/// Where a model's `event_time` comes from, for counting rows outside Meta's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeWindow {
    pub event_time_column: String,
    pub days: WindowDays,
}

impl WindowDays {
    /// SQL for the window of a row, in days.
    pub(super) fn sql(&self) -> String {
        match self {
            WindowDays::Fixed(d) => d.to_string(),
            WindowDays::ByActionSourceColumn {
                column,
                constant_is_store,
            } => format!(
                "CASE WHEN coalesce(lower(trim(t.{}::text)), '{}') = 'physical_store' THEN {} ELSE {} END",
                quote_ident(column),
                if *constant_is_store { "physical_store" } else { "" },
                MAX_AGE_PHYSICAL_STORE_SECS / 86_400,
                MAX_AGE_SECS / 86_400
            ),
        }
    }
}

/// Rows waiting after the cursor, measured against Meta's window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Expiry {
    /// Rows whose `event_time` leaves the window within the horizon (`service.expiring_within`).
    pub expiring: i64,
    /// Rows already outside the window: the next run refuses them (`event_time_too_old`).
    pub expired: i64,
    /// The earliest deadline (`event_time` + window) among the rows still inside it.
    pub earliest: Option<DateTime<Utc>>,
}

/// The waiting rows against Meta's window, or why they cannot be counted in SQL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ExpiryCount {
    Counted(Expiry),
    Unknown(String),
}

/// Where `event_time` comes from, for counting rows outside Meta's window: a column of the
/// model's output (whatever SQL computes it), or the reason no estimate is possible.
pub fn event_time_window(
    model: &ModelConfig,
    columns: &[ColumnInfo],
) -> std::result::Result<EventTimeWindow, String> {
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
    let store = model.constants.iter().any(|(t, v)| {
        *t == Target::Top(TopField::ActionSource) && v.as_str() == Some("physical_store")
    });
    let days = match column_for(TopField::ActionSource) {
        Some(column) => WindowDays::ByActionSourceColumn {
            column,
            constant_is_store: store,
        },
        None => WindowDays::Fixed(if store {
            MAX_AGE_PHYSICAL_STORE_SECS / 86_400
        } else {
            MAX_AGE_SECS / 86_400
        }),
    };
    Ok(EventTimeWindow {
        event_time_column,
        days,
    })
}

/// The aggregates counting expiring and expired rows, and the earliest deadline: three
/// columns, to follow the backlog's own. Or why they cannot be counted in SQL (a text
/// event_time).
fn expiry_sql(
    query: &ModelQuery,
    window: &EventTimeWindow,
    horizon: Duration,
) -> std::result::Result<String, String> {
    let kind = query
        .column_kind(&window.event_time_column)
        .ok_or_else(|| {
            format!(
                "the model has no column `{}` to read event_time from",
                window.event_time_column
            )
        })?;
    let event_time = event_time_sql(kind, &window.event_time_column).ok_or_else(|| {
        format!(
            "the event_time column `{}` is text, so rows leaving Meta's window cannot be counted in the warehouse (map a timestamp column to count them)",
            window.event_time_column
        )
    })?;
    let deadline = format!(
        "({event_time} + make_interval(days => {}))",
        window.days.sql()
    );
    // An infinite event_time has no deadline to report.
    let inside = format!("{deadline} >= now() AND isfinite({deadline})");
    Ok(format!(
        "count(*) FILTER (WHERE {inside} AND {deadline} < now() + make_interval(secs => {})), \
         count(*) FILTER (WHERE {deadline} < now()), \
         min({deadline}) FILTER (WHERE {inside})",
        horizon.as_secs()
    ))
}

impl Warehouse {
    /// [`Warehouse::backlog`], with the waiting rows measured against Meta's window in the same
    /// aggregate query. When the window cannot be counted (a text event_time) or the counting
    /// query fails, the backlog is still measured, and the expiry says why it is unknown.
    pub async fn backlog_with_expiry(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
        columns: &[ColumnInfo],
        after: Option<&CursorPosition>,
        horizon: Duration,
    ) -> Result<Backlog> {
        let expiry = event_time_window(model, columns)
            .and_then(|window| expiry_sql(query, &window, horizon));
        let expiry = match expiry {
            Ok(sql) => sql,
            Err(why) => {
                let mut backlog = self.backlog(model, query, after).await?;
                backlog.expiry = Some(ExpiryCount::Unknown(why));
                return Ok(backlog);
            }
        };
        let what = format!("{}, {expiry}", query.backlog_aggregates());
        match self.aggregate_after(model, query, &what, after).await {
            Ok(row) => {
                let mut backlog = Backlog::from_row(&row)?;
                backlog.expiry = Some(ExpiryCount::Counted(Expiry {
                    expiring: row.try_get(4)?,
                    expired: row.try_get(5)?,
                    earliest: row.try_get(6)?,
                }));
                Ok(backlog)
            }
            Err(e) => {
                // An event_time Postgres cannot turn into a time (out of range): the rows
                // waiting are still worth knowing.
                let mut backlog = self.backlog(model, query, after).await?;
                backlog.expiry = Some(ExpiryCount::Unknown(format!(
                    "rows leaving Meta's window cannot be counted: {e}"
                )));
                Ok(backlog)
            }
        }
    }
}

/// The rows after `after` that the model's next run would read, with those leaving Meta's
/// window within `horizon` (one describe, one aggregate).
pub async fn model_backlog_with_expiry(
    warehouse: &Warehouse,
    model: &ModelConfig,
    after: Option<&CursorPosition>,
    horizon: Duration,
) -> Result<Backlog> {
    let (query, columns) = warehouse.describe(model).await?;
    warehouse
        .backlog_with_expiry(model, &query, &columns, after, horizon)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
            WindowDays::ByActionSourceColumn {
                column: "action_source".into(),
                constant_is_store: false
            }
        );
        assert_eq!(
            w.days.sql(),
            "CASE WHEN coalesce(lower(trim(t.\"action_source\"::text)), '') = 'physical_store' THEN 62 ELSE 7 END"
        );
    }

    #[test]
    fn a_null_action_source_takes_the_constants_window() {
        let m = model("action_source = \"physical_store\"", "SELECT 1");
        let w = event_time_window(&m, &cols(&["id", "u", "event_time", "action_source"])).unwrap();
        assert!(w
            .days
            .sql()
            .contains("'physical_store') = 'physical_store'"));
    }

    #[test]
    fn an_event_time_without_a_column_cannot_be_counted() {
        let m = model("action_source = \"crm\"", "SELECT 1");
        assert!(event_time_window(&m, &cols(&["id", "u"])).is_err());
    }
}
