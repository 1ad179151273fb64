//! `capi-sync preview`: the next events as they would be sent (hashed), or the reason a row
//! would be refused, starting after the cursor; nothing is sent.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn preview_prints_the_next_events_hashed_and_sends_nothing() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "leads", "--limit", "2"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let hashed = capi_sync::normalize::sha256_hex("person.1@example.com");
    assert!(out.stdout.contains(&hashed), "{}", out.stdout);
    assert!(out.stdout.contains("row 1 ") && out.stdout.contains("row 2 "));
    assert!(!out.stdout.contains("row 3 "), "limit 2 shows 2 rows");
    assert!(!out.all().to_lowercase().contains("person.1@example.com"));
    assert_eq!(sandbox.stats().requests, 0);
    assert!(!state_table_exists(&db).await);
}

#[tokio::test]
async fn preview_shows_the_refusal_reason_of_a_row_that_would_be_refused() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 3).await;
    make_too_old(&db, 2).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "leads"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let line = out.stdout_line("row 2 ");
    assert!(line.contains("refused, event_time_too_old"), "{line}");
}

#[tokio::test]
async fn preview_starts_after_the_cursor() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    seed_leads(&db.pool, 2, "now()", "now() - interval '1 hour'").await;
    let state = capi_sync::commands::read_only_state(&ctx.config)
        .await
        .unwrap();
    let model = ctx.config.model("leads").unwrap();
    let preview = capi_sync::commands::preview::build(&ctx.warehouse, state.as_ref(), model, 10)
        .await
        .unwrap()
        .unwrap();
    let keys: Vec<Vec<String>> = preview
        .rows
        .iter()
        .map(|r| match r {
            capi_sync::commands::preview::RowPreview::Send { key, .. } => key.clone(),
            other => panic!("expected events to send, got {other:?}"),
        })
        .collect();
    assert_eq!(keys, vec![vec!["4".to_string()], vec!["5".to_string()]]);
}

#[tokio::test]
async fn preview_json_is_one_document_with_an_outcome_per_row() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 2).await;
    make_too_old(&db, 1).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "leads", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    let outcomes: Vec<&str> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["refused", "send"]);
    assert_eq!(doc["rows"][1]["event"]["action_source"], "system_generated");
}

#[tokio::test]
async fn preview_of_a_model_whose_columns_do_not_map_exits_2_and_points_at_check() {
    let (db, sandbox) = leads_and_sandbox(2).await;
    let models = LEADS_MODEL.replace("email AS em,", "email AS mail,");
    let cfg = config_file(&db, &sandbox.base_url(), &models, "");
    let out = cli(&cfg.path, &["preview", "leads"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("column `mail`") && out.stderr.contains("capi-sync check leads"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_unknown_model_name_is_a_config_error_listing_the_models() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["preview", "lead"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("no model named `lead`") && out.stderr.contains("models: leads"),
        "{}",
        out.stderr
    );
}
