use crate::helpers::*;
use capi_sync::pipeline::RunStatus;
use capi_sync::sandbox::Faults;
use sqlx::Row;

#[tokio::test]
async fn first_run_sends_every_eligible_row_once_and_second_run_sends_nothing() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        250,
        "now() - interval '1 hour'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;

    let first = sync(&ctx, "leads").await;
    assert_eq!(first.status, RunStatus::Succeeded, "{:?}", first.error);
    assert_eq!(first.counters.events_sent, 250);
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.status, RunStatus::Succeeded);
    assert_eq!(second.counters.rows_read, 0);
    assert_eq!(second.counters.events_sent, 0);

    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 250);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test]
async fn events_carry_hashed_customer_data_and_crm_fields() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 1, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let events = sandbox.events();
    let e = &events[0];
    assert_eq!(e["action_source"], "system_generated");
    assert_eq!(e["custom_data"]["event_source"], "crm");
    assert_eq!(e["custom_data"]["lead_event_source"], "TestCRM");
    // ' Person.1@Example.com ' → trimmed, lowercased, SHA-256.
    assert_eq!(
        e["user_data"]["em"],
        capi_sync::normalize::sha256_hex("person.1@example.com")
    );
    assert_eq!(
        e["event_id"],
        capi_sync::mapping::derive_event_id("leads", &["1".to_string()], "Lead")
    );
}

#[tokio::test]
async fn inserted_rows_and_new_stages_go_in_the_next_run() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        10,
        "now() - interval '1 hour'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;

    seed_leads(&db.pool, 3, "now()", "now() - interval '5 minutes'").await;
    sqlx::query("UPDATE crm.leads SET stage = 'Qualified', updated_at = now() WHERE id IN (1, 2)")
        .execute(&db.pool)
        .await
        .unwrap();
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.counters.rows_read, 5);
    assert_eq!(run.counters.events_sent, 5);
    let events = sandbox.events();
    assert_eq!(events.len(), 15);
    let qualified: Vec<_> = events
        .iter()
        .filter(|e| e["event_name"] == "Qualified")
        .collect();
    assert_eq!(qualified.len(), 2);
    // A new stage is a new event with a new id.
    let ids = event_id_counts(&events);
    assert_eq!(ids.len(), 15);
}

#[tokio::test]
async fn a_row_whose_other_fields_change_keeps_its_id_and_is_not_resent() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        4,
        "now() - interval '1 hour'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    // Same stage, new email: per DECISIONS the delivered event keeps its id; Meta cannot update
    // it and a new id would double-count the conversion.
    sqlx::query(
        "UPDATE crm.leads SET email = 'changed@example.com', updated_at = now() WHERE id = 3",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.counters.rows_read, 1);
    assert_eq!(run.counters.events_sent, 0);
    assert_eq!(run.counters.rows_already_sent, 1);
    assert_eq!(sandbox.events().len(), 4);
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM capi_sync.deliveries WHERE changed_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test]
async fn rows_sharing_one_cursor_value_are_each_sent_once_across_pages_and_runs() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        2500,
        "timestamptz '2026-01-01 00:00:00+00'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\npage_size = 300\nbatch_size = 200",
    );
    let mut cfg = config(&db, &sandbox.base_url(), &models);
    cfg.meta.concurrency = 1;
    cfg.meta.max_concurrency = 1;
    let ctx = context(cfg).await;

    // The first run breaks off after 4 acknowledged requests; the second finishes.
    sandbox.fail_after(4);
    let first = sync(&ctx, "leads").await;
    assert_eq!(first.status, RunStatus::Failed);
    assert_eq!(first.counters.events_sent, 800);
    sandbox.fail_after(u64::MAX);
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.status, RunStatus::Succeeded, "{:?}", second.error);
    assert_eq!(second.counters.events_sent, 1700);

    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 2500);
    assert!(counts.values().all(|&c| c == 1), "an event was sent twice");
}

