use crate::helpers::*;
use capi_sync::pipeline::{sync_model_once, RunMode, RunOptions, RunStatus};
use capi_sync::sandbox::Faults;

fn with_lookback(lookback: &str) -> String {
    LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        &format!("cursor = \"updated_at\"\nlookback = \"{lookback}\""),
    )
}

#[tokio::test]
async fn lookback_catches_a_row_committed_late_with_an_earlier_cursor_value() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        10,
        "now() - interval '1 hour'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), &with_lookback("2h"))).await;
    assert_eq!(sync(&ctx, "leads").await.counters.events_sent, 10);

    // A long transaction commits a row stamped before the stored cursor.
    seed_leads(
        &db.pool,
        1,
        "now() - interval '90 minutes'",
        "now() - interval '2 hours'",
    )
    .await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 1);
    // The ten rows re-read from the window were already delivered and are not sent again.
    assert_eq!(run.counters.rows_already_sent, 10);
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 11);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test]
async fn without_lookback_a_late_row_behind_the_cursor_is_not_read() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        3,
        "now() - interval '1 hour'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    seed_leads(
        &db.pool,
        1,
        "now() - interval '90 minutes'",
        "now() - interval '2 hours'",
    )
    .await;
    assert_eq!(sync(&ctx, "leads").await.counters.rows_read, 0);
}

#[tokio::test]
async fn lookback_re_reads_do_not_move_the_cursor_back_or_recount_refusals() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        4,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    sqlx::query("UPDATE crm.leads SET happened_at = now() - interval '9 days' WHERE id = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), &with_lookback("2h"))).await;
    let first = sync(&ctx, "leads").await;
    assert_eq!(first.counters.rows_refused, 1);
    let cursor_before = cursor_key(&db.pool, "leads")
        .await
        .expect("a stored cursor");
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.counters.rows_read, 4);
    assert_eq!(second.counters.rows_refused, 0);
    assert_eq!(second.counters.events_sent, 0);
    let cursor_after = cursor_key(&db.pool, "leads")
        .await
        .expect("a stored cursor");
    assert_eq!(cursor_before, cursor_after);
    assert_eq!(cursor_after, vec!["4".to_string()]);
}

#[tokio::test]
async fn retry_sends_refused_rows_that_were_fixed_and_keeps_the_others() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        5,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    sqlx::query("UPDATE crm.leads SET email = NULL, phone = NULL WHERE id IN (2, 4)")
        .execute(&db.pool)
        .await
        .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let first = sync(&ctx, "leads").await;
    assert_eq!(
        first
            .counters
            .refused_by_reason
            .get("no_customer_information"),
        Some(&2)
    );
    let cursor_before = cursor_key(&db.pool, "leads")
        .await
        .expect("a stored cursor");

    // The data team fixes row 2 (without touching updated_at); row 4 stays broken.
    sqlx::query("UPDATE crm.leads SET email = 'fixed@example.com' WHERE id = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    let model = ctx.config.model("leads").unwrap().clone();
    let retry = sync_model_once(
        &ctx,
        &model,
        &RunOptions {
            trigger: "retry".into(),
            mode: RunMode::RetryRefused,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(retry.status, RunStatus::Succeeded, "{:?}", retry.error);
    assert_eq!(retry.counters.rows_requested, 2);
    assert_eq!(retry.counters.events_sent, 1);
    assert_eq!(retry.counters.rows_refused, 1);

    let refused: Vec<Vec<String>> =
        sqlx::query_scalar("SELECT row_key FROM capi_sync.refused_rows")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(refused, vec![vec!["4".to_string()]]);
    let cursor_after = cursor_key(&db.pool, "leads")
        .await
        .expect("a stored cursor");
    assert_eq!(
        cursor_before, cursor_after,
        "a retry never moves the cursor"
    );
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 4);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test]
async fn lookback_on_an_integer_cursor_is_a_clear_error() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = with_lookback("1h").replace(
        "cursor = \"updated_at\"",
        "cursor = \"id\"\nignore_columns = [\"updated_at\"]",
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("lookback"));
}

#[tokio::test]
async fn a_run_left_running_by_a_dead_process_is_marked_interrupted_by_the_next_run() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let dead = ctx.state.start_run("leads", "schedule").await.unwrap();
    assert_eq!(sync(&ctx, "leads").await.status, RunStatus::Succeeded);
    let status: String = sqlx::query_scalar("SELECT status FROM capi_sync.runs WHERE id = $1")
        .bind(dead)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "interrupted");
}

#[tokio::test]
async fn lookback_does_not_resend_rows_meta_rejected() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        6,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    let bad = capi_sync::mapping::derive_event_id("leads", &["3".to_string()], "Lead");
    let sandbox = start_sandbox(Faults {
        reject_event_ids: [bad.clone()].into_iter().collect(),
        ..Default::default()
    })
    .await;
    let ctx = context(config(&db, &sandbox.base_url(), &with_lookback("2h"))).await;
    let first = sync(&ctx, "leads").await;
    assert_eq!(
        first.counters.refused_by_reason.get("rejected_by_meta"),
        Some(&1)
    );
    let requests_before = sandbox.stats().requests;
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(second.counters.events_sent, 0);
    assert_eq!(second.counters.rows_refused, 0);
    assert_eq!(
        sandbox.stats().requests,
        requests_before,
        "nothing was sent again"
    );
}

#[tokio::test]
async fn pruning_removes_ledger_entries_older_than_the_retention_only() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 3, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    sqlx::query("UPDATE capi_sync.deliveries SET delivered_at = now() - interval '15 days' WHERE row_key = ARRAY['1']")
        .execute(&db.pool)
        .await
        .unwrap();
    let pruned = ctx
        .state
        .prune_ledger(std::time::Duration::from_secs(14 * 86_400))
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 2);
}

#[tokio::test]
async fn a_hung_graph_endpoint_times_out_instead_of_hanging_the_run() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 3, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 5_000,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&db, &sandbox.base_url(), LEADS_MODEL);
    cfg.meta.request_timeout = std::time::Duration::from_millis(300);
    cfg.meta.max_attempts = 1;
    let ctx = context(cfg).await;
    let started = std::time::Instant::now();
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("timed out"));
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let cursor = cursor_key(&db.pool, "leads").await;
    assert_eq!(
        cursor, None,
        "nothing was acknowledged, so the cursor did not move"
    );
}

#[tokio::test]
async fn a_run_past_its_deadline_stops_at_the_last_acknowledged_batch() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        50,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let mut cfg = config(&db, &sandbox.base_url(), LEADS_MODEL);
    cfg.service.run_deadline = std::time::Duration::ZERO;
    let ctx = context(cfg).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("deadline"));
    assert!(sandbox.events().is_empty());
}
