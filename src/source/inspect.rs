//! Questions operators ask about a model's rows, each answered with one cheap query in a READ
//! ONLY transaction: can its pages be planned, how many rows wait after the cursor and how old
//! they are, where a backfill from a cursor value starts, and how many rows a run would find
//! outside Meta's window. Nothing here reads a customer value.

use super::expiry::{EventTimeWindow, ExpiryCount};
use super::{db_message, quote_ident, LowerBound, ModelQuery, Result, SourceError, Warehouse};
use crate::config::ModelConfig;
use crate::mapping::ValueKind;
use crate::state::CursorPosition;
use sqlx::{Executor, Row};

/// The rows a run would read next.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Backlog {
    /// Rows after the cursor.
    pub rows: i64,
    /// Cursor value of the oldest and newest of them (text form), when there are any.
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// Seconds since the oldest waiting row's cursor value, for time cursors (timestamp, date).
    pub oldest_age_secs: Option<f64>,
    /// The waiting rows against Meta's window, when asked for
    /// ([`Warehouse::backlog_with_expiry`]).
    pub expiry: Option<ExpiryCount>,
}

impl Backlog {
    /// The first four columns of [`ModelQuery::backlog_aggregates`].
    pub(super) fn from_row(row: &sqlx::postgres::PgRow) -> Result<Backlog> {
        Ok(Backlog {
            rows: row.try_get(0)?,
            oldest: row.try_get(1)?,
            newest: row.try_get(2)?,
            oldest_age_secs: row.try_get(3)?,
            expiry: None,
        })
    }
}

/// Rows after a position, and how many of them are older than Meta accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCount {
    pub rows: i64,
    pub outside_window: i64,
}

impl ModelQuery {
    /// `SELECT <what> FROM (<model sql>) AS t WHERE <cursor and key not null>`.
    pub(super) fn wrapped(&self, sql: &str, what: &str) -> String {
        let not_null: Vec<String> = self
            .order_columns()
            .iter()
            .map(|c| format!("{c} IS NOT NULL"))
            .collect();
        format!(
            "SELECT {what} FROM (\n{sql}\n) AS t WHERE {}",
            not_null.join(" AND ")
        )
    }

    /// `t."cursor", t."key1", ...` in paging order.
    pub(super) fn order_columns(&self) -> Vec<String> {
        std::iter::once(self.cursor_index)
            .chain(self.key_indexes.iter().copied())
            .map(|i| format!("t.{}", quote_ident(&self.columns[i].name)))
            .collect()
    }

    /// ` AND (cursor, key...) > ($n::text::type, ...)`, the reader's own condition, with
    /// parameters numbered from `first`.
    fn after_condition(&self, first: usize) -> String {
        let params: Vec<String> = std::iter::once(self.cursor_index)
            .chain(self.key_indexes.iter().copied())
            .enumerate()
            .map(|(n, i)| format!("${}::text::{}", first + n, self.columns[i].sql_type))
            .collect();
        format!(
            " AND ({}) > ({})",
            self.order_columns().join(", "),
            params.join(", ")
        )
    }

    pub(super) fn column_kind(&self, name: &str) -> Option<ValueKind> {
        self.columns.iter().find(|c| c.name == name).map(|c| c.kind)
    }

    /// The backlog's aggregates: how many rows, the oldest and newest cursor values (text),
    /// and the oldest one's age in seconds (NULL for integer cursors).
    pub(super) fn backlog_aggregates(&self) -> String {
        let cursor = self.order_columns()[0].clone();
        let age = age_secs_sql(self.cursor_sql_type(), &format!("min({cursor})"))
            .unwrap_or_else(|| "NULL::float8".into());
        format!("count(*), min({cursor})::text, max({cursor})::text, {age}")
    }
}

