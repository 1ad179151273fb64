//! The warehouse side: describes a model's query and reads its rows in keyset pages on
//! `(cursor, primary key)`, each page in a READ ONLY transaction with a statement timeout.
//! The model's SQL is wrapped as a subquery, never edited.

mod decode;
mod expiry;
mod inspect;
mod query;
mod unreadable;

pub use expiry::{
    event_time_window, model_backlog_with_expiry, EventTimeWindow, Expiry, ExpiryCount, WindowDays,
};
pub use inspect::{model_backlog, Backlog, WindowCount};
pub use query::ModelQuery;
pub use unreadable::{DuplicateKeys, UnreadableRows};

use query::{Param, ReadColumn};

use crate::config::{ModelConfig, Secret};
use crate::mapping::{ColumnInfo, Value, ValueKind};
use crate::state::CursorPosition;
use futures::TryStreamExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Column, Executor, PgPool, Statement, TypeInfo};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Not marked as the error's source: an error chain printed whole (`{:#}`) would show
    /// sqlx's own text, which quotes the values that the sanitized message leaves out.
    #[error("warehouse: {}", db_message(.0))]
    Db(sqlx::Error),
    /// Not a source: the line already says the cause (see [`crate::connection::ConnectError`]).
    #[error("warehouse: {0}")]
    Connect(crate::connection::ConnectError),
    #[error("model `{model}`: the query failed: {message}")]
    Query { model: String, message: String },
    #[error("model `{model}`: {message}")]
    Model { model: String, message: String },
}

impl From<sqlx::Error> for SourceError {
    fn from(e: sqlx::Error) -> SourceError {
        SourceError::Db(e)
    }
}

pub type Result<T> = std::result::Result<T, SourceError>;

/// A connection pool to the warehouse.
#[derive(Clone, Debug)]
pub struct Warehouse {
    pool: PgPool,
    statement_timeout: Duration,
    /// A page stops at this many bytes of values even before `page_size` rows.
    page_bytes: usize,
}

/// `warehouse.page_bytes` when none is set.
pub const DEFAULT_PAGE_BYTES: usize = 64 << 20;

/// Where a read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LowerBound {
    /// Every row.
    Beginning,
    /// Rows strictly after this (cursor, key) position.
    After(CursorPosition),
    /// The page after a full one: rows at or after `last`, less the first `rows_at_last` rows
    /// at exactly `last`, which earlier pages read. Paging strictly after `last` would skip
    /// a row repeating the last one's (cursor, key) on the next page.
    ///
    /// Within a run every copy is therefore read (and refused as a duplicate). A run resumes
    /// from the stored cursor strictly after it, though: a run that stops between two copies
    /// (its deadline, a shutdown, a failed batch exactly there) leaves the later copies
    /// unread, and with them only refusals that were never recorded.
    PageAfter {
        last: CursorPosition,
        rows_at_last: u32,
    },
    /// Rows whose cursor is at least this value (a backfill from a point).
    CursorAtLeast(String),
    /// Rows whose cursor is later than this value minus the lookback (late-row re-reads).
    CursorWithin {
        cursor_value: String,
        lookback: Duration,
    },
}

/// A read: rows above `lower` and, when `upper` is set, at or below that position.
#[derive(Debug, Clone)]
pub struct ReadRange {
    pub lower: LowerBound,
    pub upper: Option<CursorPosition>,
    /// Marks the rows as re-reads of the already-settled range (lookback).
    pub reread: bool,
}

/// One row as read: the mapped values, and the row's position in text form.
#[derive(Debug, Clone)]
pub struct SourceRow {
    pub values: Vec<Value>,
    pub cursor_text: String,
    pub key: Vec<String>,
    /// Read again from the range behind the stored cursor (lookback), not new.
    pub reread: bool,
    /// The row repeats the (cursor, primary key) of the row read just before it: the model's
    /// output holds two rows for one key at one cursor value. Keyset paging cannot tell them
    /// apart, so the run refuses this one as `duplicate_primary_key`.
    pub duplicate: bool,
}

impl SourceRow {
    pub fn position(&self) -> CursorPosition {
        CursorPosition {
            cursor_value: self.cursor_text.clone(),
            row_key: self.key.clone(),
        }
    }

    fn is_at(&self, p: &CursorPosition) -> bool {
        self.cursor_text == p.cursor_value && self.key == p.row_key
    }

