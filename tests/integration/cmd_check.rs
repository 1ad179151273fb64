//! Operator experience (issue 5): check, preview, dry runs, status, runs, refused, reset,
//! backfills, test event codes, progress hooks, the service's HTTP endpoints, and logs free
//! of customer data. Commands are run through the real binary where their output and exit
//! code are the behaviour; the sandbox runs in-process.

use crate::helpers::*;
use capi_sync::metrics::Metrics;
use capi_sync::observer::RunObserver;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunStatus};
use capi_sync::sandbox::Faults;
use capi_sync::state::RefusedRow;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Running the binary.

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A config file in a temporary directory, for the binary.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(db: &TestDb, graph_url: &str, models_toml: &str, service: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ops-test.toml");
    let text = config_text(
        db,
        graph_url,
        &format!("[service]\nmetrics_addr = \"{service}\""),
        models_toml,
    );
    std::fs::write(&path, text).unwrap();
    ConfigFile { _dir: dir, path }
}

fn command(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_capi-sync"));
    cmd.arg("--config").arg(config).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CAPI_SYNC_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn cli(config: &Path, args: &[&str]) -> Output {
    let out = command(config, args).output().await.expect("run capi-sync");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn scalar_i64(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

async fn state_table_exists(db: &TestDb) -> bool {
    sqlx::query_scalar("SELECT to_regclass('capi_sync.runs') IS NOT NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Rows 1..=n an hour old, changed a second apart; row `old` (if any) has an event_time
/// 30 days back, beyond Meta's 7-day window.
async fn seed(db: &TestDb, n: i64) {
    seed_leads(
        &db.pool,
        n,
        "now() - interval '2 hours' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
}

async fn make_too_old(db: &TestDb, id: i64) {
    sqlx::query("UPDATE crm.leads SET happened_at = now() - interval '30 days' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
}

fn leads_model_with(sql_select: &str) -> String {
    LEADS_MODEL.replace(
        "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em, phone AS ph FROM crm.leads",
        sql_select,
    )
}

// ---------------------------------------------------------------------------------------------
// check

#[tokio::test]
async fn check_passes_a_good_model_with_one_ok_line_per_column_and_exit_0() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    for line in [
        "leads: id: ok — the primary key (integer)",
        "leads: updated_at: ok — the cursor (timestamptz)",
        "leads: em: ok — maps to user_data.em (text; normalized and SHA-256 hashed)",
        "leads: event_time: ok — required field, from column `event_time`",
        "leads: action_source: ok — required field, the constant \"system_generated\"",
        "leads: pixel 123456789012345: ok",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing {line:?} in\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("0 errors"), "{}", out.stdout);
}

#[tokio::test]
async fn check_sends_no_event_and_creates_no_table() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(sandbox.stats().events_accepted, 0);
    assert!(!state_table_exists(&db).await);
}

#[tokio::test]
async fn check_catches_a_column_that_maps_to_nothing_before_any_run() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace("email AS em,", "email AS em, phone AS mobile_number,");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check", "leads"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("leads: mobile_number: error"))
        .unwrap_or_else(|| panic!("no error line for mobile_number in\n{}", out.stdout));
    assert!(line.contains("ignore_columns"), "{line}");
}

#[tokio::test]
async fn check_catches_an_unknown_column_in_the_models_sql() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace("email AS em", "emial AS em");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("leads: sql: error"))
        .unwrap_or_else(|| panic!("no sql error line in\n{}", out.stdout));
    assert!(
        line.contains("emial") && line.contains("inline `sql`"),
        "{line}"
    );
}

#[tokio::test]
async fn check_catches_a_column_of_the_wrong_type() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace("happened_at AS event_time", "(id > 1) AS event_time");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout
            .contains("leads: event_time: error — its type boolean cannot give `event_time`"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn check_catches_a_missing_event_time() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace("happened_at AS event_time, ", "");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout
            .contains("leads: event_time: error — required, but no column or constant gives it"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn check_catches_a_primary_key_that_cannot_be_ordered() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = leads_model_with(
        "SELECT json_build_object('id', id) AS id, updated_at, stage AS event_name, happened_at AS event_time, email AS em FROM crm.leads",
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("leads: updated_at: error"))
        .unwrap_or_else(|| panic!("no paging error in\n{}", out.stdout));
    assert!(line.contains("json"), "{line}");
}

#[tokio::test]
async fn check_catches_a_lookback_on_an_integer_cursor() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"id\"\nlookback = \"1h\"",
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check", "--offline"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout.contains("leads: lookback: error — is set, but the cursor `id` is not a timestamp or date column"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn check_reports_a_token_meta_refuses_without_printing_it() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = capi_sync::sandbox::start(
        "127.0.0.1:0".parse().unwrap(),
        capi_sync::sandbox::SandboxConfig {
            token: Some("another-token".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("leads: pixel 123456789012345: error"))
        .unwrap_or_else(|| panic!("no pixel error in\n{}", out.stdout));
    assert!(
        line.contains("190") && line.contains("meta.access_token"),
        "{line}"
    );
    assert!(!out.all().contains(TOKEN));
}

#[tokio::test]
async fn check_offline_does_not_ask_the_graph_api() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["check", "--offline"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(sandbox.stats().requests, 0);
}

#[tokio::test]
async fn check_of_an_unreachable_warehouse_exits_3_naming_the_setting() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let text = std::fs::read_to_string(&cfg.path)
        .unwrap()
        .replace(&db.url, "postgres://postgres@127.0.0.1:1/nowhere");
    std::fs::write(&cfg.path, text).unwrap();
    let out = cli(&cfg.path, &["check", "--offline"]).await;
    assert_eq!(out.code, 3, "{}", out.all());
    assert!(
        out.stdout.contains("warehouse: error") && out.stdout.contains("warehouse.url"),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// preview

#[tokio::test]
async fn preview_prints_the_next_events_hashed_and_sends_nothing() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "leads", "--limit", "2"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let hashed = capi_sync::mapping::normalize::sha256_hex("person.1@example.com");
    assert!(out.stdout.contains(&hashed), "{}", out.stdout);
    assert!(out.stdout.contains("row 1 ") && out.stdout.contains("row 2 "));
    assert!(!out.stdout.contains("row 3 "), "limit 2 shows 2 rows");
    assert!(!out.all().to_lowercase().contains("person.1@example.com"));
    assert_eq!(sandbox.stats().requests, 0);
    assert!(!state_table_exists(&db).await);
}

#[tokio::test]
async fn preview_shows_the_refusal_reason_of_a_row_that_would_be_refused() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    make_too_old(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "leads"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("row 2 "))
        .unwrap_or_else(|| panic!("no row 2 in\n{}", out.stdout));
    assert!(line.contains("refused, event_time_too_old"), "{line}");
}

#[tokio::test]
async fn preview_starts_after_the_cursor() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let state = capi_sync::ops::read_only_state(&ctx.config).await.unwrap();
    let model = ctx.config.model("leads").unwrap();
    let preview = capi_sync::ops::preview::build(&ctx.warehouse, state.as_ref(), model, 10)
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<Vec<String>> = preview
        .rows
        .iter()
        .map(|r| match r {
            capi_sync::ops::preview::RowPreview::Send { key, .. } => key.clone(),
            other => panic!("expected events to send, got {other:?}"),
        })
        .collect();
    assert_eq!(keys, vec![vec!["4".to_string()], vec!["5".to_string()]]);
}

#[tokio::test]
async fn preview_json_is_one_document_with_an_outcome_per_row() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    make_too_old(&db, 1).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "leads", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    let outcomes: Vec<&str> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["refused", "send"]);
    assert_eq!(doc["rows"][1]["event"]["action_source"], "system_generated");
}

