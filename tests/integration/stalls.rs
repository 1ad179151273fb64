//! Runs end by their deadline whatever stalls: a warehouse connection that stops answering
//! mid-page fails the run at `service.run_deadline`, frees the model's lock, and the next run
//! delivers every row once. `/readyz` reports a run past its deadline.

use crate::helpers::*;
use crate::proxy::{Mode, Proxy};
use capi_sync::config::Config;
use capi_sync::pipeline::{RunStatus, SyncContext};
use capi_sync::sandbox::{Faults, SandboxHandle};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;

/// The leads model read in small pages and sent in small batches, so a run spans many of each.
pub fn paged_leads_model() -> String {
    LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\npage_size = 100\nbatch_size = 50",
    )
}

/// A config whose warehouse is reached through `warehouse` and whose state database is
/// reached through `state` (each `None`: directly).
pub fn proxied_config(
    db: &TestDb,
    warehouse: Option<&Proxy>,
    state: Option<&Proxy>,
    graph_url: &str,
    service_toml: &str,
    models_toml: &str,
) -> Config {
    let text = proxied_config_text(db, warehouse, state, graph_url, service_toml, models_toml);
    Config::from_toml_str(&text, std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// The TOML of [`proxied_config`].
pub fn proxied_config_text(
    db: &TestDb,
    warehouse: Option<&Proxy>,
    state: Option<&Proxy>,
    graph_url: &str,
    service_toml: &str,
    models_toml: &str,
) -> String {
    let state_url = state.map_or(db.url.clone(), |p| p.url(&db.url));
    let extra =
        format!("[state]\nurl = \"{state_url}\"\n[service]\nmetrics_addr = \"\"\n{service_toml}\n");
    let text = config_text(db, graph_url, &extra, models_toml);
    match warehouse {
        // The warehouse's URL is the first in the text.
        Some(p) => text.replacen(
            &format!("url = \"{}\"", db.url),
            &format!("url = \"{}\"", p.url(&db.url)),
            1,
        ),
        None => text,
    }
}

/// Waits (up to a minute) until `done` holds.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every one of the `rows` leads reached the sandbox exactly once, under its own derived id,
/// and no row is recorded as refused (in the state database `state`).
pub async fn assert_each_row_delivered_once(sandbox: &SandboxHandle, state: &PgPool, rows: i64) {
    let counts = event_id_counts(&sandbox.events());
    let repeated: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        repeated.is_empty(),
        "events sent more than once: {repeated:?}"
    );
    assert_each_row_delivered_under_its_id(sandbox, state, rows).await;
}

/// Every one of the `rows` leads reached the sandbox under its own derived id and no other,
/// and no row is recorded as refused (in the state database `state`).
pub async fn assert_each_row_delivered_under_its_id(
    sandbox: &SandboxHandle,
    state: &PgPool,
    rows: i64,
) {
    let counts = event_id_counts(&sandbox.events());
    let expected: HashSet<String> = (1..=rows)
        .map(|i| capi_sync::mapping::derive_event_id("leads", &[i.to_string()], "Lead"))
        .collect();
    let got: HashSet<String> = counts.into_keys().collect();
    assert_eq!(got.len(), expected.len(), "events delivered");
    assert!(
        got == expected,
        "the delivered ids are not the rows' own ids"
    );
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(state)
        .await
        .unwrap();
    assert_eq!(refused, 0, "rows refused");
}

/// The status and end time (set or not) of a run in the `runs` table.
pub async fn run_row(db: &TestDb, run_id: Option<i64>) -> (String, bool) {
    sqlx::query_as("SELECT status, finished_at IS NOT NULL FROM capi_sync.runs WHERE id = $1")
        .bind(run_id.expect("the run was recorded"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

pub async fn start_run(
    ctx: &SyncContext,
) -> tokio::task::JoinHandle<capi_sync::pipeline::RunSummary> {
    let ctx = ctx.clone();
    tokio::spawn(async move { sync(&ctx, "leads").await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_stalled_mid_read_fails_the_run_at_its_deadline_and_the_next_run_delivers_every_row_once(
) {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        3000,
        "now() - interval '1 day' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 100,
        ..Faults::default()
    })
    .await;
    let proxy = Proxy::to_postgres().await;
    let config = proxied_config(
        &db,
        Some(&proxy),
        None,
        &sandbox.base_url(),
        "run_deadline = \"4s\"\nshutdown_grace = \"20s\"",
        &paged_leads_model(),
    );
    let ctx = context(config).await;
    let run = start_run(&ctx).await;
    // A few batches in, the warehouse stops answering; the reader is a few pages ahead at most.
    wait_until("some events are sent", || sandbox.events().len() >= 200).await;
    proxy.set(Mode::Stall);
    let run = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ended instead of waiting on the stalled warehouse")
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("service.run_deadline"), "{error}");
    assert_eq!(run_row(&db, run.run_id).await, ("failed".into(), true));
    let sent_before = sandbox.events().len();
    assert!(
        sent_before < 3000,
        "the stall came too late: {sent_before} sent"
    );

    // The model is free while the warehouse is still stalled: another process takes it.
    let other = context(config_for_direct(&db, &sandbox)).await;
    let lock = other
        .state
        .try_lock_model("leads")
        .await
        .unwrap()
        .expect("the failed run released the model's lock");
    lock.release().await;

    proxy.set(Mode::Forward);
    let next = sync(&ctx, "leads").await;
    assert_eq!(next.status, RunStatus::Succeeded, "{:?}", next.error);
    assert_each_row_delivered_once(&sandbox, &db.pool, 3000).await;
}

fn config_for_direct(db: &TestDb, sandbox: &SandboxHandle) -> Config {
    proxied_config(
        db,
        None,
        None,
        &sandbox.base_url(),
        "",
        &paged_leads_model(),
    )
}

/// `/readyz` on a service whose one run drains a slow batch past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_run_past_its_deadline_until_it_ends() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        60,
        "now() - interval '1 hour'",
        "now() - interval '1 hour'",
    )
    .await;
    // Meta answers each request after 4 s (within the request timeout): the run's deadline passes while its batches wait.
    let sandbox = start_sandbox(Faults {
        slow_ms: 4_000,
        ..Faults::default()
    })
    .await;
    let config = proxied_config(
        &db,
        None,
        None,
        &sandbox.base_url(),
        "run_deadline = \"2s\"\nshutdown_grace = \"30s\"",
        // Emails only: the run reaches its batches well within its deadline.
        &paged_leads_model().replace(", phone AS ph", ""),
    );
    let ctx = context(config).await;
    let metrics = std::sync::Arc::new(capi_sync::metrics::Metrics::new(["leads"]));
    let stop = tokio_util::sync::CancellationToken::new();
    let endpoints = capi_sync::http_server::start(
        "127.0.0.1:0".parse().unwrap(),
        ctx.clone(),
        metrics,
        stop.clone(),
    )
    .await
    .unwrap();
    let readyz = format!("http://{}/readyz", endpoints.addr);
    let client = reqwest::Client::new();
    let before = client.get(&readyz).send().await.unwrap();
    assert_eq!(before.status().as_u16(), 200);

    let run = start_run(&ctx).await;
    // Polled until the run is past its deadline (it is then draining its batch for seconds).
    let mut answer = String::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client.get(&readyz).send().await.unwrap();
        if resp.status().as_u16() == 503 {
            answer = resp.text().await.unwrap();
            if answer.contains("past its deadline") {
                break;
            }
        }
        if run.is_finished() {
            let run = run.await.unwrap();
            panic!(
                "the run ended before /readyz reported it overdue (last answer: {answer}): {run:?}"
            );
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "/readyz never reported the overdue run (last answer: {answer})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answer.contains("model `leads`"), "{answer}");
    let run = run.await.unwrap();
    assert_eq!(run.counters.events_sent, 60, "{:?}", run.error);
    let after = client.get(&readyz).send().await.unwrap();
    assert_eq!(
        after.status().as_u16(),
        200,
        "the run ended; the service is ready again"
    );
    stop.cancel();
    endpoints.stopped().await;
}