/// SQL for "seconds since `expr`" for a time-typed cursor, or None (integer cursors have no age).
fn age_secs_sql(sql_type: &str, expr: &str) -> Option<String> {
    let as_utc = if sql_type.starts_with("timestamp") && sql_type.ends_with("with time zone") {
        format!("({expr})")
    } else if sql_type.starts_with("timestamp") {
        // Timestamps without a zone are taken as UTC, as the mapping does.
        format!("(({expr}) AT TIME ZONE 'UTC')")
    } else if sql_type == "date" {
        format!("(({expr})::timestamp AT TIME ZONE 'UTC')")
    } else {
        return None;
    };
    // An `infinity` cursor has no age (Postgres refuses to subtract infinite timestamps).
    Some(format!(
        "CASE WHEN isfinite({expr}) THEN extract(epoch from now() - {as_utc})::float8 END"
    ))
}

/// SQL turning an `event_time` column into a timestamptz, like the mapping reads it; None for
/// text columns, whose values may be either and cannot be compared in SQL reliably.
pub(super) fn event_time_sql(kind: ValueKind, column: &str) -> Option<String> {
    let c = format!("t.{}", quote_ident(column));
    // Unix seconds beyond what a timestamp holds would make `to_timestamp` fail the whole
    // query: such a row has no time here (the mapping refuses it anyway).
    let seconds = |c: String| {
        format!("CASE WHEN {c}::float8 BETWEEN -1e11 AND 1e11 THEN to_timestamp({c}::float8) END")
    };
    Some(match kind {
        ValueKind::TimestampTz => c,
        ValueKind::Timestamp => format!("({c} AT TIME ZONE 'UTC')"),
        ValueKind::Date => format!("({c}::timestamp AT TIME ZONE 'UTC')"),
        ValueKind::Int | ValueKind::Numeric | ValueKind::Float => seconds(c),
        _ => return None,
    })
}

impl Warehouse {
    /// Plans the keyset page queries without reading a row: proves that the cursor and key
    /// columns can be ordered and compared with the stored position.
    pub async fn plan_paging(&self, query: &ModelQuery) -> Result<()> {
        // Planning needs only the statements' text; these parameters are never bound.
        let somewhere = CursorPosition {
            cursor_value: String::new(),
            row_key: vec![String::new(); query.key_indexes.len()],
        };
        let first = query
            .page_sql(&LowerBound::Beginning, None, query.page_size)
            .0;
        let next = query
            .page_sql(&LowerBound::After(somewhere), None, query.page_size)
            .0;
        let mut tx = self.read_only_tx().await?;
        for sql in [&first, &next] {
            tx.prepare(sql.as_str())
                .await
                .map_err(|e| SourceError::Model {
                    model: query.model.clone(),
                    message: format!(
                        "the keyset page query cannot be planned on the cursor `{}` and primary key: {}",
                        query.columns[query.cursor_index].name,
                        db_message(&e)
                    ),
                })?;
        }
        tx.rollback().await?;
        Ok(())
    }

    /// The rows a run would read next (after `after`, all when None): how many, and how old
    /// the oldest is. One aggregate query.
    pub async fn backlog(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
        after: Option<&CursorPosition>,
    ) -> Result<Backlog> {
        let what = query.backlog_aggregates();
        let row = self.aggregate_after(model, query, &what, after).await?;
        Backlog::from_row(&row)
    }

