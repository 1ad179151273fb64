//! Our own tables: cursors, run history, the delivery ledger, refused rows, and the per-model
//! lock. All live in one schema (`state.schema`), created and upgraded by embedded migrations.

mod copy;
mod lock_keeper;
mod report;

use lock_keeper::LockKeeper;
pub use lock_keeper::ModelLock;

pub use report::CursorRecord;

use crate::config::Secret;
pub use crate::connection::StateLimits;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("state database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("lost the model's lock: its session in the state database (backend {pid}) ended or no longer holds it, so another process may be syncing the model; nothing of this stretch was recorded and the cursor was not moved")]
    LockLost { pid: i32 },
    /// Not a source: the line already says the cause (see [`crate::connection::ConnectError`]).
    #[error("state database: {0}")]
    Connect(crate::connection::ConnectError),
}

pub type Result<T> = std::result::Result<T, StateError>;

/// Like the pool's acquire timeout.
const MIGRATION_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where a model's reading stands: the last settled row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorPosition {
    pub cursor_value: String,
    pub row_key: Vec<String>,
}

/// An event Meta acknowledged.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub row_key: Vec<String>,
    pub event_id: String,
    pub event_name: String,
    pub event_time: i64,
    pub fingerprint: String,
    /// Shared by the events of one request.
    pub fbtrace_id: Option<std::sync::Arc<str>>,
}

/// A row we did not send, and why.
#[derive(Debug, Clone)]
pub struct RefusedRow {
    pub row_key: Vec<String>,
    pub event_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub meta_code: Option<i32>,
    pub meta_subcode: Option<i32>,
    pub cursor_value: Option<String>,
}

/// Counters of a run so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunCounters {
    pub rows_read: i64,
    pub events_sent: i64,
    pub rows_refused: i64,
    pub rows_already_sent: i64,
    /// Retry runs: refused rows asked for.
    pub rows_requested: i64,
    pub requests: i64,
    /// Throttled answers (not persisted; for logs and metrics).
    pub throttles: i64,
    pub retries: i64,
    pub refused_by_reason: std::collections::BTreeMap<String, i64>,
    pub dropped_by_field: std::collections::BTreeMap<String, i64>,
    /// Events carrying each identifier.
    pub coverage: std::collections::BTreeMap<String, i64>,
    /// Rows of the model's output with a NULL cursor, or a cursor and a NULL in the primary
    /// key: the keyset reader never sees them (counted once per run; None when not counted).
    pub rows_null_cursor: Option<i64>,
    pub rows_null_key: Option<i64>,
}

/// One settled stretch of rows, committed in a single transaction.
#[derive(Debug, Default)]
pub struct Settlement {
    pub position: Option<CursorPosition>,
    pub delivered: Vec<Delivered>,
    /// Row keys of acknowledged events their sender already wrote to the ledger (see
    /// [`StateStore::record_acknowledged`]): settled here for their refusals and counts only.
    pub recorded: Vec<Vec<String>>,
    pub refused: Vec<RefusedRow>,
    /// Row keys of rows whose event the ledger already held when they were read (sent by an
    /// earlier run or life): their verdict is "delivered", so an older refusal of the row goes
    /// like that of a row delivered now. Not counted as sent.
    pub already_sent: Vec<Vec<String>>,
    /// Event ids already in the ledger whose mapped event has since changed.
    pub changed: Vec<String>,
    /// Delete earlier refusals of the delivered rows (skipped when the model has none).
    pub clear_refused: bool,
}

impl Settlement {
    /// Events Meta acknowledged in this stretch, recorded by their sender or not.
    pub fn acknowledged(&self) -> usize {
        self.delivered.len() + self.recorded.len()
    }

    /// Rows whose event Meta holds: acknowledged in this stretch or found in the ledger.
    /// Their earlier refusals are no longer their verdict.
    fn delivered_keys(&self) -> impl Iterator<Item = &Vec<String>> + Clone {
        self.delivered
            .iter()
            .map(|d| &d.row_key)
            .chain(&self.recorded)
            .chain(&self.already_sent)
    }

