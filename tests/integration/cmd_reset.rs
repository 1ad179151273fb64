//! `capi-sync reset`: moves a model's cursor back (to a value or to the start) after asking,
//! and says up front how many rows Meta's window will refuse.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn reset_without_yes_and_without_a_terminal_changes_nothing_and_exits_2() {
    let (db, sandbox) = leads_and_sandbox(3).await;
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
    let (db, sandbox) = leads_and_sandbox(4).await;
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
    let (db, sandbox) = leads_and_sandbox(2).await;
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
    seed_recent_leads(&db, 5).await;
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
