//! Read-only questions about our own tables, for `status`, `runs` and `refused`, and the
//! cursor moves of `reset` and `sync --from`.

use super::{CursorPosition, Result, StateStore};
use sqlx::Row;
use std::collections::BTreeMap;

/// Where a model's cursor stands and when it last moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorRecord {
    pub position: CursorPosition,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl StateStore {
    pub async fn cursor_record(&self, model: &str) -> Result<Option<CursorRecord>> {
        let row =
            sqlx::query("SELECT cursor_value, row_key, updated_at FROM cursors WHERE model = $1")
                .bind(model)
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|r| CursorRecord {
            position: CursorPosition {
                cursor_value: r.get(0),
                row_key: r.get(1),
            },
            updated_at: r.get(2),
        }))
    }

    /// Refused rows on record for a model, by reason.
    pub async fn refused_by_reason(&self, model: &str) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT reason, count(*) FROM refused_rows WHERE model = $1 GROUP BY reason ORDER BY reason",
        )
        .bind(model)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Delivered events whose row has changed since (not re-sent; see DECISIONS).
    pub async fn changed_since_delivery(&self, model: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE model = $1 AND changed_at IS NOT NULL",
        )
        .bind(model)
        .fetch_one(self.pool())
        .await?)
    }

    /// The delivery ledger's events of a model (within `state.ledger_retention`), and the
    /// last time it recorded one.
    pub async fn ledger_count(
        &self,
        model: &str,
    ) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>)> {
        let r = sqlx::query("SELECT count(*), max(delivered_at) FROM deliveries WHERE model = $1")
            .bind(model)
            .fetch_one(self.pool())
            .await?;
        Ok((r.get(0), r.get(1)))
    }

    /// The last run that succeeded, if any.
    pub async fn last_success(&self, model: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT max(finished_at) FROM runs WHERE model = $1 AND status = 'succeeded'",
        )
        .bind(model)
        .fetch_one(self.pool())
        .await?)
    }
}

impl StateStore {
    /// Connects to capi-sync's tables for reading only, without creating or upgrading
    /// anything: None when the schema has no capi-sync tables yet (no run, no `migrate`).
    /// Every transaction on these connections is READ ONLY.
    pub async fn open_existing(
        url: &crate::config::Secret,
        schema: &str,
    ) -> Result<Option<StateStore>> {
        use crate::connection::{explain, parse, state_session_options, StateLimits};
        let (opts, target) = parse(url).map_err(super::StateError::Connect)?;
        let opts = opts
            .options(state_session_options(schema, &StateLimits::default()))
            .options([("default_transaction_read_only", "on")])
            .application_name("capi-sync");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(15))
            .connect_with(opts.clone())
            .await
            .map_err(|e| super::StateError::Connect(explain(&e, &target, Some(url))))?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables
                            WHERE table_schema = $1 AND table_name IN ('runs', 'cursors', 'refused_rows', 'deliveries')
                            HAVING count(*) = 4)",
        )
        .bind(schema)
        .fetch_one(&pool)
        .await?;
        Ok(exists.then(|| StateStore {
            pool,
            locks: super::LockKeeper::start(opts.clone(), schema.to_string()),
            lock_options: opts,
            schema: schema.to_string(),
            partition_bytes: 0,
        }))
    }
}