    /// Appends a later settlement (group commit): its position wins when it has one.
    pub fn absorb(&mut self, later: Settlement) {
        // A row refused earlier and delivered later is no longer refused. `settle` clears
        // refusals of delivered rows before it writes the new ones, so within one merged
        // transaction the earlier refusal must be dropped here instead.
        if !self.refused.is_empty() {
            let delivered: HashSet<&[String]> =
                later.delivered_keys().map(|k| k.as_slice()).collect();
            self.refused
                .retain(|r| !delivered.contains(r.row_key.as_slice()));
        }
        if later.position.is_some() {
            self.position = later.position;
        }
        self.delivered.extend(later.delivered);
        self.recorded.extend(later.recorded);
        self.already_sent.extend(later.already_sent);
        self.refused.extend(later.refused);
        self.changed.extend(later.changed);
        self.clear_refused |= later.clear_refused;
    }
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: i64,
    pub model: String,
    pub trigger: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The schedule's fire time a service run was due at (None for manual runs): how late it
    /// started is `started_at - scheduled_for`.
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub status: String,
    pub rows_read: i64,
    pub events_sent: i64,
    pub rows_refused: i64,
    pub rows_already_sent: i64,
    pub refused_by_reason: serde_json::Value,
    pub coverage: serde_json::Value,
    pub error: Option<String>,
    pub rows_null_cursor: Option<i64>,
    pub rows_null_key: Option<i64>,
}

#[derive(Clone)]
pub struct StateStore {
    pool: PgPool,
    /// The sessions' options, for the migrations' own session.
    lock_options: PgConnectOptions,
    /// Holds this process's model locks on one session (see [`StateStore::try_lock_model`]).
    locks: LockKeeper,
    schema: String,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateStore({})", self.schema)
    }
}

/// Who holds a model's lock: the server process (backend pid) of the session holding it, and
/// the lease under which this process's keeper gave it to one run. A session that ended
/// (killed by `pg_terminate_backend`, a network failure, a server restart) frees every lock
/// it held, and another process may then take the models; so each cursor write first checks
/// that this backend still holds the model and this process still holds it under this lease
/// (see [`StateStore::settle_holding`]). The lease tells apart two runs of one model in turn
/// on the same session, which share the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockProof {
    pub backend_pid: i32,
    pub lease: u64,
}

/// The state pool's size when `state.max_connections` is not set.
pub const DEFAULT_POOL_SIZE: u32 = 6;

impl StateStore {
    /// Connects with `search_path` set to our schema, creating the schema if needed, with the
    /// default session limits.
    pub async fn connect(url: &Secret, schema: &str) -> Result<StateStore> {
        Self::connect_with_limits(url, schema, &StateLimits::default()).await
    }

    /// Connects with `search_path` set to our schema and `limits` on every session (the
    /// pool's and the model locks'), creating the schema if needed, with the default pool.
    pub async fn connect_with_limits(
        url: &Secret,
        schema: &str,
        limits: &StateLimits,
    ) -> Result<StateStore> {
        Self::connect_with_pool(url, schema, limits, DEFAULT_POOL_SIZE).await
    }

    /// [`StateStore::connect_with_limits`] with a pool of at most `pool_size` sessions. The
    /// model locks take one more, however many models run (see
    /// [`StateStore::try_lock_model`]).
    pub async fn connect_with_pool(
        url: &Secret,
        schema: &str,
        limits: &StateLimits,
        pool_size: u32,
    ) -> Result<StateStore> {
        let (opts, target) = crate::connection::parse(url).map_err(StateError::Connect)?;
        let opts = opts
            .options(crate::connection::state_session_options(schema, limits))
            .application_name("capi-sync");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(opts.clone())
            .await
            .map_err(|e| StateError::Connect(crate::connection::explain(&e, &target, Some(url))))?;
        let store = StateStore {
            pool,
            locks: LockKeeper::start(opts.clone(), schema.to_string()),
            lock_options: opts,
            schema: schema.to_string(),
        };
        store.ensure_schema().await?;
        Ok(store)
    }

