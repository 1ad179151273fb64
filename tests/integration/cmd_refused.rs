//! `capi-sync refused`: the refused rows of a model by key, event id and reason, never with
//! customer data.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn refused_lists_keys_event_ids_and_reasons_but_no_customer_data() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 3).await;
    make_too_old(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["refused", "leads"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let event_id = capi_sync::mapping::derive_event_id("leads", &["3".to_string()], "Lead");
    let row = out.stdout_line("3 ");
    assert!(
        row.contains(&event_id) && row.contains("event_time_too_old"),
        "{row}"
    );
    let lower = out.all().to_lowercase();
    assert!(
        !lower.contains("example.com") && !lower.contains("555-"),
        "{lower}"
    );
}
