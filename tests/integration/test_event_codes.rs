//! Meta's test event codes: from `sync --test-event-code` or from the model's setting, they
//! reach the Graph API with the events.

use crate::helpers::*;

#[tokio::test]
async fn the_test_event_code_flag_reaches_meta() {
    let (db, sandbox) = leads_and_sandbox(2).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(
        &cfg.path,
        &["sync", "leads", "--test-event-code", "TEST4242"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(sandbox.stats().events_accepted, 2);
    assert_eq!(
        sandbox.stats().last_test_event_code.as_deref(),
        Some("TEST4242")
    );
}

#[tokio::test]
async fn a_models_test_event_code_is_sent_without_the_flag() {
    let (db, sandbox) = leads_and_sandbox(2).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\ntest_event_code = \"MODEL77\"",
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    sync(&ctx, "leads").await;
    assert_eq!(
        sandbox.stats().last_test_event_code.as_deref(),
        Some("MODEL77")
    );
}