    async fn ensure_schema(&self) -> Result<()> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.schema)
                .fetch_one(&self.pool)
                .await?;
        if !exists {
            let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
            if let Err(e) = sqlx::query(&sql).execute(&self.pool).await {
                // Another process may have created it at the same moment.
                let unique = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "23505" || c == "42P06");
                if !unique {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Runs the migrations on a session of their own without the state sessions' statement
    /// and lock timeouts: a migration may rewrite a large ledger, and sqlx's migration lock
    /// waits for another process's migrations to finish.
    pub async fn migrate(&self) -> Result<()> {
        // Later `-c` options win over the sessions' own.
        let unbounded = self
            .lock_options
            .clone()
            .options([("statement_timeout", "0"), ("lock_timeout", "0")]);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(MIGRATION_CONNECT_TIMEOUT)
            .connect_with(unbounded)
            .await?;
        let result = MIGRATOR.run(&pool).await;
        pool.close().await;
        result?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Takes the model's lock if no other process, nor another task of this one, holds it.
    ///
    /// Every lock of the process is held on one session of its own, the lock keeper's
    /// (see `lock_keeper`), so the connections do not grow with the number of models, and
    /// the pool's sessions stay free for the runs' ledger reads and commits.
    pub async fn try_lock_model(&self, model: &str) -> Result<Option<ModelLock>> {
        let Some(lock) = self.locks.take(model).await? else {
            return Ok(None);
        };
        // A process whose lock session died may still be committing a cursor write it checked
        // before we took the lock: wait for it (it holds the settle lock while it commits),
        // so this run reads the cursor after that write, never before it. Any session can
        // wait for it; the lock itself stays with the keeper. On failure the dropped lock is
        // freed.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2 || '#settle'))")
            .bind(&self.schema)
            .bind(model)
            .execute(&self.pool)
            .await?;
        Ok(Some(lock))
    }

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

    /// Every refused row key of a model, oldest first.
    pub async fn refused_keys(&self, model: &str) -> Result<Vec<Vec<String>>> {
        Ok(sqlx::query_scalar(
            "SELECT row_key FROM refused_rows WHERE model = $1 ORDER BY refused_at, row_key",
        )
        .bind(model)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Row key and fingerprint of these event ids, where the ledger has them.
    pub async fn delivered_rows(
        &self,
        model: &str,
        event_ids: &[String],
    ) -> Result<HashMap<String, (Vec<String>, String)>> {
        let rows = self
            .ledger_rows("event_id, row_key, fingerprint", model, event_ids)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// `columns` of the ledger rows of these event ids, found through the event-id index.
    async fn ledger_rows(
        &self,
        columns: &str,
        model: &str,
        event_ids: &[String],
    ) -> Result<Vec<PgRow>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        by_event_id(&mut tx).await?;
        let rows = sqlx::query(&format!(
            "SELECT {columns} FROM deliveries WHERE event_id = ANY($1) AND model = $2"
        ))
        .bind(event_ids)
        .bind(model)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// True when the ledger holds any event of the model.
    pub async fn has_deliveries(&self, model: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deliveries WHERE model = $1)")
                .bind(model)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn has_refused(&self, model: &str) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM refused_rows WHERE model = $1)")
                .bind(model)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Which of these row keys are already recorded as refused.
    pub async fn refused_among(
        &self,
        model: &str,
        keys: &[Vec<String>],
    ) -> Result<HashSet<Vec<String>>> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let encoded: Vec<String> = keys.iter().map(|k| encode_key(k)).collect();
        let rows: Vec<Vec<String>> = sqlx::query_scalar(
            "SELECT r.row_key FROM UNNEST($2::text[]) AS u(k)
             JOIN refused_rows r ON r.model = $1 AND r.row_key = ARRAY(SELECT json_array_elements_text(u.k::json))",
        )
        .bind(model)
        .bind(&encoded)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The ledger's fingerprints for these event ids (those already delivered).
    pub async fn delivered_fingerprints(
        &self,
        model: &str,
        event_ids: &[String],
    ) -> Result<HashMap<String, String>> {
        let rows = self
            .ledger_rows("event_id, fingerprint", model, event_ids)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Records a settled stretch and moves the cursor, atomically, with the run's counters.
    /// Its delivered events replace ledger rows of the same ids: they may repeat an early write
    /// that failed only on our side of the connection.
    pub async fn settle(
        &self,
        model: &str,
        run_id: i64,
        settlement: &Settlement,
        counters: &RunCounters,
    ) -> Result<()> {
        self.settle_checked(model, run_id, settlement, counters, None)
            .await
    }

    /// [`StateStore::settle`] for a run holding the model's lock: the transaction first proves
    /// that the lock's session still holds it, and writes nothing when it does not
    /// ([`StateError::LockLost`]). Another process that took the model over then owns its
    /// cursor; a write of ours after its reads could move the cursor back.
    pub async fn settle_holding(
        &self,
        model: &str,
        run_id: i64,
        settlement: &Settlement,
        counters: &RunCounters,
        lock: LockProof,
    ) -> Result<()> {
        self.settle_checked(model, run_id, settlement, counters, Some(lock))
            .await
    }

    async fn settle_checked(
        &self,
        model: &str,
        run_id: i64,
        settlement: &Settlement,
        counters: &RunCounters,
        lock: Option<LockProof>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(lock) = lock {
            // The settle lock orders this check and commit against a process taking the model
            // over (it waits on this lock in `try_lock_model` before reading the cursor): once
            // the check passes, no other run reads the cursor until this transaction ends.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2 || '#settle'))")
                .bind(&self.schema)
                .bind(model)
                .execute(&mut *tx)
                .await?;
            // pg_locks lists a two-key advisory lock with its keys as oids (objsubid 2).
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                     AND pid = $3 AND objsubid = 2
                     AND classid = hashtext($1)::oid AND objid = hashtext($2)::oid)",
            )
            .bind(&self.schema)
            .bind(model)
            .bind(lock.backend_pid)
            .fetch_one(&mut *tx)
            .await?;
            // The backend alone cannot tell a run whose lock was freed and taken again by
            // another run of this process on the same session: the lease can.
            if !held || !self.locks.holds(model, lock) {
                return Err(StateError::LockLost {
                    pid: lock.backend_pid,
                });
            }
        }
        if !settlement.delivered.is_empty() {
            record_deliveries(&mut tx, model, run_id, &[&settlement.delivered], true).await?;
        }
        if settlement.clear_refused && settlement.delivered_keys().next().is_some() {
            let keys = settlement.delivered_keys().map(|k| k.as_slice());
            clear_refusals(&mut tx, model, keys).await?;
        }
        if !settlement.refused.is_empty() {
            let r = &settlement.refused;
            let keys: Vec<String> = r.iter().map(|x| encode_key(&x.row_key)).collect();
            let ids: Vec<Option<&str>> = r.iter().map(|x| x.event_id.as_deref()).collect();
            let reasons: Vec<&str> = r.iter().map(|x| x.reason.as_str()).collect();
            let details: Vec<&str> = r.iter().map(|x| x.detail.as_str()).collect();
            let codes: Vec<Option<i32>> = r.iter().map(|x| x.meta_code).collect();
            let subcodes: Vec<Option<i32>> = r.iter().map(|x| x.meta_subcode).collect();
            let cursors: Vec<Option<&str>> = r.iter().map(|x| x.cursor_value.as_deref()).collect();
            sqlx::query(
                "INSERT INTO refused_rows (model, row_key, event_id, reason, detail, meta_code, meta_subcode, cursor_value, run_id)
                 SELECT DISTINCT ON (k) $1, ARRAY(SELECT json_array_elements_text(k::json)), id, re, de, co, sc, cv, $9
                 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[], $8::text[]) AS u(k, id, re, de, co, sc, cv)
                 ON CONFLICT (model, row_key) DO UPDATE
                   SET event_id = EXCLUDED.event_id, reason = EXCLUDED.reason, detail = EXCLUDED.detail,
                       meta_code = EXCLUDED.meta_code, meta_subcode = EXCLUDED.meta_subcode,
                       cursor_value = EXCLUDED.cursor_value, run_id = EXCLUDED.run_id, refused_at = now()",
            )
            .bind(model)
            .bind(&keys)
            .bind(&ids)
            .bind(&reasons)
            .bind(&details)
            .bind(&codes)
            .bind(&subcodes)
            .bind(&cursors)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        if !settlement.changed.is_empty() {
            by_event_id(&mut tx).await?;
            sqlx::query(
                "UPDATE deliveries SET changed_at = now() WHERE model = $1 AND event_id = ANY($2) AND changed_at IS NULL",
            )
            .bind(model)
            .bind(&settlement.changed)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(p) = &settlement.position {
            sqlx::query(
                "INSERT INTO cursors (model, cursor_value, row_key, updated_at, run_id) VALUES ($1, $2, $3, now(), $4)
                 ON CONFLICT (model) DO UPDATE SET cursor_value = $2, row_key = $3, updated_at = now(), run_id = $4",
            )
            .bind(model)
            .bind(&p.cursor_value)
            .bind(&p.row_key)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        }
        write_counters(&mut tx, run_id, counters, None, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes acknowledged events to the ledger in their own transaction, as soon as Meta
    /// answers and before the batches ahead of them are settled: the rows of one or more
    /// batches (`parts`, see the pipeline's ledger writer) in one `COPY`. The cursor still
    /// moves only in order, in [`StateStore::settle`]; a ledger row ahead of the cursor (after
    /// a crash) only means the next run finds the event already sent. Ledger writes then run
    /// beside the cursor's transaction instead of inside it, which kept a backfill waiting on
    /// a single database backend.
    ///
    /// The events must be new to the ledger, as every event a run sends is: the run holds the
    /// model's lock, sends only ids the ledger lacked when their chunk was read, and each id
    /// once. (A write that may repeat an earlier one goes through [`StateStore::settle`], which
    /// replaces.)
    ///
    /// `clear_refused`: the model may hold refusals of these rows; they are deleted in the same
    /// transaction, so no crash leaves a delivered row listed as refused.
    pub async fn record_acknowledged(
        &self,
        model: &str,
        run_id: i64,
        parts: &[&[Delivered]],
        clear_refused: bool,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The commit does not wait for its WAL to reach the disk. The cursor's transaction does
        // (`settle`), and it commits after this one, later in the same WAL: once the cursor
        // stands past these events, their ledger rows are durable too. A database crash before
        // that can lose them, but then the cursor has not moved either, and the next run
        // re-sends the events under the same ids, as after a crash of our own. Not waiting
        // lets the batches settle one disk flush sooner.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        record_deliveries(&mut tx, model, run_id, parts, false).await?;
        if clear_refused {
            let keys = parts
                .iter()
                .flat_map(|p| p.iter())
                .map(|d| d.row_key.as_slice());
            clear_refusals(&mut tx, model, keys).await?;
        }
        tx.commit().await?;
        Ok(())
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

    pub async fn refused_rows(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<(RefusedRow, chrono::DateTime<chrono::Utc>)>> {
        let rows = sqlx::query(
            "SELECT row_key, event_id, reason, detail, meta_code, meta_subcode, cursor_value, refused_at
             FROM refused_rows WHERE model = $1 ORDER BY refused_at DESC, row_key LIMIT $2",
        )
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    RefusedRow {
                        row_key: r.get(0),
                        event_id: r.get(1),
                        reason: r.get(2),
                        detail: r.get(3),
                        meta_code: r.get(4),
                        meta_subcode: r.get(5),
                        cursor_value: r.get(6),
                    },
                    r.get(7),
                )
            })
            .collect())
    }

    /// Removes ledger entries older than the retention.
    ///
    /// The retention of a large backfill ends all at once, and deleting millions of rows can
    /// outlast the sessions' statement timeout; failing, the prune would fail again every
    /// hour. It runs with a timeout of its own, long enough for that and still bounded.
    pub async fn prune_ledger(&self, retention: Duration) -> Result<u64> {
        let secs = retention.as_secs() as f64;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL statement_timeout = '30min'")
            .execute(&mut *tx)
            .await?;
        let pruned = sqlx::query(
            "DELETE FROM deliveries WHERE delivered_at < now() - make_interval(secs => $1)",
        )
        .bind(secs)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(pruned)
    }
}

async fn write_counters(
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
            rows_null_cursor = $13, rows_null_key = $14
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
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends ledger rows with one binary `COPY`. The ledger's index does not enforce one row
/// per event id (see the migration `ledger_hash_index`): `replace` first deletes the rows'
/// ids, for a write that may repeat one already made (the cursor's transaction recording
/// events whose early write failed, perhaps only on our side of the connection).
async fn record_deliveries(
    conn: &mut PgConnection,
    model: &str,
    run_id: i64,
    parts: &[&[Delivered]],
    replace: bool,
) -> Result<()> {
    if replace {
        let ids: Vec<&str> = parts
            .iter()
            .flat_map(|p| p.iter())
            .map(|d| d.event_id.as_str())
            .collect();
        by_event_id(conn).await?;
        sqlx::query("DELETE FROM deliveries WHERE event_id = ANY($1) AND model = $2")
            .bind(&ids)
            .bind(model)
            .execute(&mut *conn)
            .await?;
    }
    let data = copy::deliveries(model, run_id, parts);
    let mut copy_in = conn.copy_in_raw(copy::DELIVERIES_COPY).await?;
    copy_in.send(data).await?;
    copy_in.finish().await?;
    Ok(())
}

/// Makes the transaction's statements find ledger rows by their event ids' index. The
/// ledger grows faster than autovacuum analyzes it, and a plan made on statistics that
/// still say "nearly empty" would scan every row for each lookup.
async fn by_event_id(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(conn)
        .await?;
    Ok(())
}

/// A row that was refused before and is now delivered is no longer refused.
async fn clear_refusals<'a>(
    conn: &mut PgConnection,
    model: &str,
    keys: impl Iterator<Item = &'a [String]> + Clone,
) -> Result<()> {
    let (keys, key_expr) = key_param(keys);
    sqlx::query(&format!(
        "DELETE FROM refused_rows r USING UNNEST($2::text[]) AS u(k)
         WHERE r.model = $1 AND r.row_key = {key_expr}"
    ))
    .bind(model)
    .bind(&keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Row keys as one text[] parameter plus the SQL that turns an element `k` back into the
/// key array: single-column keys go as they are (the common, fast case), composite keys as
/// JSON arrays.
fn key_param<'a>(keys: impl Iterator<Item = &'a [String]> + Clone) -> (Vec<String>, &'static str) {
    if keys.clone().all(|k| k.len() == 1) {
        (keys.map(|k| k[0].clone()).collect(), "ARRAY[k]")
    } else {
        (
            keys.map(encode_key).collect(),
            "ARRAY(SELECT json_array_elements_text(k::json))",
        )
    }
}

/// Row keys travel through UNNEST as JSON arrays of text (Postgres cannot unnest a 2-D array
/// of rows with different key lengths).
fn encode_key(key: &[String]) -> String {
    serde_json::to_string(key).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(key: &str) -> RefusedRow {
        RefusedRow {
            row_key: vec![key.into()],
            event_id: None,
            reason: "no_customer_information".into(),
            detail: "no identifier left".into(),
            meta_code: None,
            meta_subcode: None,
            cursor_value: None,
        }
    }

    fn delivered(key: &str) -> Delivered {
        Delivered {
            row_key: vec![key.into()],
            event_id: format!("id-{key}"),
            event_name: "Lead".into(),
            event_time: 0,
            fingerprint: String::new(),
            fbtrace_id: None,
        }
    }

    #[test]
    fn a_group_commit_drops_a_refusal_superseded_by_a_later_delivery_of_the_row() {
        let mut merged = Settlement {
            refused: vec![refused("1"), refused("2"), refused("4")],
            ..Default::default()
        };
        merged.absorb(Settlement {
            delivered: vec![delivered("1")],
            ..Default::default()
        });
        // Written to the ledger by its sender already: it supersedes the refusal all the same.
        merged.absorb(Settlement {
            recorded: vec![vec!["4".into()]],
            ..Default::default()
        });
        // Found in the ledger (sent by an earlier life): its refusal is superseded too, and it
        // is not counted as sent.
        merged.absorb(Settlement {
            already_sent: vec![vec!["2".into()]],
            ..Default::default()
        });
        // Refused after its delivery: that later verdict stands.
        merged.absorb(Settlement {
            refused: vec![refused("3")],
            delivered: vec![delivered("3")],
            ..Default::default()
        });
        let keys: Vec<&str> = merged
            .refused
            .iter()
            .map(|r| r.row_key[0].as_str())
            .collect();
        assert_eq!(keys, ["3"]);
        assert_eq!((merged.delivered.len(), merged.recorded.len()), (2, 1));
        assert_eq!(merged.acknowledged(), 3);
    }
}
