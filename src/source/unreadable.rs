//! Rows of a model's output that keyset paging cannot handle, counted rather than hidden.
//!
//! The reader pages on `(cursor, primary key) > (last position)`, which needs every one of
//! those values: a row with a NULL cursor or a NULL in its key has no place in that order, and
//! the page query filters it out (`IS NOT NULL`), so it is never read, sent or refused. These
//! counts make such rows visible in every run, in `status`, in the metrics and in `check`.
//!
//! Two rows with the same primary key and the same cursor are the other shape paging cannot
//! tell apart. The reader marks the second of them as it reads ([`SourceRow::duplicate`]) and
//! the run refuses it as `duplicate_primary_key`; `check` counts them up front.
//!
//! [`SourceRow::duplicate`]: super::SourceRow::duplicate

use super::{db_message, ModelQuery, Result, SourceError, Warehouse};
use crate::config::ModelConfig;
use sqlx::Row;

/// Rows the keyset reader never sees, in two disjoint groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnreadableRows {
    /// Rows whose cursor is NULL.
    pub null_cursor: i64,
    /// Rows with a cursor but a NULL in a primary-key column.
    pub null_key: i64,
}

impl UnreadableRows {
    pub fn total(&self) -> i64 {
        self.null_cursor + self.null_key
    }
}

/// Primary keys that appear on more than one row of the model's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DuplicateKeys {
    /// Keys found on two or more rows.
    pub keys: i64,
    /// Of those, keys where two rows also share the cursor value: a run refuses all but the
    /// first row read of each such (cursor, key) as `duplicate_primary_key`. The other keys
    /// (same key, different cursors) are read as one row that changed: only the first
    /// reading's event is sent.
    pub keys_with_same_cursor: i64,
}

impl ModelQuery {
    /// `t."cursor"` and `t."key1"`, ... as the paging query names them.
    fn cursor_and_key_columns(&self) -> (String, Vec<String>) {
        let mut cols = self.order_columns();
        let cursor = cols.remove(0);
        (cursor, cols)
    }
}

impl Warehouse {
    /// Counts the rows with a NULL cursor or key, in one statement of two `count(*)`s in a
    /// READ ONLY transaction with the statement timeout.
    ///
    /// Cost: each count evaluates the model's SQL once with the predicate pushed into it. On a
    /// table with an index on the cursor and key (which keyset paging wants anyway), or with
    /// NOT NULL columns, Postgres answers from the index or proves the count empty; a model
    /// over a view or a join may need a full pass of its rows. A run makes it once, after its
    /// reading.
    pub async fn unreadable_rows(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
    ) -> Result<UnreadableRows> {
        let (cursor, keys) = query.cursor_and_key_columns();
        let any_key_null: Vec<String> = keys.iter().map(|k| format!("{k} IS NULL")).collect();
        let sql = format!(
            "SELECT (SELECT count(*) FROM (\n{sql}\n) AS t WHERE {cursor} IS NULL),
                    (SELECT count(*) FROM (\n{sql}\n) AS t WHERE {cursor} IS NOT NULL AND ({any}))",
            sql = model.sql,
            any = any_key_null.join(" OR "),
        );
        let mut tx = self.read_only_tx().await?;
        let row = sqlx::query(&sql)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| query_error(query, &e))?;
        tx.rollback().await?;
        Ok(UnreadableRows {
            null_cursor: row.try_get(0)?,
            null_key: row.try_get(1)?,
        })
    }

    /// Counts the primary keys on more than one readable row. It groups the whole output by
    /// key (a full pass and an aggregate), so only `check` asks it, under the statement
    /// timeout.
    pub async fn duplicate_keys(
        &self,
        model: &ModelConfig,
        query: &ModelQuery,
    ) -> Result<DuplicateKeys> {
        let (cursor, keys) = query.cursor_and_key_columns();
        let sql = format!(
            "SELECT count(*), count(*) FILTER (WHERE cursors < copies) FROM (
                 {} GROUP BY {} HAVING count(*) > 1
             ) AS d",
            query.wrapped(
                &model.sql,
                &format!("count(*) AS copies, count(DISTINCT {cursor}) AS cursors")
            ),
            keys.join(", ")
        );
        let mut tx = self.read_only_tx().await?;
        let row = sqlx::query(&sql)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| query_error(query, &e))?;
        tx.rollback().await?;
        Ok(DuplicateKeys {
            keys: row.try_get(0)?,
            keys_with_same_cursor: row.try_get(1)?,
        })
    }
}

fn query_error(query: &ModelQuery, e: &sqlx::Error) -> SourceError {
    SourceError::Query {
        model: query.model.clone(),
        message: db_message(e),
    }
}
