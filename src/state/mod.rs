//! Our own tables: cursors, run history, the delivery ledger, refused rows, and the per-model
//! lock. All live in one schema (`state.schema`), created and upgraded by embedded migrations.

mod copy;
mod generations;
mod ledger;
mod lock_keeper;
mod locks;
mod quality;
mod refused;
mod report;
mod runs;
mod settle;

use lock_keeper::LockKeeper;
pub use lock_keeper::ModelLock;
pub use locks::LockProof;

pub use quality::{LatestQuality, QualityFetch, QualityScore};
pub use refused::{MayBeRefused, REFUSALS_FILTERED_AT_MOST};
pub use report::CursorRecord;

use crate::config::Secret;
pub use crate::connection::StateLimits;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::collections::HashSet;
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
    /// Events sent, by event name.
    pub events_by_name: std::collections::BTreeMap<String, i64>,
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
    /// Delete earlier refusals of the delivered rows that may have one (None: of none).
    pub clear_refused: Option<std::sync::Arc<MayBeRefused>>,
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
        if self.clear_refused.is_none() {
            self.clear_refused = later.clear_refused;
        }
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
    /// `state.ledger_partition_bytes`: the size of the newest ledger generation's indexes at
    /// which the next one starts; 0 for a quarter of the server's `shared_buffers`.
    partition_bytes: u64,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateStore({})", self.schema)
    }
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
            partition_bytes: 0,
        };
        store.ensure_schema().await?;
        Ok(store)
    }

    /// The store, starting a new ledger generation once the newest one's indexes reach `bytes`
    /// (`state.ledger_partition_bytes`; 0, the default: a quarter of the server's
    /// `shared_buffers`, at least 8 MiB).
    pub fn with_ledger_partition_bytes(mut self, bytes: u64) -> StateStore {
        self.partition_bytes = bytes;
        self
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
}

/// Row keys travel through UNNEST as JSON arrays of text (Postgres cannot unnest a 2-D array
/// of rows with different key lengths).
pub(super) fn encode_key(key: &[String]) -> String {
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
