//! Answers that are not the Graph API's: a `graph_url` leading to a web server, a proxy or a
//! load balancer, a 2xx without Meta's count, a Graph code nobody classifies. Each stops the run
//! at its last acknowledged batch with nothing refused; only Meta's code 100 with an event
//! subcode refuses a row (see `sync::an_invalid_event_rejected_by_meta_is_isolated_...`).

use crate::helpers::*;
use capi_sync::pipeline::{RunStatus, RunSummary};
use capi_sync::sandbox::{Faults, Misanswer, SandboxHandle};
use std::collections::HashMap;
use std::process::Command;

/// The binary with `args`, none of the environment's `CAPI_SYNC_*` settings.
fn bin(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capi-sync"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CAPI_SYNC_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd
}

const PIXEL_PATH: &str = "/v27.0/123456789012345/events";

async fn refused_rows(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The delivery ledger: event id per row key.
async fn ledger(db: &TestDb) -> HashMap<String, Vec<String>> {
    sqlx::query_as::<_, (String, Vec<String>)>(
        "SELECT event_id, row_key FROM capi_sync.deliveries WHERE model = 'leads'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn last_run_row(db: &TestDb) -> (String, String) {
    sqlx::query_as(
        "SELECT status, coalesce(error, '') FROM capi_sync.runs ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// The leads model in batches of `batch`, one request in flight.
async fn context_in_batches(
    db: &TestDb,
    sandbox: &SandboxHandle,
    batch: usize,
) -> capi_sync::pipeline::SyncContext {
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        &format!("cursor = \"updated_at\"\nbatch_size = {batch}"),
    );
    let mut cfg = config(db, &sandbox.base_url(), &models);
    cfg.meta.concurrency = 1;
    cfg.meta.max_concurrency = 1;
    context(cfg).await
}

/// The failure names the status and the path and holds neither the token nor a customer value.
fn assert_names_the_answer_only(run: &RunSummary, status: u16, what: &str) {
    let error = run
        .error
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no error"));
    assert!(error.contains(&format!("HTTP {status}")), "{what}: {error}");
    assert!(error.contains(PIXEL_PATH), "{what}: {error}");
    assert!(error.contains("nothing was refused"), "{what}: {error}");
    assert!(!error.contains(TOKEN), "{what}: {error}");
    let lower = error.to_lowercase();
    for customer in ["example.com", "person.", "(650)", "253-0", "16502530"] {
        assert!(!lower.contains(customer), "{what}: {error}");
    }
}

#[tokio::test]
async fn an_answer_not_from_the_graph_api_fails_the_first_batch_refusing_nothing_and_keeping_no_cursor(
) {
    let cases = [
        (Misanswer::Html404, 404, "404 Not Found"),
        (Misanswer::MethodNotAllowed, 405, "405 Not Allowed"),
        (
            Misanswer::PayloadTooLarge,
            413,
            "413 Request Entity Too Large",
        ),
        (Misanswer::Redirect, 302, "302 Found"),
        (Misanswer::JunkOk, 200, "\"OK\""),
        (Misanswer::OkWithoutCount, 200, "success"),
        (Misanswer::Oversized, 200, "1 MiB"),
        (Misanswer::UnknownCode, 400, "12345"),
        (Misanswer::BareInvalidParameter, 400, "code 100:"),
    ];
    // Nothing a failed case does may stay behind, so one database serves every case.
    let db = TestDb::new().await;
    seed_recent_leads(&db, 30).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context_in_batches(&db, &sandbox, 10).await;
    for (answer, status, shown) in cases {
        let what = format!("{answer:?}");
        sandbox.misanswer(answer, 0, u64::MAX);
        let before = sandbox.stats().misanswered;

        let run = sync(&ctx, "leads").await;
        assert_eq!(run.status, RunStatus::Failed, "{what}: {:?}", run.error);
        assert_names_the_answer_only(&run, status, &what);
        assert!(
            run.error.as_deref().unwrap().contains(shown),
            "{what}: {:?}",
            run.error
        );
        // One request for the batch: none of these is retried, none is bisected (ten events
        // would take 19 requests). The next batch may already be on its way when the first
        // answer comes back, hence up to two answers.
        assert_eq!(run.counters.requests, 1, "{what}");
        assert_eq!(run.counters.retries, 0, "{what}");
        let answered = sandbox.stats().misanswered - before;
        assert!((1..=2).contains(&answered), "{what}: {answered} requests");
        assert!(run.counters.refused_by_reason.is_empty(), "{what}");
        assert_eq!(refused_rows(&db).await, 0, "{what}");
        assert_eq!(cursor_key(&db.pool, "leads").await, None, "{what}");
        assert!(ledger(&db).await.is_empty(), "{what}");
        let (status_text, error) = last_run_row(&db).await;
        assert_eq!(status_text, "failed", "{what}");
        assert!(!error.contains(TOKEN), "{what}: {error}");
    }
    assert_eq!(sandbox.stats().events_accepted, 0);
}

#[tokio::test]
async fn a_misanswer_after_two_batches_keeps_the_cursor_at_the_last_acknowledged_batch() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 30).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context_in_batches(&db, &sandbox, 10).await;
    sandbox.misanswer(Misanswer::Html404, 2, u64::MAX);

    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed, "{:?}", run.error);
    assert_names_the_answer_only(&run, 404, "404 after two batches");
    assert_eq!(run.counters.events_sent, 20);
    assert_eq!(refused_rows(&db).await, 0);
    assert_eq!(
        cursor_key(&db.pool, "leads").await,
        Some(vec!["20".to_string()])
    );
    assert_eq!(ledger(&db).await.len(), 20);
}

