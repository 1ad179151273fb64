//! Graph API versions: a run that Meta answers with error 2635 (a version it no longer serves)
//! stops with a message that names the setting to change, refuses nothing and keeps the
//! cursor; `check` fails on a version past its end of life and warns before it.

use crate::helpers::*;
use capi_sync::pipeline::{RunErrorKind, RunStatus};
use capi_sync::sink::versions::{assess, Severity, NEWEST};
use capi_sync::sink::ErrorClass;

/// A config file whose `meta.api_version` is `version`, serving no endpoints.
fn config_with_version(
    db: &TestDb,
    graph_url: &str,
    version: &str,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("versions-test.toml");
    let extra = format!("api_version = \"{version}\"\n[service]\nmetrics_addr = \"\"");
    std::fs::write(&path, config_text(db, graph_url, &extra, LEADS_MODEL)).unwrap();
    (dir, path)
}

fn config_in_process(db: &TestDb, graph_url: &str, version: &str) -> capi_sync::config::Config {
    let extra = format!("api_version = \"{version}\"");
    capi_sync::config::Config::from_toml_str(
        &config_text(db, graph_url, &extra, LEADS_MODEL),
        std::path::Path::new("."),
    )
    .unwrap()
}

async fn refused_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn day(y: i32, m: u32, d: u32) -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

#[tokio::test]
async fn a_run_on_an_ended_version_stops_with_the_version_to_set_and_moves_nothing() {
    let (db, sandbox) = leads_and_sandbox(5).await;
    let ctx = context(config_in_process(&db, &sandbox.base_url(), "v20.0")).await;
    let summary = sync(&ctx, "leads").await;
    assert_eq!(summary.status, RunStatus::Failed);
    assert_eq!(
        summary.error_kind,
        Some(RunErrorKind::Sink(ErrorClass::RetiredVersion))
    );
    let error = summary.error.unwrap_or_default();
    assert!(error.contains("meta.api_version v20.0"), "{error}");
    assert!(
        error.contains(&format!(
            "set meta.api_version to a live version such as {NEWEST}"
        )),
        "{error}"
    );
    assert!(error.contains("error code 2635"), "{error}");
    // Asked once: a retired version is never retried.
    assert_eq!(summary.counters.requests, 1);
    assert_eq!(summary.counters.retries, 0);
    assert_eq!(sandbox.stats().events_accepted, 0);
    assert_eq!(refused_rows(&db).await, 0, "nothing is refused");
    assert_eq!(
        cursor_key(&db.pool, "leads").await,
        None,
        "the cursor stays"
    );
}

#[tokio::test]
async fn sync_on_an_ended_version_exits_1_and_the_run_is_recorded_failed() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let (_dir, path) = config_with_version(&db, &sandbox.base_url(), "v19.0");
    let out = cli(&path, &["sync"]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("meta.api_version v19.0"),
        "{}",
        out.all()
    );
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM capi_sync.runs WHERE model = 'leads'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().contains(NEWEST));
    assert_eq!(refused_rows(&db).await, 0);
    assert_eq!(cursor_key(&db.pool, "leads").await, None);
}

#[tokio::test]
async fn check_fails_with_exit_2_on_a_version_past_its_end_of_life() {
    let (db, sandbox) = leads_and_sandbox(1).await;
    let (_dir, path) = config_with_version(&db, &sandbox.base_url(), "v18.0");
    let out = cli(&path, &["check", "--offline"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out.stdout_line("meta: api_version: error");
    assert!(
        line.contains("v18.0 reached its Graph API end of life on 2026-01-26"),
        "{line}"
    );
    assert!(
        line.contains(&format!("set meta.api_version to {NEWEST}")),
        "{line}"
    );
}

#[tokio::test]
async fn check_on_a_given_day_warns_of_an_end_within_90_days_and_passes() {
    let (db, sandbox) = leads_and_sandbox(1).await;
    let config = config_in_process(&db, &sandbox.base_url(), "v21.0");
    // v21.0's Graph API end of life is 2027-01-21: 46 days after 2026-12-06.
    let today = day(2026, 12, 6);
    let report = capi_sync::commands::check::run_on(&config, &[], true, today)
        .await
        .unwrap();
    let version_lines: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.subject.as_deref() == Some("api_version"))
        .map(|f| f.to_string())
        .collect();
    let expected: Vec<String> = assess("v21.0", today)
        .into_iter()
        .map(|f| f.message)
        .collect();
    assert_eq!(version_lines.len(), expected.len(), "{version_lines:?}");
    assert!(
        version_lines[0].starts_with("meta: api_version: warning — v21.0 reaches its Graph API end of life on 2027-01-21, in 46 days"),
        "{version_lines:?}"
    );
    assert_eq!(report.exit_code(), capi_sync::commands::Exit::Ok);
    // The same version a day past its end is an error.
    let report = capi_sync::commands::check::run_on(&config, &[], true, day(2027, 1, 22))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), capi_sync::commands::Exit::BadConfig);
}

#[tokio::test]
async fn check_notes_a_version_newer_than_it_knows_without_failing() {
    let (db, sandbox) = leads_and_sandbox(1).await;
    let config = config_in_process(&db, &sandbox.base_url(), "v99.0");
    let today = day(2026, 12, 6);
    assert_eq!(assess("v99.0", today)[0].severity, Severity::Ok);
    let report = capi_sync::commands::check::run_on(&config, &[], true, today)
        .await
        .unwrap();
    let line = report
        .findings
        .iter()
        .find(|f| f.subject.as_deref() == Some("api_version"))
        .map(|f| f.to_string())
        .unwrap();
    assert!(
        line.starts_with("meta: api_version: ok — v99.0 is unknown to capi-sync"),
        "{line}"
    );
    assert_eq!(report.exit_code(), capi_sync::commands::Exit::Ok);
}
