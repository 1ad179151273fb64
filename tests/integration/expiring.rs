//! Rows about to leave Meta's window (7 days; 62 for physical_store): counted in the warehouse
//! after the cursor, shown by `status`, exported as gauges, warned by `check`, and logged by
//! the service when the model's next run comes too late.

use crate::helpers::*;
use capi_sync::metrics::Metrics;
use capi_sync::sandbox::Faults;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// `crm.visits`: one row per (id, age of its event in hours, action source, "" for NULL); the rows
/// changed `changed_hours_ago` hours ago, a second apart in id order.
async fn seed(db: &TestDb, rows: &[(i64, f64, &str)], changed_hours_ago: f64) {
    sqlx::query("CREATE SCHEMA IF NOT EXISTS crm")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS crm.visits (id bigint PRIMARY KEY, email text, source text,
            happened_at timestamptz, updated_at timestamptz NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (id, age_hours, source) in rows {
        sqlx::query(
            "INSERT INTO crm.visits VALUES ($1::bigint, 'visitor' || $1::bigint || '@example.com', NULLIF($2, ''),
                now() - make_interval(secs => $3::float8 * 3600),
                now() - make_interval(secs => $4::float8 * 3600 - $1::bigint))",
        )
        .bind(id)
        .bind(source)
        .bind(age_hours)
        .bind(changed_hours_ago)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

/// A model over `crm.visits`: `event_time` from its own column, `action_source` a constant
/// or (`None`) the `source` column; `event_time_sql` lets a test make the column text.
fn model(name: &str, schedule: &str, action_source: Option<&str>, event_time_sql: &str) -> String {
    let (source_column, constant) = match action_source {
        Some(a) => (String::new(), format!("action_source = \"{a}\"")),
        None => (", source AS action_source".to_string(), String::new()),
    };
    model_with(name, schedule, &source_column, &constant, event_time_sql)
}

fn model_with(
    name: &str,
    schedule: &str,
    source_column: &str,
    constant: &str,
    event_time_sql: &str,
) -> String {
    format!(
        r#"
[[models]]
name = "{name}"
pixel_id = "123456789012345"
schedule = "{schedule}"
sql = "SELECT id, updated_at, 'Lead' AS event_name, {event_time_sql} AS event_time, email AS em{source_column} FROM crm.visits"
primary_key = "id"
cursor = "updated_at"
[models.constants]
{constant}
"#
    )
}

const HOURLY: &str = "0 * * * *";

fn day(d: f64) -> f64 {
    d * 24.0
}

/// `event_time` + `days` of row `id`, as Postgres computes it: the exact expected deadline.
async fn deadline(db: &TestDb, id: i64, days: i32) -> DateTime<Utc> {
    sqlx::query_scalar(
        "SELECT happened_at + make_interval(days => $2) FROM crm.visits WHERE id = $1",
    )
    .bind(id)
    .bind(days)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// `status --json`'s entry for `model`.
async fn status_json(cfg: &ConfigFile, model: &str) -> serde_json::Value {
    let out = cli(&cfg.path, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("no {model} in {v}"))
        .clone()
}

fn earliest(s: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s["earliest_expiry"].as_str().expect("an earliest expiry"))
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn status_counts_rows_expiring_within_a_day_and_rows_already_expired() {
    let db = TestDb::new().await;
    // 6.5 days old: leaves the 7-day window in 12 h. 8 days: gone. 1 day: neither.
    seed(
        &db,
        &[
            (1, day(6.5), "web"),
            (2, day(8.0), "web"),
            (3, day(1.0), "web"),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("visits", HOURLY, Some("email"), "happened_at");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let s = status_json(&cfg, "visits").await;
    assert_eq!(s["waiting_rows"], 3);
    assert_eq!(s["rows_expiring"], 1, "{s}");
    assert_eq!(s["rows_expired_waiting"], 1, "{s}");
    assert_eq!(s["expiring_within_seconds"], 86_400);
    assert!(s["expiry_error"].is_null(), "{s}");
    assert_eq!(earliest(&s), deadline(&db, 1, 7).await);
}

#[tokio::test]
async fn physical_store_rows_have_62_days() {
    let db = TestDb::new().await;
    seed(
        &db,
        &[
            (1, day(61.5), "s"),
            (2, day(63.0), "s"),
            (3, day(8.0), "s"),
            (4, day(1.0), "s"),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("store", HOURLY, Some("physical_store"), "happened_at");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let s = status_json(&cfg, "store").await;
    assert_eq!(s["rows_expiring"], 1, "{s}");
    assert_eq!(s["rows_expired_waiting"], 1, "8 days is inside 62: {s}");
    assert_eq!(earliest(&s), deadline(&db, 1, 62).await);
}

#[tokio::test]
async fn an_action_source_column_gives_each_row_its_own_window() {
    let db = TestDb::new().await;
    seed(
        &db,
        &[
            (1, day(61.5), "physical_store"),
            (2, day(6.5), "website"),
            (3, day(8.0), "physical_store"),
            (4, day(8.0), "website"),
            (5, day(63.0), " Physical_Store "),
            (6, day(1.0), "website"),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("mixed", HOURLY, None, "happened_at");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let s = status_json(&cfg, "mixed").await;
    assert_eq!(s["rows_expiring"], 2, "rows 1 and 2: {s}");
    assert_eq!(s["rows_expired_waiting"], 2, "rows 4 and 5: {s}");
    // Rows 1 and 2 both have about 12 h left: the earlier of their two deadlines.
    let first = deadline(&db, 2, 7).await.min(deadline(&db, 1, 62).await);
    assert_eq!(earliest(&s), first);
}

#[tokio::test]
async fn a_null_action_source_takes_the_window_of_the_models_constant() {
    let db = TestDb::new().await;
    // NULL sources fall back to the constant physical_store: 8 days old is inside 62.
    seed(
        &db,
        &[
            (1, day(8.0), ""),
            (2, day(8.0), "website"),
            (3, day(61.5), ""),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model_with(
        "mixed",
        HOURLY,
        ", source AS action_source",
        "action_source = \"physical_store\"",
        "happened_at",
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let s = status_json(&cfg, "mixed").await;
    assert_eq!(s["rows_expired_waiting"], 1, "only the website row: {s}");
    assert_eq!(s["rows_expiring"], 1, "row 3: {s}");
}

#[tokio::test]
async fn rows_before_the_cursor_are_not_counted() {
    let db = TestDb::new().await;
    // Row 1 is sent by a first run (6.9 days old: still accepted); rows 2 and 3 come after.
    seed(&db, &[(1, day(6.9), "web")], 3.0).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("visits", HOURLY, Some("email"), "happened_at");
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let first = sync(&ctx, "visits").await;
    assert_eq!(first.counters.events_sent, 1, "{:?}", first.error);
    seed(&db, &[(2, day(6.5), "web"), (3, day(9.0), "web")], 1.0).await;
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let s = status_json(&cfg, "visits").await;
    assert_eq!(s["waiting_rows"], 2);
    assert_eq!(s["rows_expiring"], 1, "row 1 is behind the cursor: {s}");
    assert_eq!(s["rows_expired_waiting"], 1, "{s}");
    assert_eq!(earliest(&s), deadline(&db, 2, 7).await);
}

#[tokio::test]
async fn a_text_event_time_is_reported_unknown_with_the_reason_and_status_still_works() {
    let db = TestDb::new().await;
    seed(&db, &[(1, day(6.5), "web")], 1.0).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("texty", HOURLY, Some("email"), "happened_at::text");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let s = status_json(&cfg, "texty").await;
    assert_eq!(s["waiting_rows"], 1, "the backlog is still measured: {s}");
    assert!(s["rows_expiring"].is_null(), "{s}");
    let why = s["expiry_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("event_time column `event_time` is text"),
        "{why}"
    );
    let text = cli(&cfg.path, &["status"]).await;
    assert!(
        text.stdout
            .contains("  expiring:  unknown: the event_time column `event_time` is text"),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn status_text_says_when_the_first_row_leaves_and_how_many_are_gone() {
    let db = TestDb::new().await;
    seed(
        &db,
        &[
            (1, day(6.5), "web"),
            (2, day(6.6), "web"),
            (3, day(8.0), "web"),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("visits", HOURLY, Some("email"), "happened_at");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["status"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let first = capi_sync::human::utc(deadline(&db, 2, 7).await);
    let headline = out.stdout_line("visits:");
    assert!(
        headline.contains("2 rows leaving Meta's window within 24h"),
        "{headline}"
    );
    let line = out.stdout_line("  expiring:");
    assert!(
        line.contains(&format!(
            "2 rows leave Meta's window within 24h, the first at {first}"
        )),
        "{line}"
    );
    assert!(
        line.contains("1 row is already outside Meta's window (7 days; 62 for physical_store): the next run refuses it (event_time_too_old)"),
        "{line}"
    );
}

#[tokio::test]
async fn the_horizon_is_configurable() {
    let db = TestDb::new().await;
    // 5 days old: 2 days left, inside a 3-day horizon, outside the default 24 h.
    seed(&db, &[(1, day(5.0), "web")], 1.0).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = model("visits", HOURLY, Some("email"), "happened_at");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    assert_eq!(status_json(&cfg, "visits").await["rows_expiring"], 0);
    let text = config_text(
        &db,
        &sandbox.base_url(),
        "[service]\nmetrics_addr = \"\"\nexpiring_within = \"3d\"",
        &models,
    );
    std::fs::write(&cfg.path, text).unwrap();
    let s = status_json(&cfg, "visits").await;
    assert_eq!(s["rows_expiring"], 1, "{s}");
    assert_eq!(s["expiring_within_seconds"], 3 * 86_400);
}

#[tokio::test]
async fn metrics_give_rows_expiring_and_expired_per_model() {
    let db = TestDb::new().await;
    seed(
        &db,
        &[
            (1, day(6.5), "web"),
            (2, day(6.7), "web"),
            (3, day(8.0), "web"),
            (4, day(1.0), "web"),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = format!(
        "{}{}",
        model("visits", HOURLY, Some("email"), "happened_at"),
        model("texty", HOURLY, Some("email"), "happened_at::text")
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let metrics = Arc::new(Metrics::new(["visits", "texty"]));
    capi_sync::http_server::refresh_backlog(&ctx, &metrics).await;
    let body = metrics.render();
    assert!(
        body.contains("capi_sync_rows_expiring{model=\"visits\"} 2\n"),
        "{body}"
    );
    assert!(
        body.contains("capi_sync_rows_expired_waiting{model=\"visits\"} 1\n"),
        "{body}"
    );
    // Unknown is no series, not a misleading 0; its backlog is still there.
    assert!(
        !body.contains("capi_sync_rows_expiring{model=\"texty\"}"),
        "{body}"
    );
    assert!(
        body.contains("capi_sync_rows_waiting{model=\"texty\"} 4\n"),
        "{body}"
    );
}

#[tokio::test]
async fn check_warns_of_rows_expiring_and_expired() {
    let db = TestDb::new().await;
    seed(
        &db,
        &[
            (1, day(6.5), "web"),
            (2, day(8.0), "web"),
            (3, day(9.0), "web"),
        ],
        1.0,
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = format!(
        "{}{}",
        model("visits", HOURLY, Some("email"), "happened_at"),
        model("fresh", HOURLY, Some("physical_store"), "happened_at")
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check", "--offline"]).await;
    assert_eq!(out.code, 0, "warnings only: {}", out.all());
    let first = capi_sync::human::utc(deadline(&db, 1, 7).await);
    let line = out.stdout_line("visits: expiry: warning");
    assert!(
        line.contains(&format!("rows waiting after the cursor: 1 leaves Meta's window within 24h (the first at {first}), 2 are already outside it")),
        "{line}"
    );
    assert!(line.contains("capi-sync sync visits"), "{line}");
    // Within 62 days and none near its end: fine.
    let fresh = out.stdout_line("fresh: expiry:");
    assert!(
        fresh.contains("ok — no row waiting after the cursor leaves Meta's window within 24h"),
        "{fresh}"
    );
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
async fn the_service_warns_once_when_the_next_run_comes_after_a_row_leaves_the_window() {
    let db = TestDb::new().await;
    seed(&db, &[(1, day(6.5), "web"), (2, day(8.0), "web")], 1.0).await;
    let sandbox = start_sandbox(Faults::default()).await;
    // Once a year: the next run is months after row 1 leaves the window (in 12 h). The
    // other model runs hourly, before its row (2 days left) leaves: no warning.
    let models = format!(
        "{}{}",
        model("yearly", "0 0 1 1 *", Some("email"), "happened_at"),
        model("hourly", HOURLY, Some("physical_store"), "happened_at")
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = config_file(&db, &sandbox.base_url(), &models, &addr);
    let mut cmd = command(&cfg.path, &["--log-format", "json", "run"]);
    let child = cmd.spawn().unwrap();
    let mut body = String::new();
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await {
            body = resp.text().await.unwrap_or_default();
            if body.contains("capi_sync_rows_expiring{model=\"hourly\"}")
                && body.contains("capi_sync_rows_expiring{model=\"yearly\"}")
            {
                break;
            }
        }
    }
    assert!(
        body.contains("capi_sync_rows_expiring{model=\"yearly\"} 1\n"),
        "{body}"
    );
    sigterm(child.id().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the service stops")
        .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "WARN" && l["rows_expiring"].is_number())
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, for the yearly model:\n{logs}"
    );
    let w = &warnings[0];
    assert_eq!(w["model"], "yearly");
    assert_eq!(w["rows_expiring"], 1);
    assert_eq!(w["rows_expired_waiting"], 1);
    let expected = deadline(&db, 1, 7).await;
    let logged = DateTime::parse_from_rfc3339(w["earliest_expiry"].as_str().unwrap()).unwrap();
    assert_eq!(logged.with_timezone(&Utc), expected);
    let next = DateTime::parse_from_rfc3339(w["next_run"].as_str().unwrap()).unwrap();
    assert!(next.with_timezone(&Utc) > expected, "{w}");
    // Counts, ids and times only: no customer value.
    assert!(!logs.contains("example.com"), "{logs}");
}
