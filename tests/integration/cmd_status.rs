//! `capi-sync status`: per model the last run, the cursor, the rows waiting and their lag,
//! refusals, deliveries whose row changed since, and the next scheduled run.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn status_shows_the_last_run_cursor_waiting_rows_and_refusals() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 4).await;
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
    seed_waiting_leads(&db, 2).await;
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
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    seed_recent_leads(&db, 1).await;
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