#[tokio::test]
async fn preview_of_a_model_whose_columns_do_not_map_exits_2_and_points_at_check() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace("email AS em,", "email AS mail,");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["preview", "leads"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("column `mail`") && out.stderr.contains("capi-sync check leads"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_unknown_model_name_is_a_config_error_listing_the_models() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "lead"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("no model named `lead`") && out.stderr.contains("models: leads"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// sync --dry-run and test event codes

#[tokio::test]
async fn a_dry_run_sends_nothing_moves_no_cursor_and_records_no_run() {
    let db = TestDb::new().await;
    seed(&db, 5).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let model = ctx.config.model("leads").unwrap().clone();
    let run = sync_model_once(
        &ctx,
        &model,
        &RunOptions {
            trigger: "test".into(),
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.counters.events_sent, 5, "counted as would-be-sent");
    assert_eq!(sandbox.stats().requests, 0);
    assert_eq!(ctx.state.cursor("leads").await.unwrap(), None);
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM capi_sync.runs").await,
        0
    );
}

#[tokio::test]
async fn a_dry_run_summary_says_nothing_was_sent() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["sync", "leads", "--dry-run"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("2 events would be sent")
            && out
                .stdout
                .contains("dry run: nothing was sent, no cursor moved, no run was recorded"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn the_test_event_code_flag_reaches_meta() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(
        &cfg.path,
        &["sync", "leads", "--test-event-code", "TEST4242"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(sandbox.stats().events_accepted, 2);
    assert_eq!(
        sandbox.stats().last_test_event_code.as_deref(),
        Some("TEST4242")
    );
}

#[tokio::test]
async fn a_models_test_event_code_is_sent_without_the_flag() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\ntest_event_code = \"MODEL77\"",
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    sync(&ctx, "leads").await;
    assert_eq!(
        sandbox.stats().last_test_event_code.as_deref(),
        Some("MODEL77")
    );
}

// ---------------------------------------------------------------------------------------------
// status, runs, refused

#[tokio::test]
async fn status_shows_the_last_run_cursor_waiting_rows_and_refusals() {
    let db = TestDb::new().await;
    seed(&db, 4).await;
    make_too_old(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let out = cli(&cfg.path, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    for expected in [
        "leads: last run succeeded",
        "2 rows waiting",
        "last run:  #1 succeeded",
        "4 rows read, 3 events sent, 1 refused",
        "/ key 4",
        "refused:   event_time_too_old 1",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn status_lag_is_the_age_of_the_oldest_row_waiting() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        2,
        "now() - interval '1 hour' + g * interval '1 minute'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let leads = &doc["models"][0];
    assert_eq!(leads["waiting_rows"], 2);
    // The oldest waiting row changed 59 minutes ago.
    let lag = leads["lag_seconds"].as_f64().unwrap();
    assert!((3500.0..3600.0).contains(&lag), "lag {lag}");
}

#[tokio::test]
async fn status_counts_delivered_events_whose_row_changed_since() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    sqlx::query("UPDATE crm.leads SET email = 'new@example.com', updated_at = now() WHERE id = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["status", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["models"][0]["changed_since_delivery"], 1);
}

#[tokio::test]
async fn status_gives_the_next_run_from_the_schedule() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    seed(&db, 1).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["status", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let next = chrono::DateTime::parse_from_rfc3339(doc["models"][0]["next_run"].as_str().unwrap())
        .unwrap();
    let wait = next.with_timezone(&chrono::Utc) - chrono::Utc::now();
    // "*/5 * * * *": within five minutes, on a multiple of five.
    assert!(wait <= chrono::Duration::minutes(5), "{wait}");
    assert_eq!(chrono::Timelike::minute(&next) % 5, 0);
}

#[tokio::test]
async fn runs_lists_recent_runs_newest_first_with_their_counts() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    seed_leads(&db.pool, 1, "now()", "now() - interval '1 hour'").await;
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["runs", "leads", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    let sent: Vec<i64> = runs
        .iter()
        .map(|r| r["events_sent"].as_i64().unwrap())
        .collect();
    assert_eq!(sent, vec![1, 3]);
    let text = cli(&cfg.path, &["runs", "leads"]).await;
    assert!(text.stdout.contains("RUN  STARTED"), "{}", text.stdout);
}

#[tokio::test]
async fn refused_lists_keys_event_ids_and_reasons_but_no_customer_data() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    make_too_old(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["refused", "leads"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let event_id = capi_sync::mapping::derive_event_id("leads", &["3".to_string()], "Lead");
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("3 "))
        .unwrap_or_else(|| panic!("no row for key 3 in\n{}", out.stdout));
    assert!(
        row.contains(&event_id) && row.contains("event_time_too_old"),
        "{row}"
    );
    let lower = out.all().to_lowercase();
    assert!(
        !lower.contains("example.com") && !lower.contains("555-"),
        "{lower}"
    );
}

// ---------------------------------------------------------------------------------------------
// reset and backfill

#[tokio::test]
async fn reset_without_yes_and_without_a_terminal_changes_nothing_and_exits_2() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let before = ctx.state.cursor("leads").await.unwrap();
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["reset", "leads"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(ctx.state.cursor("leads").await.unwrap(), before);
}

#[tokio::test]
async fn reset_to_a_value_makes_the_next_run_read_from_that_value() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        5,
        "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 day'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    // Rows 3, 4 and 5 changed on or after Jan 4.
    let out = cli(
        &cfg.path,
        &["reset", "leads", "--to", "2026-01-04", "--yes"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.counters.rows_read, 3);
    assert_eq!(
        run.counters.rows_already_sent, 3,
        "the ledger keeps them from going twice"
    );
    assert_eq!(sandbox.events().len(), 5);
}

#[tokio::test]
async fn reset_with_no_value_reads_every_row_again() {
    let db = TestDb::new().await;
    seed(&db, 4).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["reset", "leads", "--yes"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(ctx.state.cursor("leads").await.unwrap(), None);
    assert_eq!(sync(&ctx, "leads").await.counters.rows_read, 4);
}

#[tokio::test]
async fn reset_rejects_a_value_that_is_not_of_the_cursor_type() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(
        &cfg.path,
        &["reset", "leads", "--to", "last tuesday", "--yes"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("`last tuesday` is not a value of the cursor column `updated_at`, whose type is timestamp with time zone"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn reset_reports_rows_older_than_metas_window_up_front() {
    let db = TestDb::new().await;
    seed(&db, 5).await;
    make_too_old(&db, 1).await;
    make_too_old(&db, 4).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["reset", "leads", "--yes"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("5 rows to read; 2 rows are older than 7 days and cannot be sent"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn sync_from_backfills_rows_that_arrived_behind_the_cursor() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    // A late row whose cursor value is older than the cursor: a normal run never sees it.
    seed_leads(
        &db.pool,
        1,
        "now() - interval '3 hours'",
        "now() - interval '1 hour'",
    )
    .await;
    assert_eq!(sync(&ctx, "leads").await.counters.rows_read, 0);
    let from = (chrono::Utc::now() - chrono::Duration::hours(4)).to_rfc3339();
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["sync", "leads", "--from", &from]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("1 events sent, 0 refused, 3 already sent"),
        "{}",
        out.stdout
    );
    assert_eq!(event_id_counts(&sandbox.events()).len(), 4);
}

#[tokio::test]
async fn sync_from_reports_rows_older_than_metas_window_before_sending() {
    let db = TestDb::new().await;
    seed(&db, 4).await;
    make_too_old(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let from = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let out = cli(&cfg.path, &["sync", "leads", "--from", &from]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let report = out.stdout.lines().next().unwrap_or_default();
    assert!(
        report.starts_with("leads: backfilling from updated_at = ")
            && report.contains("4 rows to read; 1 row is older than 7 days and cannot be sent"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_backfill_says_when_event_time_cannot_be_counted_in_advance() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "happened_at AS event_time",
        "extract(epoch from happened_at)::bigint::text AS event_time",
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(
        &cfg.path,
        &["sync", "leads", "--from", "2020-01-01", "--dry-run"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("the event_time column `event_time` is text, so rows outside Meta's window cannot be counted in advance"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn sync_from_with_dry_run_moves_no_cursor() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let before = ctx.state.cursor("leads").await.unwrap();
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(
        &cfg.path,
        &["sync", "leads", "--from", "2020-01-01", "--dry-run"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("3 rows read"), "{}", out.stdout);
    assert_eq!(ctx.state.cursor("leads").await.unwrap(), before);
}

#[tokio::test]
async fn sync_from_needs_exactly_one_model() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = format!(
        "{LEADS_MODEL}{}",
        LEADS_MODEL.replace("name = \"leads\"", "name = \"leads2\"")
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["sync", "--from", "2020-01-01"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("name exactly one model"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// progress hooks

#[derive(Debug, Default)]
struct Counting {
    rows: AtomicU64,
    events: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
    finished: AtomicU64,
}

impl RunObserver for Counting {
    fn rows_read(&self, _: &str, rows: u64) {
        self.rows.fetch_add(rows, Ordering::SeqCst);
    }
    fn batch_done(&self, _: &str, events: u64, refused: &[RefusedRow]) {
        self.events.fetch_add(events, Ordering::SeqCst);
        self.refused
            .fetch_add(refused.len() as u64, Ordering::SeqCst);
    }
    fn retry(&self, _: &str, _: capi_sync::sink::ErrorClass) {
        self.retries.fetch_add(1, Ordering::SeqCst);
    }
    fn run_finished(&self, _: &capi_sync::pipeline::RunSummary) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn the_run_observer_sees_every_row_read_event_sent_and_refusal() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        250,
        "now() - interval '2 hours' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
    make_too_old(&db, 7).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\nbatch_size = 100",
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let counting = Arc::new(Counting::default());
    let model = ctx.config.model("leads").unwrap().clone();
    let run = sync_model_once(
        &ctx,
        &model,
        &RunOptions {
            trigger: "test".into(),
            observer: Some(counting.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(counting.rows.load(Ordering::SeqCst), 250);
    assert_eq!(counting.events.load(Ordering::SeqCst), 249);
    assert_eq!(counting.refused.load(Ordering::SeqCst), 1);
    assert_eq!(counting.finished.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_run_observer_is_told_of_each_retry() {
    let db = TestDb::new().await;
    seed(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sandbox.fail_next(1);
    let counting = Arc::new(Counting::default());
    let model = ctx.config.model("leads").unwrap().clone();
    let run = sync_model_once(
        &ctx,
        &model,
        &RunOptions {
            trigger: "test".into(),
            observer: Some(counting.clone()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(counting.retries.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// The service's endpoints, over real HTTP.

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn serve(
    ctx: &capi_sync::pipeline::SyncContext,
    metrics: Arc<Metrics>,
) -> (String, CancellationToken) {
    let stop = CancellationToken::new();
    let endpoints = capi_sync::http_server::start(
        "127.0.0.1:0".parse().unwrap(),
        ctx.clone(),
        metrics,
        stop.clone(),
    )
    .await
    .unwrap();
    (format!("http://{}", endpoints.addr), stop)
}

#[tokio::test]
async fn healthz_answers_ok() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let (base, stop) = serve(&ctx, Arc::new(Metrics::new(["leads"]))).await;
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (200, "ok\n".to_string())
    );
    stop.cancel();
}

#[tokio::test]
async fn readyz_answers_200_when_both_databases_answer() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let (base, stop) = serve(&ctx, Arc::new(Metrics::new(["leads"]))).await;
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);
    stop.cancel();
}

#[tokio::test]
async fn readyz_answers_503_naming_the_warehouse_when_it_is_gone() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let (base, stop) = serve(&ctx, Arc::new(Metrics::new(["leads"]))).await;
    ctx.warehouse.pool().close().await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the warehouse"), "{body}");
    assert!(!body.contains("the state database"), "{body}");
    stop.cancel();
}

#[tokio::test]
async fn metrics_count_events_sent_and_rows_refused_by_reason() {
    let db = TestDb::new().await;
    seed(&db, 4).await;
    make_too_old(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let metrics = Arc::new(Metrics::new(["leads"]));
    capi_sync::scheduler::tick_observed(
        &ctx,
        ctx.config.model("leads").unwrap(),
        Some(metrics.clone()),
    )
    .await;
    let (base, stop) = serve(&ctx, metrics).await;
    let (status, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("capi_sync_events_sent_total{model=\"leads\"} 3\n"),
        "{body}"
    );
    assert!(
        body.contains(
            "capi_sync_rows_refused_total{model=\"leads\",reason=\"event_time_too_old\"} 1\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("capi_sync_batch_duration_seconds_count{model=\"leads\"} 1\n"),
        "{body}"
    );
    stop.cancel();
}

#[tokio::test]
async fn metrics_count_retries_by_class() {
    let db = TestDb::new().await;
    seed(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sandbox.fail_next(1);
    let metrics = Arc::new(Metrics::new(["leads"]));
    capi_sync::scheduler::tick_observed(
        &ctx,
        ctx.config.model("leads").unwrap(),
        Some(metrics.clone()),
    )
    .await;
    let (base, stop) = serve(&ctx, metrics).await;
    let body = get(&format!("{base}/metrics")).await.1;
    assert!(
        body.contains("capi_sync_retries_total{model=\"leads\",class=\"transient\"} 1\n"),
        "{body}"
    );
    stop.cancel();
}

#[tokio::test]
async fn metrics_give_the_last_successful_run_time() {
    let db = TestDb::new().await;
    seed(&db, 1).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let metrics = Arc::new(Metrics::new(["leads"]));
    let before = chrono::Utc::now().timestamp();
    capi_sync::scheduler::tick_observed(
        &ctx,
        ctx.config.model("leads").unwrap(),
        Some(metrics.clone()),
    )
    .await;
    let (base, stop) = serve(&ctx, metrics).await;
    let body = get(&format!("{base}/metrics")).await.1;
    let value: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("capi_sync_last_success_timestamp_seconds{model=\"leads\"} "))
        .unwrap_or_else(|| panic!("no last-success sample in {body}"))
        .parse()
        .unwrap();
    assert!(value >= before as f64 && value <= chrono::Utc::now().timestamp() as f64 + 1.0);
    stop.cancel();
}

#[tokio::test]
async fn metrics_give_rows_waiting_and_cursor_lag_per_model() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        3,
        "now() - interval '1 hour' + g * interval '1 minute'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let metrics = Arc::new(Metrics::new(["leads"]));
    capi_sync::http_server::refresh_backlog(&ctx, &metrics).await;
    let (base, stop) = serve(&ctx, metrics).await;
    let body = get(&format!("{base}/metrics")).await.1;
    assert!(
        body.contains("capi_sync_rows_waiting{model=\"leads\"} 3\n"),
        "{body}"
    );
    let lag: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("capi_sync_cursor_lag_seconds{model=\"leads\"} "))
        .unwrap_or_else(|| panic!("no lag sample in {body}"))
        .parse()
        .unwrap();
    assert!((3500.0..3600.0).contains(&lag), "lag {lag}");
    stop.cancel();
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_run_service_serves_its_endpoints_and_stops_cleanly_on_sigterm() {
    let db = TestDb::new().await;
    seed(&db, 5).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let addr = format!("127.0.0.1:{}", free_port());
    // Every second, so a run happens while the test watches.
    let models = LEADS_MODEL.replace("*/5 * * * *", "* * * * * *");
    let cfg = config_file(&db, &sandbox.base_url(), &models, &addr);
    let mut child = command(&cfg.path, &["run"]).spawn().unwrap();
    let base = format!("http://{addr}");
    let mut body = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = reqwest::get(format!("{base}/metrics")).await {
            body = resp.text().await.unwrap_or_default();
            if body.contains("capi_sync_events_sent_total{model=\"leads\"} 5\n") {
                break;
            }
        }
    }
    assert!(
        body.contains("capi_sync_events_sent_total{model=\"leads\"} 5\n"),
        "{body}"
    );
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the service stops within 20 s")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "endpoints closed"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs

#[tokio::test]
async fn a_full_sync_logs_no_customer_data_and_never_the_token() {
    let db = TestDb::new().await;
    sqlx::query("CREATE SCHEMA crm")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE crm.people (id bigint PRIMARY KEY, email text, phone text, first_name text,
            last_name text, city text, happened_at timestamptz, updated_at timestamptz)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Row 3's phone is invalid and row 4 has no usable identifier: dropped values and refusals
    // are logged and recorded too, and must not carry the values either.
    sqlx::query(
        "INSERT INTO crm.people VALUES
         (1, 'Zelda.Quartermaine@Example.com', '+1 (415) 555-0199', 'Zelda', 'Quartermaine', 'Tuscaloosa', now() - interval '1 hour', now() - interval '50 minutes'),
         (2, 'Barnaby.Featherstonehaugh@Example.org', '(212) 555-0147', 'Barnaby', 'Featherstonehaugh', 'Kalamazoo', now() - interval '1 hour', now() - interval '40 minutes'),
         (3, 'Ottoline.Vandersloot@Example.net', 'call me maybe', 'Ottoline', 'Vandersloot', 'Walla Walla', now() - interval '1 hour', now() - interval '30 minutes'),
         (4, 'not-an-email', 'nope', NULL, NULL, NULL, now() - interval '1 hour', now() - interval '20 minutes')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let models = r#"
[[models]]
name = "people"
pixel_id = "123456789012345"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, 'Lead' AS event_name, happened_at AS event_time, email AS em, phone AS ph, first_name AS fn, last_name AS ln, city AS ct FROM crm.people"
primary_key = "id"
cursor = "updated_at"
default_country = "us"
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#;
    let cfg = config_file(&db, &sandbox.base_url(), models, "");
    let mut outputs = Vec::new();
    for args in [
        vec!["--log-format", "json", "sync"],
        vec!["--log-format", "json", "check"],
        vec!["--log-format", "json", "status"],
        vec!["--log-format", "json", "refused", "people"],
        vec!["--log-format", "json", "preview", "people"],
    ] {
        let mut cmd = command(&cfg.path, &args);
        cmd.env("RUST_LOG", "debug");
        let out = cmd.output().await.unwrap();
        outputs.push(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert_eq!(sandbox.stats().events_accepted, 3, "{}", outputs[0]);
    let all = outputs.join("\n").to_lowercase();
    assert!(all.contains("\"level\":\"info\""), "JSON logs were written");
    for raw in [
        "zelda",
        "quartermaine",
        "tuscaloosa",
        "barnaby",
        "featherstonehaugh",
        "kalamazoo",
        "ottoline",
        "vandersloot",
        "walla",
        "example.com",
        "example.org",
        "example.net",
        "not-an-email",
        "call me maybe",
        "555-0199",
        "5550199",
        "555-0147",
        "2125550147",
    ] {
        assert!(!all.contains(raw), "`{raw}` appears in the output");
    }
    assert!(
        !all.contains(&TOKEN.to_lowercase()),
        "the token appears in the output"
    );
}
