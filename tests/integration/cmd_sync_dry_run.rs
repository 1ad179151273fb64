//! `capi-sync sync --dry-run`: the run reads and maps everything but sends nothing, moves
//! no cursor and records no run.

use crate::helpers::*;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunStatus};

async fn scalar_i64(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn a_dry_run_sends_nothing_moves_no_cursor_and_records_no_run() {
    let (db, sandbox) = leads_and_sandbox(5).await;
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
    let (db, sandbox) = leads_and_sandbox(2).await;
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