#[tokio::test]
async fn a_load_balancers_502_page_is_retried_then_fails_the_run_refusing_nothing() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 5).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context_in_batches(&db, &sandbox, 10).await;
    sandbox.misanswer(Misanswer::BadGatewayHtml, 0, u64::MAX);

    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Failed, "{:?}", run.error);
    // max_attempts = 2 in the test config: the page was asked for twice.
    assert_eq!(run.counters.requests, 2);
    assert_eq!(run.counters.retries, 1);
    let error = run.error.as_deref().unwrap();
    assert!(
        error.contains("HTTP 502") && error.contains(PIXEL_PATH),
        "{error}"
    );
    assert!(error.contains("502 Bad Gateway"), "{error}");
    assert_eq!(refused_rows(&db).await, 0);
    assert_eq!(cursor_key(&db.pool, "leads").await, None);
}

#[tokio::test]
async fn after_the_graph_stand_in_answered_404_html_for_a_while_every_row_goes_once_under_its_one_id(
) {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 400).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\npage_size = 120\nbatch_size = 25",
    );
    let mut cfg = config(&db, &sandbox.base_url(), &models);
    cfg.meta.concurrency = 4;
    cfg.meta.max_concurrency = 4;
    let ctx = context(cfg).await;
    // A few batches go through, then the endpoint answers 404 pages for a while (requests in
    // flight meanwhile may still be acknowledged), then it is the Graph API again.
    sandbox.misanswer(Misanswer::Html404, 3, 6);

    let mut runs = vec![sync(&ctx, "leads").await];
    assert_eq!(runs[0].status, RunStatus::Failed, "{:?}", runs[0].error);
    assert_names_the_answer_only(&runs[0], 404, "first run");
    while runs.last().unwrap().status != RunStatus::Succeeded {
        assert!(
            runs.len() < 8,
            "never recovered: {:?}",
            runs.last().unwrap().error
        );
        let run = sync(&ctx, "leads").await;
        assert!(
            run.status == RunStatus::Succeeded || run.status == RunStatus::Failed,
            "{:?}",
            run.status
        );
        runs.push(run);
    }
    assert_eq!(sandbox.stats().misanswered, 6);
    assert!(runs.iter().all(|r| r.counters.refused_by_reason.is_empty()));
    assert_eq!(refused_rows(&db).await, 0);

    // Every row delivered once, under the one id the ledger holds for it.
    let counts = event_id_counts(&sandbox.events());
    let ledger = ledger(&db).await;
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|&c| c == 1), "an event went twice");
    assert_eq!(ledger.len(), 400);
    let mut keys: Vec<i64> = Vec::new();
    for (event_id, key) in &ledger {
        assert_eq!(counts.get(event_id), Some(&1), "{event_id} of row {key:?}");
        assert_eq!(
            *event_id,
            capi_sync::mapping::derive_event_id("leads", key, "Lead")
        );
        keys.push(key[0].parse().unwrap());
    }
    keys.sort_unstable();
    assert_eq!(keys, (1..=400).collect::<Vec<_>>());
    assert_eq!(
        cursor_key(&db.pool, "leads").await,
        Some(vec!["400".to_string()])
    );
}

#[tokio::test]
async fn the_sync_command_exits_1_when_graph_url_answers_an_html_page() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 5).await;
    let sandbox = start_sandbox(Faults::default()).await;
    sandbox.misanswer(Misanswer::Html404, 0, u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capi-sync.toml");
    std::fs::write(
        &path,
        config_text(&db, &sandbox.base_url(), "", LEADS_MODEL),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        bin(&["--config", path.to_str().unwrap(), "sync", "leads"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    let line = all
        .lines()
        .find(|l| l.starts_with("capi-sync: model leads failed"))
        .unwrap_or_else(|| panic!("no failure line in\n{all}"));
    assert!(
        line.contains("HTTP 404") && line.contains(PIXEL_PATH),
        "{line}"
    );
    assert!(line.contains("meta.graph_url"), "{line}");
    assert!(!all.contains(TOKEN), "{all}");
    assert_eq!(refused_rows(&db).await, 0);
}

#[tokio::test]
async fn check_reports_a_graph_url_that_answers_an_html_page_and_exits_2() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    sandbox.misanswer(Misanswer::Html404, 0, u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capi-sync.toml");
    std::fs::write(
        &path,
        config_text(&db, &sandbox.base_url(), "", LEADS_MODEL),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        bin(&["--config", path.to_str().unwrap(), "check"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{all}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("leads: pixel 123456789012345: error"))
        .unwrap_or_else(|| panic!("no pixel error in\n{all}"));
    assert!(
        line.contains("does not answer like the Graph API"),
        "{line}"
    );
    assert!(
        line.contains("HTTP 404") && line.contains("/v27.0/123456789012345"),
        "{line}"
    );
    assert!(line.contains("404 Not Found"), "{line}");
    assert!(!all.contains(TOKEN), "{all}");
    assert_eq!(sandbox.stats().events_accepted, 0);
}

#[test]
fn a_plain_http_graph_url_to_another_host_is_a_config_error_naming_the_key() {
    let text = |graph_url: &str| {
        format!(
            "[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\ngraph_url = \"{graph_url}\"\n"
        )
    };
    let err = capi_sync::config::Config::from_toml_str(
        &text("http://graph.facebook.com"),
        std::path::Path::new("."),
    )
    .expect_err("plain http to Meta");
    let msg = err.to_string();
    assert!(
        msg.contains("meta.graph_url") && msg.contains("https"),
        "{msg}"
    );
    for ok in [
        "https://graph.facebook.com",
        "http://127.0.0.1:8089",
        "http://localhost:1",
    ] {
        capi_sync::config::Config::from_toml_str(&text(ok), std::path::Path::new("."))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}
