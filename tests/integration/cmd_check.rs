//! `capi-sync check`: every column of every model is explained or caught before any run,
//! the token and the warehouse are tried, and nothing is sent or created.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

fn leads_model_with(sql_select: &str) -> String {
    LEADS_MODEL.replace(
        "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em, phone AS ph FROM crm.leads",
        sql_select,
    )
}

#[tokio::test]
async fn check_passes_a_good_model_with_one_ok_line_per_column_and_exit_0() {
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    let (db, sandbox) = leads_and_sandbox(3).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(sandbox.stats().events_accepted, 0);
    assert!(!state_table_exists(&db).await);
}

#[tokio::test]
async fn check_catches_a_column_that_maps_to_nothing_before_any_run() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let models = LEADS_MODEL.replace("email AS em,", "email AS em, phone AS mobile_number,");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check", "leads"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out.stdout_line("leads: mobile_number: error");
    assert!(line.contains("ignore_columns"), "{line}");
}

#[tokio::test]
async fn check_catches_an_unknown_column_in_the_models_sql() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let models = LEADS_MODEL.replace("email AS em", "emial AS em");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out.stdout_line("leads: sql: error");
    assert!(
        line.contains("emial") && line.contains("inline `sql`"),
        "{line}"
    );
}

#[tokio::test]
async fn check_catches_a_column_of_the_wrong_type() {
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    let (db, sandbox) = leads_and_sandbox(3).await;
    let models = leads_model_with(
        "SELECT json_build_object('id', id) AS id, updated_at, stage AS event_name, happened_at AS event_time, email AS em FROM crm.leads",
    );
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["check"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    let line = out.stdout_line("leads: updated_at: error");
    assert!(line.contains("json"), "{line}");
}

#[tokio::test]
async fn check_catches_a_lookback_on_an_integer_cursor() {
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    seed_recent_leads(&db, 3).await;
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
    let line = out.stdout_line("leads: pixel 123456789012345: error");
    assert!(
        line.contains("190") && line.contains("meta.access_token"),
        "{line}"
    );
    assert!(!out.all().contains(TOKEN));
}

#[tokio::test]
async fn check_offline_does_not_ask_the_graph_api() {
    let (db, sandbox) = leads_and_sandbox(3).await;
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
