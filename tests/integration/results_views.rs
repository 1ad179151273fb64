//! The results views in the state schema: per model and day, events sent (also by event
//! name), refusals by reason, rows already sent and match-key coverage, and each model's
//! latest run. They agree with the run history and hold no customer value.

use crate::helpers::*;
use capi_sync::sandbox::Faults;
use sqlx::Row;

/// Leads in two stages, two of them too old (refused), then a second run that finds the
/// first rows again (already sent) and two new ones without a phone.
async fn two_runs() -> (TestDb, capi_sync::sandbox::SandboxHandle) {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 6).await;
    make_too_old(&db, 2).await;
    make_too_old(&db, 5).await;
    sqlx::query("UPDATE crm.leads SET stage = 'Qualified' WHERE id IN (3, 4)")
        .execute(&db.pool)
        .await
        .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let first = sync(&ctx, "leads").await;
    assert_eq!(first.counters.events_sent, 4, "{first:?}");
    // Rows 1 and 3 change after delivery (the ledger finds them: already sent), 7 and 8 are new.
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    sqlx::query(
        "UPDATE crm.leads SET updated_at = now(), phone = CASE WHEN id > 6 THEN NULL ELSE phone END
         WHERE id IN (1, 3, 7, 8)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.counters.events_sent, 2, "{second:?}");
    assert_eq!(second.counters.rows_already_sent, 2, "{second:?}");
    (db, sandbox)
}

#[tokio::test]
async fn daily_views_add_up_the_runs_of_each_day() {
    let (db, _sandbox) = two_runs().await;
    let row = sqlx::query(
        "SELECT runs, runs_failed, rows_read, events_sent, rows_refused, rows_already_sent, day
         FROM capi_sync.results_daily WHERE model = 'leads'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>("runs"), 2);
    assert_eq!(row.get::<i64, _>("runs_failed"), 0);
    assert_eq!(row.get::<i64, _>("rows_read"), 6 + 4);
    assert_eq!(row.get::<i64, _>("events_sent"), 6);
    assert_eq!(row.get::<i64, _>("rows_refused"), 2);
    assert_eq!(row.get::<i64, _>("rows_already_sent"), 2);
    let today: chrono::NaiveDate = sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<chrono::NaiveDate, _>("day"), today);

    let by_name: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_name, events_sent FROM capi_sync.results_daily_events
         WHERE model = 'leads' ORDER BY event_name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // First run: Lead 1 and 6, Qualified 3 and 4; second run: Lead 7 and 8.
    assert_eq!(
        by_name,
        vec![("Lead".to_string(), 4), ("Qualified".to_string(), 2)]
    );

    let refusals: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, rows_refused FROM capi_sync.results_daily_refusals WHERE model = 'leads'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(refusals, vec![("event_time_too_old".to_string(), 2)]);

    let keys: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT match_key, events_with_key, events_sent, coverage_pct::float8
         FROM capi_sync.results_daily_match_keys WHERE model = 'leads' ORDER BY match_key",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let em = keys.iter().find(|k| k.0 == "em").expect("em coverage");
    assert_eq!((em.1, em.2, em.3), (6, 6, 100.0));
    // Rows 7 and 8 lost their phone: 4 of 6 events carried one.
    let ph = keys.iter().find(|k| k.0 == "ph").expect("ph coverage");
    assert_eq!((ph.1, ph.2, ph.3), (4, 6, 66.7));
}

#[tokio::test]
async fn the_latest_run_view_shows_each_models_newest_run() {
    let (db, _sandbox) = two_runs().await;
    let runs: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT run_id, status, events_sent, rows_already_sent
         FROM capi_sync.results_latest_runs WHERE model = 'leads'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM capi_sync.runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, vec![(newest, "succeeded".to_string(), 2, 2)]);
}

#[tokio::test]
async fn the_readme_query_gives_yesterdays_conversions_by_event_name() {
    let (db, _sandbox) = two_runs().await;
    // Move the runs to yesterday, as a day later.
    sqlx::query("UPDATE capi_sync.runs SET started_at = started_at - interval '1 day'")
        .execute(&db.pool)
        .await
        .unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let query = readme
        .split("```sql\n")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .find(|q| q.contains("results_daily_events"))
        .expect("README shows a query on results_daily_events");
    let rows: Vec<(String, i64)> = sqlx::query_as(query)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("README query fails: {e}\n{query}"));
    assert_eq!(
        rows,
        vec![("Lead".to_string(), 4), ("Qualified".to_string(), 2)]
    );
}

#[tokio::test]
async fn no_view_holds_a_customer_value() {
    let (db, _sandbox) = two_runs().await;
    let views: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.views
         WHERE table_schema = 'capi_sync' AND table_name LIKE 'results%' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(views.len() >= 5, "{views:?}");
    for view in views {
        let text: Vec<String> =
            sqlx::query_scalar(&format!("SELECT v::text FROM capi_sync.{view} v"))
                .fetch_all(&db.pool)
                .await
                .unwrap();
        // The quality view fills only once Meta's scores are read (tests/integration/quality.rs).
        if view != "results_latest_quality" {
            assert!(!text.is_empty(), "{view} is empty");
        }
        for row in text {
            let lower = row.to_lowercase();
            assert!(
                !lower.contains("example.com") && !lower.contains("253-"),
                "{view} holds a customer value: {row}"
            );
        }
    }
}
