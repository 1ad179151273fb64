//! Shared test helpers: a fresh real Postgres database per test, the sandbox in-process, and
//! configs pointing at both.

use capi_sync::config::Config;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunSummary, SyncContext};
use capi_sync::sandbox::{self, Faults, SandboxConfig, SandboxHandle};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

mod binary;
pub use binary::*;

pub const TOKEN: &str = "test-token-5f2a9c";

/// The server tests create their databases on (`CAPI_SYNC_TEST_PG`, default the local one).
pub fn server_url() -> String {
    std::env::var("CAPI_SYNC_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database that exists for one test and is dropped afterwards, even when the test fails.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!(
            "capi_sync_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            rand::random::<u32>()
        );
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .expect("connect to the local Postgres (is it running? .ci/run starts it)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = format!("{}/{name}", server_url());
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .expect("connect test database");
        TestDb { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any async context we can await in: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // FORCE ends the connections the test's pools still hold.
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{}/postgres", server_url())).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn start_sandbox(faults: Faults) -> SandboxHandle {
    sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            token: Some(TOKEN.into()),
            record: None,
            faults,
            keep_in_memory: true,
            count_only: false,
        },
    )
    .await
    .expect("start sandbox")
}

/// The TOML of a test config pointed at `db` and `graph_url`: `extra` goes before the
/// `[[models]]` tables (e.g. a `[service]` section).
pub fn config_text(db: &TestDb, graph_url: &str, extra: &str, models_toml: &str) -> String {
    format!(
        r#"
[warehouse]
url = "{url}"
statement_timeout = "20s"
[meta]
graph_url = "{graph_url}"
access_token = "{TOKEN}"
max_attempts = 2
request_timeout = "5s"
{extra}
{models_toml}
"#,
        url = db.url
    )
}

/// A config with the given `[[models]]` TOML, pointed at `db` and `graph_url`.
pub fn config(db: &TestDb, graph_url: &str, models_toml: &str) -> Config {
    Config::from_toml_str(
        &config_text(db, graph_url, "", models_toml),
        std::path::Path::new("."),
    )
    .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

pub async fn context(config: Config) -> SyncContext {
    capi_sync::app::connect(Arc::new(config), CancellationToken::new())
        .await
        .expect("connect")
}

pub async fn sync(ctx: &SyncContext, model: &str) -> RunSummary {
    let m = ctx.config.model(model).expect("model exists").clone();
    sync_model_once(
        ctx,
        &m,
        &RunOptions {
            trigger: "test".into(),
            ..Default::default()
        },
    )
    .await
}

/// Creates `crm.leads` with `n` rows, every row carrying an email; `updated_at` and
/// `event_time` come from the given SQL expressions over `g` (the row number).
pub async fn seed_leads(pool: &PgPool, n: i64, updated_at_sql: &str, event_time_sql: &str) {
    sqlx::query("CREATE SCHEMA IF NOT EXISTS crm")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS crm.leads (id bigint PRIMARY KEY, stage text, email text, phone text,
            happened_at timestamptz, updated_at timestamptz NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
    let sql = format!(
        "INSERT INTO crm.leads (id, stage, email, phone, happened_at, updated_at)
         SELECT g, 'Lead', ' Person.' || g || '@Example.com ', '+1 (650) 253-' || lpad((g % 10000)::text, 4, '0'),
                {event_time_sql}, {updated_at_sql}
         FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM crm.leads),
                              (SELECT coalesce(max(id), 0) + {n} FROM crm.leads)) AS g"
    );
    sqlx::query(&sql).execute(pool).await.unwrap();
}

pub const LEADS_MODEL: &str = r#"
[[models]]
name = "leads"
pixel_id = "123456789012345"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em, phone AS ph FROM crm.leads"
primary_key = "id"
cursor = "updated_at"
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#;

/// The recorded events' ids, with how often each was accepted.
pub fn event_id_counts(events: &[serde_json::Value]) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for e in events {
        *m.entry(e["event_id"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    m
}

/// The stored cursor's row key of a model, if it has one.
pub async fn cursor_key(pool: &PgPool, model: &str) -> Option<Vec<String>> {
    sqlx::query_scalar("SELECT row_key FROM capi_sync.cursors WHERE model = $1")
        .bind(model)
        .fetch_optional(pool)
        .await
        .expect("read the cursor")
}

/// Rows 1..=n of `crm.leads`, changed a second apart from two hours ago, each event an hour
/// old: well inside Meta's 7-day window.
pub async fn seed_recent_leads(db: &TestDb, n: i64) {
    seed_leads(
        &db.pool,
        n,
        "now() - interval '2 hours' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
}

/// Rows 1..=n of `crm.leads`, changed a minute apart from an hour ago, each event an hour old:
/// before any run, the oldest row waiting changed 59 minutes ago (a lag of 3540 s).
pub async fn seed_waiting_leads(db: &TestDb, n: i64) {
    seed_leads(
        &db.pool,
        n,
        "now() - interval '1 hour' + g * interval '1 minute'",
        "now() - interval '1 hour'",
    )
    .await;
}

/// A fresh database holding `rows` recent leads ([`seed_recent_leads`]) and a sandbox that
/// answers normally: where most tests of a command start.
pub async fn leads_and_sandbox(rows: i64) -> (TestDb, SandboxHandle) {
    let db = TestDb::new().await;
    seed_recent_leads(&db, rows).await;
    let sandbox = start_sandbox(Faults::default()).await;
    (db, sandbox)
}

/// Moves lead `id`'s event 30 days back, beyond Meta's 7-day window: its row is refused
/// with `event_time_too_old`.
pub async fn make_too_old(db: &TestDb, id: i64) {
    sqlx::query("UPDATE crm.leads SET happened_at = now() - interval '30 days' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Moves every lead's cursor to now, as if each row had changed: the next run reads them all
/// again.
pub async fn change_every_lead(db: &TestDb) {
    sqlx::query("UPDATE crm.leads SET updated_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Whether our state schema was created (a command that only reads must not create it).
pub async fn state_table_exists(db: &TestDb) -> bool {
    sqlx::query_scalar("SELECT to_regclass('capi_sync.runs') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// `GET url`: the status and the body.
pub async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}
