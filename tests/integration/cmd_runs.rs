//! `capi-sync runs`: the recent runs of a model, newest first, with their counts.

use crate::helpers::*;

#[tokio::test]
async fn runs_lists_recent_runs_newest_first_with_their_counts() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sync(&ctx, "leads").await;
    seed_leads(&db.pool, 1, "now()", "now() - interval '1 hour'").await;
    sync(&ctx, "leads").await;
    let cfg = config_file(&db, &sandbox.base_url(), LEADS_MODEL, "");
    let out = cli(&cfg.path, &["runs", "leads", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    let sent: Vec<i64> = runs
        .iter()
        .map(|r| r["events_sent"].as_i64().unwrap())
        .collect();
    assert_eq!(sent, vec![1, 3]);
    let text = cli(&cfg.path, &["runs", "leads"]).await;
    assert!(text.stdout.contains("RUN  STARTED"), "{}", text.stdout);
}