#[tokio::test]
async fn a_row_older_than_the_window_is_refused_and_later_rows_still_go() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        5,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    sqlx::query("UPDATE crm.leads SET happened_at = now() - interval '9 days' WHERE id = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.counters.events_sent, 4);
    assert_eq!(
        run.counters.refused_by_reason.get("event_time_too_old"),
        Some(&1)
    );

    let row = sqlx::query("SELECT row_key, reason, detail, event_id FROM capi_sync.refused_rows WHERE model = 'leads'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<Vec<String>, _>(0), vec!["2".to_string()]);
    assert_eq!(row.get::<String, _>(1), "event_time_too_old");
    assert!(row.get::<String, _>(2).contains("7 days"));
    assert!(row.get::<Option<String>, _>(3).is_some());
    // The cursor moved past the refused row and the rows after it.
    let cursor = cursor_key(&db.pool, "leads")
        .await
        .expect("a stored cursor");
    assert_eq!(cursor, vec!["5".to_string()]);
}

/// The next run reads the model's refusals into its filter: the fixed row it delivers loses
/// its refusal, the rows it delivers beside it were never refused.
#[tokio::test]
async fn a_refused_row_fixed_later_is_delivered_by_the_next_run_and_no_longer_refused() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        5,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    let too_old = "UPDATE crm.leads SET happened_at = now() - interval '9 days' WHERE id IN (2, 3)";
    sqlx::query(too_old).execute(&db.pool).await.unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.counters.events_sent, 3);

    // Row 2 is fixed; rows 4 and 5 change too. Row 3 stays too old.
    sqlx::query(
        "UPDATE crm.leads SET updated_at = now(),
                happened_at = CASE WHEN id = 2 THEN now() - interval '2 hours' ELSE happened_at END
         WHERE id IN (2, 4, 5)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(
        run.counters.events_sent, 1,
        "row 2; rows 4 and 5 were sent before"
    );
    let left: Vec<Vec<String>> = sqlx::query_scalar("SELECT row_key FROM capi_sync.refused_rows")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![vec!["3".to_string()]]);
}

#[tokio::test]
async fn an_http_failure_mid_run_leaves_the_cursor_at_the_last_acknowledged_batch() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        500,
        "now() - interval '1 hour' + g * interval '1 millisecond'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\nbatch_size = 100",
    );
    let mut cfg = config(&db, &sandbox.base_url(), &models);
    cfg.meta.concurrency = 1;
    cfg.meta.max_concurrency = 1;
    let ctx = context(cfg).await;

    sandbox.fail_after(2);
    let failed = sync(&ctx, "leads").await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(failed
        .error
        .as_deref()
        .unwrap_or("")
        .contains("resumes at the last acknowledged batch"));
    let cursor = cursor_key(&db.pool, "leads")
        .await
        .expect("a stored cursor");
    assert_eq!(cursor, vec!["200".to_string()]);
    let status: String =
        sqlx::query_scalar("SELECT status FROM capi_sync.runs ORDER BY id LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");

    sandbox.fail_after(u64::MAX);
    let resumed = sync(&ctx, "leads").await;
    assert_eq!(resumed.status, RunStatus::Succeeded);
    assert_eq!(resumed.counters.events_sent, 300);
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 500);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test]
async fn a_second_process_on_the_same_model_skips_while_the_lock_is_held() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 3, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let held = ctx
        .state
        .try_lock_model("leads")
        .await
        .unwrap()
        .expect("lock free");
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Skipped);
    assert!(sandbox.events().is_empty());
    held.release().await;
    assert_eq!(sync(&ctx, "leads").await.counters.events_sent, 3);
}

#[tokio::test]
async fn a_model_query_that_writes_fails_the_run_as_read_only_and_writes_nothing() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    sqlx::query("CREATE SEQUENCE crm.s")
        .execute(&db.pool)
        .await
        .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "FROM crm.leads\"",
        "FROM crm.leads WHERE nextval('crm.s') > 0\"",
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.unwrap().contains("read-only"),
        "expected a read-only transaction error"
    );
    let next: i64 = sqlx::query_scalar("SELECT nextval('crm.s')")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(next, 1, "the model's query must not have written");
}

