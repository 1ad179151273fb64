//! Whether a model has ever delivered is read from `ledger_models`, marked by every ledger
//! write, not by scanning the ledger: a model without deliveries starts its first backfill
//! without per-chunk lookups whatever other models' ledgers hold, and a model with deliveries
//! always looks its rows up.

use crate::helpers::*;

#[tokio::test]
async fn every_ledger_write_marks_its_model_and_only_its_model() {
    let (db, sandbox) = leads_and_sandbox(4).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    assert!(!ctx.state.has_deliveries("leads").await.unwrap());
    sync(&ctx, "leads").await;
    assert!(ctx.state.has_deliveries("leads").await.unwrap());
    // Another model's check does not see the first one's rows.
    assert!(!ctx.state.has_deliveries("orders").await.unwrap());
    let marked: Vec<String> = sqlx::query_scalar("SELECT model FROM capi_sync.ledger_models")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(marked, vec!["leads".to_string()]);
}

#[tokio::test]
async fn rows_read_again_after_the_first_run_are_found_in_the_ledger() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let first = sync(&ctx, "leads").await;
    assert_eq!(first.counters.events_sent, 3);
    // The rows change and are read again: the ledger, marked by the first run, knows them.
    change_every_lead(&db).await;
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.counters.events_sent, 0, "{second:?}");
    assert_eq!(second.counters.rows_already_sent, 3, "{second:?}");
    assert_eq!(sandbox.events().len(), 3, "nothing was sent twice");
}