    /// The position just before cursor value `value`: the last row whose cursor is lower.
    /// A run that starts after it reads exactly the rows whose cursor is `value` or later
    /// (None: no row is lower, read from the start). Fails with a message naming the type
    /// when `value` is not a value of the cursor column's type.
    pub async fn position_before(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
        value: &str,
    ) -> Result<Option<CursorPosition>> {
        let sql_type = query.cursor_sql_type().to_string();
        let mut tx = self.read_only_tx().await?;
        sqlx::query(&format!("SELECT $1::text::{sql_type}"))
            .bind(value)
            .fetch_one(&mut *tx)
            .await
            .map_err(|_| SourceError::Model {
                model: query.model.clone(),
                message: format!(
                    "`{value}` is not a value of the cursor column `{}`, whose type is {sql_type}",
                    query.columns[query.cursor_index].name
                ),
            })?;
        let order = query.order_columns();
        let texts: Vec<String> = order.iter().map(|c| format!("{c}::text")).collect();
        let desc: Vec<String> = order.iter().map(|c| format!("{c} DESC")).collect();
        let sql = format!(
            "{} AND {} < $1::text::{sql_type} ORDER BY {} LIMIT 1",
            query.wrapped(&model.sql, &texts.join(", ")),
            order[0],
            desc.join(", ")
        );
        let row = sqlx::query(&sql)
            .bind(value)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| query_error(query, &e))?;
        tx.rollback().await?;
        let Some(row) = row else { return Ok(None) };
        let mut key = Vec::with_capacity(query.key_indexes.len());
        for i in 0..query.key_indexes.len() {
            key.push(row.try_get::<String, _>(i + 1)?);
        }
        Ok(Some(CursorPosition {
            cursor_value: row.try_get(0)?,
            row_key: key,
        }))
    }

    /// Among the rows after `after`, how many have an `event_time` older than Meta accepts.
    /// None when the event_time column's type cannot be compared in SQL (text).
    pub async fn count_outside_window(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
        after: Option<&CursorPosition>,
        window: &EventTimeWindow,
    ) -> Result<Option<WindowCount>> {
        let Some(kind) = query.column_kind(&window.event_time_column) else {
            return Ok(None);
        };
        let Some(event_time) = event_time_sql(kind, &window.event_time_column) else {
            return Ok(None);
        };
        let days = window.days.sql();
        let what = format!(
            "count(*), count(*) FILTER (WHERE {event_time} < now() - make_interval(days => {days}))"
        );
        let row = self.aggregate_after(model, query, &what, after).await?;
        Ok(Some(WindowCount {
            rows: row.try_get(0)?,
            outside_window: row.try_get(1)?,
        }))
    }
}

impl Warehouse {
    /// One row of aggregates (`what`) over the model's rows after `after` (all rows when
    /// None), in a read-only transaction.
    pub(super) async fn aggregate_after(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
        what: &str,
        after: Option<&CursorPosition>,
    ) -> Result<sqlx::postgres::PgRow> {
        if let Some(p) = after {
            query.check_position(p)?;
        }
        let mut sql = query.wrapped(&model.sql, what);
        if after.is_some() {
            sql.push_str(&query.after_condition(1));
        }
        let mut tx = self.read_only_tx().await?;
        let mut q = sqlx::query(&sql);
        if let Some(p) = after {
            q = q.bind(&p.cursor_value);
            for k in &p.row_key {
                q = q.bind(k);
            }
        }
        let row = q
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| query_error(query, &e))?;
        tx.rollback().await?;
        Ok(row)
    }
}

fn query_error(query: &ModelQuery, e: &sqlx::Error) -> SourceError {
    SourceError::Query {
        model: query.model.clone(),
        message: db_message(e),
    }
}

/// The rows after `after` that the model's next run would read (one describe, one aggregate).
pub async fn model_backlog(
    warehouse: &Warehouse,
    model: &ModelConfig,
    after: Option<&CursorPosition>,
) -> Result<Backlog> {
    let (query, _) = warehouse.describe(model).await?;
    warehouse.backlog(model, &query, after).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_cursors_have_an_age() {
        assert!(age_secs_sql("timestamp with time zone", "x")
            .unwrap()
            .contains("now() - (x)"));
        assert!(age_secs_sql("timestamp(3) without time zone", "x")
            .unwrap()
            .contains("AT TIME ZONE 'UTC'"));
        assert!(age_secs_sql("date", "x").is_some());
        assert_eq!(age_secs_sql("bigint", "x"), None);
    }

    #[test]
    fn text_event_times_cannot_be_counted_in_sql() {
        assert_eq!(event_time_sql(ValueKind::Text, "event_time"), None);
        assert!(event_time_sql(ValueKind::Int, "et")
            .unwrap()
            .contains("to_timestamp(t.\"et\"::float8)"));
    }
}