    fn same_position(&self, other: &SourceRow) -> bool {
        self.cursor_text == other.cursor_text && self.key == other.key
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn kind_of(type_name: &str) -> ValueKind {
    match type_name {
        "BOOL" => ValueKind::Bool,
        "INT2" | "INT4" | "INT8" => ValueKind::Int,
        "FLOAT4" | "FLOAT8" => ValueKind::Float,
        "NUMERIC" => ValueKind::Numeric,
        "DATE" => ValueKind::Date,
        "TIMESTAMP" => ValueKind::Timestamp,
        "TIMESTAMPTZ" => ValueKind::TimestampTz,
        "JSON" | "JSONB" => ValueKind::Json,
        t if t.ends_with("[]") => ValueKind::TextArray,
        _ => ValueKind::Text,
    }
}

impl Warehouse {
    pub async fn connect(
        url: &Secret,
        statement_timeout: Duration,
        max_connections: u32,
    ) -> Result<Warehouse> {
        let (opts, target) = crate::connection::parse(url).map_err(SourceError::Connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(15))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    crate::connection::set_server_keepalives(conn).await;
                    Ok(())
                })
            })
            .connect_with(opts.application_name("capi-sync"))
            .await
            .map_err(|e| {
                SourceError::Connect(crate::connection::explain(&e, &target, Some(url)))
            })?;
        Ok(Warehouse {
            pool,
            statement_timeout,
            page_bytes: DEFAULT_PAGE_BYTES,
        })
    }

    /// Bounds each page by bytes of values as well as by rows (`warehouse.page_bytes`).
    pub fn with_page_bytes(mut self, page_bytes: u64) -> Warehouse {
        self.page_bytes = usize::try_from(page_bytes).unwrap_or(usize::MAX).max(1);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn read_only_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        tx.execute("SET TRANSACTION READ ONLY").await?;
        let ms = self.statement_timeout.as_millis().max(1);
        tx.execute(format!("SET LOCAL statement_timeout = {ms}").as_str())
            .await?;
        Ok(tx)
    }

    /// Describes the model's output columns (the query is planned, not run).
    pub async fn describe(&self, model: &ModelConfig) -> Result<(ModelQuery, Vec<ColumnInfo>)> {
        let probe = format!("SELECT * FROM (\n{}\n) AS t LIMIT 0", model.sql);
        let mut tx = self.read_only_tx().await?;
        let stmt = tx
            .prepare(probe.as_str())
            .await
            .map_err(|e| SourceError::Query {
                model: model.name.clone(),
                message: db_message(&e),
            })?;
        let mut columns = Vec::new();
        for c in stmt.columns() {
            let ti = c.type_info();
            let sql_type = match ti.oid() {
                Some(oid) => {
                    sqlx::query_scalar::<_, String>("SELECT format_type($1, NULL)")
                        .bind(oid)
                        .fetch_one(&mut *tx)
                        .await?
                }
                None => ti.name().to_string(),
            };
            columns.push(ReadColumn {
                name: c.name().to_string(),
                kind: kind_of(ti.name()),
                sql_type,
                select_index: None,
            });
        }
        tx.rollback().await?;
        let q = ModelQuery::build(model, columns, self_page_size(model))?;
        let infos = q
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.clone(),
                kind: c.kind,
            })
            .collect();
        Ok((q, infos))
    }

    /// Streams the rows of each range in order, page by page, into `tx_rows` as chunks.
    /// Returns the number of rows read, when the ranges are exhausted or the receiver is gone.
    ///
    /// Each page is read whole and its transaction ended before its rows are handed on. The
    /// pipeline takes rows at Meta's pace (minutes when throttled); a page transaction held
    /// open that long would keep one of the pool's few connections per running model, so a
    /// service with more models than `warehouse.max_connections` would fail the others' runs
    /// on the pool's acquire timeout.
    pub async fn stream_rows(
        &self,
        query: &ModelQuery,
        ranges: Vec<ReadRange>,
        tx_rows: mpsc::Sender<Vec<SourceRow>>,
        chunk: usize,
    ) -> Result<u64> {
        for range in &ranges {
            if let LowerBound::After(p) = &range.lower {
                query.check_position(p)?;
            }
            if let Some(p) = &range.upper {
                query.check_position(p)?;
            }
        }
        let mut total = 0u64;
        for range in ranges {
            let mut lower = range.lower.clone();
            // The last row read in this range and how many rows in a row had its position:
            // a row at the same position is a duplicate, on this page or across pages.
            let mut previous: Option<CursorPosition> = None;
            let mut rows_at_previous = 0u32;
            // Rows asked per page: `page_size`, fewer after a page that filled `page_bytes`
            // (the rows Postgres sends past the budget are read and discarded), growing back.
            let mut limit = query.page_size.max(1);
            loop {
                let (sql, params) = query.page_sql(&lower, range.upper.as_ref(), limit);
                let (sql_limit, mut skip) = match &lower {
                    LowerBound::PageAfter { rows_at_last, .. } => {
                        (u64::from(limit) + u64::from(*rows_at_last), *rows_at_last)
                    }
                    _ => (u64::from(limit), 0),
                };
                let mut tx = self.read_only_tx().await?;
                let mut q = sqlx::query(&sql);
                for p in &params {
                    q = match p {
                        Param::Text(t) => q.bind(t.as_str()),
                        Param::Seconds(s) => q.bind(*s),
                    };
                }
                // Each row is decoded as it arrives, while its bytes are in cache, and its
                // buffer freed before the next (collecting the page first kept a page of
                // both forms in memory at once).
                let mut page: Vec<SourceRow> = Vec::new();
                let mut fetched = 0u64;
                let mut page_bytes = 0usize;
                let mut full = false;
                {
                    let mut stream = q.fetch(&mut *tx);
                    while let Some(row) =
                        stream.try_next().await.map_err(|e| SourceError::Query {
                            model: query.model.clone(),
                            message: db_message(&e),
                        })?
                    {
                        fetched += 1;
                        let (mut r, bytes) = query.decode(&row)?;
                        let repeats = match page.last() {
                            Some(last) => r.same_position(last),
                            None => previous.as_ref().is_some_and(|p| r.is_at(p)),
                        };
                        if repeats && skip > 0 {
                            // Read by the previous page already.
                            skip -= 1;
                            continue;
                        }
                        skip = 0;
                        r.duplicate = repeats;
                        rows_at_previous = if repeats { rows_at_previous + 1 } else { 1 };
                        r.reread = range.reread;
                        page.push(r);
                        page_bytes = page_bytes.saturating_add(bytes);
                        // Keyset paging makes a short page exact: the next starts after the
                        // last row kept. At least one row is kept, so every page moves on.
                        if page_bytes >= self.page_bytes {
                            full = true;
                            break;
                        }
                    }
                }
                tx.commit().await?;
                let in_page = page.len() as u64;
                let last = page.last().map(SourceRow::position);
                let mut page = page.into_iter();
                loop {
                    let rows: Vec<SourceRow> = page.by_ref().take(chunk.max(1)).collect();
                    if rows.is_empty() {
                        break;
                    }
                    if tx_rows.send(rows).await.is_err() {
                        return Ok(total + in_page);
                    }
                }
                total += in_page;
                let more = full || fetched >= sql_limit;
                limit = if full {
                    (in_page as u32).max(1)
                } else {
                    limit.saturating_mul(2).min(query.page_size.max(1))
                };
                match last {
                    Some(p) if more => {
                        lower = LowerBound::PageAfter {
                            last: p.clone(),
                            rows_at_last: rows_at_previous,
                        };
                        previous = Some(p);
                    }
                    _ => break,
                }
            }
        }
        Ok(total)
    }

    /// Reads specific rows by primary key (for re-trying refused rows).
    pub async fn rows_by_key(
        &self,
        query: &ModelQuery,
        keys: &[Vec<String>],
    ) -> Result<Vec<SourceRow>> {
        let mut out = Vec::new();
        for key in keys {
            query.check_key(key)?;
        }
        let mut tx = self.read_only_tx().await?;
        for key in keys {
            let mut q = sqlx::query(&query.by_key_sql);
            for k in key {
                q = q.bind(k);
            }
            let rows = q
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| SourceError::Query {
                    model: query.model.clone(),
                    message: db_message(&e),
                })?;
            let first = out.len();
            for row in rows {
                let (mut r, _) = query.decode(&row)?;
                r.duplicate = out[first..].iter().any(|o: &SourceRow| r.same_position(o));
                out.push(r);
            }
        }
        tx.rollback().await?;
        Ok(out)
    }
}

fn self_page_size(model: &ModelConfig) -> u32 {
    model.page_size
}

/// A database error's message without the query text, and without the row values Postgres
/// quotes in data and integrity errors (a failed cast in a model's SQL names the row's value,
/// which may be customer data). The DETAIL, which quotes key values, is never shown.
pub fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => crate::redact::postgres_message(d.code().as_deref(), d.message()),
        None => e.to_string(),
    }
}
