//! Runs and cursors: where a model's reading stands, and the history of its runs with their
//! counters.

use super::{CursorPosition, Result, RunCounters, RunRecord, StateStore};
use sqlx::Row;

impl StateStore {
    pub async fn cursor(&self, model: &str) -> Result<Option<CursorPosition>> {
        let row = sqlx::query("SELECT cursor_value, row_key FROM cursors WHERE model = $1")
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| CursorPosition {
            cursor_value: r.get(0),
            row_key: r.get(1),
        }))
    }

    /// Moves a model's cursor (or removes it, to read from the start).
    pub async fn set_cursor(&self, model: &str, position: Option<&CursorPosition>) -> Result<()> {
        match position {
            Some(p) => {
                sqlx::query(
                    "INSERT INTO cursors (model, cursor_value, row_key, updated_at) VALUES ($1, $2, $3, now())
                     ON CONFLICT (model) DO UPDATE SET cursor_value = $2, row_key = $3, updated_at = now(), run_id = NULL",
                )
                .bind(model)
                .bind(&p.cursor_value)
                .bind(&p.row_key)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM cursors WHERE model = $1")
                    .bind(model)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts a run. Called with the model's lock held, so any run of the model still marked
    /// `running` belongs to a process that died (kill -9, a lost machine): it is closed as
    /// `interrupted` (its acknowledged batches were committed as they came).
    pub async fn start_run(&self, model: &str, trigger: &str) -> Result<i64> {
        self.start_scheduled_run(model, trigger, None).await
    }

    /// [`StateStore::start_run`], recording the schedule's fire time the run was due at.
    pub async fn start_scheduled_run(
        &self,
        model: &str,
        trigger: &str,
        scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<i64> {
        sqlx::query(
            "UPDATE runs SET status = 'interrupted', finished_at = now(),
                 error = coalesce(error, 'the process stopped before the run finished; the next run resumed at the last committed batch')
             WHERE model = $1 AND status = 'running'",
        )
        .bind(model)
        .execute(&self.pool)
        .await?;
        Ok(sqlx::query_scalar(
            "INSERT INTO runs (model, trigger, status, scheduled_for) VALUES ($1, $2, 'running', $3) RETURNING id",
        )
        .bind(model)
        .bind(trigger)
        .bind(scheduled_for)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn finish_run(
        &self,
        run_id: i64,
        status: &str,
        counters: &RunCounters,
        error: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        write_counters(&mut conn, run_id, counters, Some(status), error).await
    }

    /// Records `lag_seconds` on `model`'s latest finished run, unless that run has one: the
    /// first measurement after a run is its lag. One indexed update.
    pub async fn record_lag_after_run(&self, model: &str, lag_seconds: f64) -> Result<()> {
        sqlx::query(
            "UPDATE runs SET lag_seconds = $2
             WHERE id = (SELECT id FROM runs WHERE model = $1 AND finished_at IS NOT NULL
                         ORDER BY started_at DESC, id DESC LIMIT 1)
               AND lag_seconds IS NULL",
        )
        .bind(model)
        .bind(lag_seconds.max(0.0))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The lag measured after each of `model`'s last `limit` runs that have one, oldest first:
    /// when the run finished, and the lag in seconds.
    pub async fn lag_after_runs(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(chrono::DateTime<chrono::Utc>, f64)>> {
        let mut rows: Vec<(chrono::DateTime<chrono::Utc>, f64)> = sqlx::query_as(
            "SELECT finished_at, lag_seconds FROM runs
             WHERE model = $1 AND lag_seconds IS NOT NULL AND finished_at IS NOT NULL
             ORDER BY started_at DESC, id DESC LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.reverse();
        Ok(rows)
    }

    pub async fn recent_runs(&self, model: &str, limit: i64) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(
            "SELECT id, model, trigger, started_at, finished_at, status, rows_read, events_sent, rows_refused,
                    rows_already_sent, refused_by_reason, coverage, error, rows_null_cursor, rows_null_key,
                    scheduled_for
             FROM runs WHERE model = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| RunRecord {
                id: r.get(0),
                model: r.get(1),
                trigger: r.get(2),
                started_at: r.get(3),
                finished_at: r.get(4),
                status: r.get(5),
                rows_read: r.get(6),
                events_sent: r.get(7),
                rows_refused: r.get(8),
                rows_already_sent: r.get(9),
                refused_by_reason: r.get(10),
                coverage: r.get(11),
                error: r.get(12),
                rows_null_cursor: r.get(13),
                rows_null_key: r.get(14),
                scheduled_for: r.get(15),
            })
            .collect())
    }
}

pub(super) async fn write_counters(
    conn: &mut sqlx::PgConnection,
    run_id: i64,
    c: &RunCounters,
    status: Option<&str>,
    error: Option<&str>,
) -> Result<()> {
    let json =
        |m: &std::collections::BTreeMap<String, i64>| serde_json::to_value(m).unwrap_or_default();
    sqlx::query(
        "UPDATE runs SET rows_read = $2, events_sent = $3, rows_refused = $4, rows_already_sent = $5,
            requests = $6, retries = $7, refused_by_reason = $8, dropped_by_field = $9, coverage = $10,
            status = COALESCE($11, status), error = COALESCE($12, error),
            finished_at = CASE WHEN $11 IS NULL THEN finished_at ELSE now() END,
            rows_null_cursor = $13, rows_null_key = $14, events_by_name = $15
         WHERE id = $1",
    )
    .bind(run_id)
    .bind(c.rows_read)
    .bind(c.events_sent)
    .bind(c.rows_refused)
    .bind(c.rows_already_sent)
    .bind(c.requests)
    .bind(c.retries)
    .bind(json(&c.refused_by_reason))
    .bind(json(&c.dropped_by_field))
    .bind(json(&c.coverage))
    .bind(status)
    .bind(error)
    .bind(c.rows_null_cursor)
    .bind(c.rows_null_key)
    .bind(json(&c.events_by_name))
    .execute(conn)
    .await?;
    Ok(())
}
