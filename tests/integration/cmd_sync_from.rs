//! `capi-sync sync --from`: a backfill of one model from a cursor value, for rows that arrived
//! behind the cursor; the ledger keeps delivered events from going twice.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn sync_from_backfills_rows_that_arrived_behind_the_cursor() {
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    seed_recent_leads(&db, 4).await;
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
    let (db, sandbox) = leads_and_sandbox(2).await;
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
    let (db, sandbox) = leads_and_sandbox(3).await;
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
async fn sync_from_with_no_model_named_among_several_exits_2_asking_for_one() {
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