#[tokio::test]
async fn a_slow_model_query_hits_the_statement_timeout() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "FROM crm.leads\"",
        "FROM crm.leads WHERE pg_sleep(3) IS NOT NULL\"",
    );
    let mut cfg = config(&db, &sandbox.base_url(), &models);
    cfg.warehouse.statement_timeout = std::time::Duration::from_millis(300);
    let ctx = context(cfg).await;
    let started = std::time::Instant::now();
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("statement timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

/// One batch of 64 leads, the event of row `bad_row` rejected by Meta, sent with `in_flight`
/// requests in flight (fixed) to a sandbox answering after `slow_ms`: the run, the sandbox,
/// the database and the bad event's id, with every other event delivered.
async fn sync_64_leads_rejecting(
    bad_row: &str,
    in_flight: usize,
    slow_ms: u64,
) -> (
    capi_sync::pipeline::RunSummary,
    capi_sync::sandbox::SandboxHandle,
    TestDb,
    String,
) {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        64,
        "now() - interval '1 hour' + g * interval '1 second'",
        "now() - interval '2 hours'",
    )
    .await;
    let bad = capi_sync::mapping::derive_event_id("leads", &[bad_row.to_string()], "Lead");
    let sandbox = start_sandbox(Faults {
        reject_event_ids: [bad.clone()].into_iter().collect(),
        slow_ms,
        ..Default::default()
    })
    .await;
    let mut cfg = config(&db, &sandbox.base_url(), LEADS_MODEL);
    cfg.meta.concurrency = in_flight;
    cfg.meta.max_concurrency = in_flight;
    let ctx = context(cfg).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 63);
    assert_eq!(
        run.counters.refused_by_reason.get("rejected_by_meta"),
        Some(&1)
    );
    assert!(!event_id_counts(&sandbox.events()).contains_key(&bad));
    (run, sandbox, db, bad)
}

#[tokio::test]
async fn an_invalid_event_rejected_by_meta_is_isolated_and_the_rest_delivered() {
    let (run, _sandbox, db, bad) = sync_64_leads_rejecting("17", 1, 0).await;
    // 1 whole-batch request, then a bisection down to the bad event: about 2*log2(64).
    assert!(
        run.counters.requests <= 1 + 2 * 6,
        "requests = {}",
        run.counters.requests
    );
    let (reason, code): (String, Option<i32>) =
        sqlx::query_as("SELECT reason, meta_code FROM capi_sync.refused_rows WHERE event_id = $1")
            .bind(&bad)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(reason, "rejected_by_meta");
    assert_eq!(code, Some(100));
}

#[tokio::test]
async fn a_half_is_not_sent_whole_when_its_other_half_was_accepted() {
    // The batch's last event: every first half is accepted, so every second half holds it.
    // One request in flight: no slot is free to send pieces at once, so the batch halves.
    let (run, sandbox, _db, _bad) = sync_64_leads_rejecting("64", 1, 0).await;
    // The whole batch, the six first halves (32, 16, 8, 4, 2, 1 events) and the bad event
    // alone; sending each second half whole as well would take six more.
    assert_eq!(run.counters.requests, 8);
    assert_eq!(sandbox.stats().rejected_requests, 2);
    assert_eq!(sandbox.stats().max_in_flight, 1);
}

#[tokio::test]
async fn a_rejected_batch_sends_its_pieces_at_once_on_the_free_slots() {
    // Four requests in flight and this one batch holding one: each rejected part is cut in
    // four pieces sent together. 64 -> 16 -> 4 -> 1 events: three rounds of four requests
    // after the whole, where halves take six rounds. The sandbox answers after 200 ms, so the
    // four pieces of a round are answered together.
    let (run, sandbox, _db, _bad) = sync_64_leads_rejecting("17", 4, 200).await;
    assert_eq!(run.counters.requests, 1 + 3 * 4);
    let stats = sandbox.stats();
    // The whole, then the rejected piece of each round (rows 17-32, 17-20, 17).
    assert_eq!(stats.rejected_requests, 4);
    // Never more than the pixel's limit.
    assert_eq!(stats.max_in_flight, 4);
}

#[tokio::test]
async fn a_column_that_maps_to_nothing_fails_the_run_naming_model_and_column() {
    let db = TestDb::new().await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace("email AS em,", "email AS em, phone AS mobile_number,");
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed);
    let e = run.error.unwrap();
    assert!(
        e.contains("mobile_number") && e.contains("ignore_columns"),
        "{e}"
    );
    assert!(sandbox.events().is_empty());
}
