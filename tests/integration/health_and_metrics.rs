//! The service's `/healthz`, `/readyz` and `/metrics`, over real HTTP: what they answer and
//! what the metrics count.

use crate::helpers::*;
use capi_sync::metrics::Metrics;
use capi_sync::sandbox::Faults;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Serves the endpoints of `ctx` with `metrics` on a free port: their base URL, and the token
/// that stops them.
async fn serve(
    ctx: &capi_sync::pipeline::SyncContext,
    metrics: Arc<Metrics>,
) -> (String, CancellationToken) {
    let stop = CancellationToken::new();
    let endpoints = capi_sync::http_server::start(
        "127.0.0.1:0".parse().unwrap(),
        ctx.clone(),
        metrics,
        stop.clone(),
    )
    .await
    .unwrap();
    (format!("http://{}", endpoints.addr), stop)
}

/// One scheduled run of the `leads` model, counted in fresh metrics.
async fn sync_counted(ctx: &capi_sync::pipeline::SyncContext) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new(["leads"]));
    capi_sync::scheduler::tick_observed(
        ctx,
        ctx.config.model("leads").unwrap(),
        Some(metrics.clone()),
    )
    .await;
    metrics
}

#[tokio::test]
async fn healthz_answers_200_with_ok() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let (base, stop) = serve(&ctx, Arc::new(Metrics::new(["leads"]))).await;
    assert_eq!(
        get(&format!("{base}/healthz")).await,
        (200, "ok\n".to_string())
    );
    stop.cancel();
}

#[tokio::test]
async fn readyz_answers_200_when_both_databases_answer() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let (base, stop) = serve(&ctx, Arc::new(Metrics::new(["leads"]))).await;
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);
    stop.cancel();
}

#[tokio::test]
async fn readyz_answers_503_naming_the_warehouse_when_it_is_gone() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let (base, stop) = serve(&ctx, Arc::new(Metrics::new(["leads"]))).await;
    ctx.warehouse.pool().close().await;
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the warehouse"), "{body}");
    assert!(!body.contains("the state database"), "{body}");
    stop.cancel();
}

#[tokio::test]
async fn metrics_count_events_sent_and_rows_refused_by_reason() {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 4).await;
    make_too_old(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let metrics = sync_counted(&ctx).await;
    let (base, stop) = serve(&ctx, metrics).await;
    let (status, body) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("capi_sync_events_sent_total{model=\"leads\"} 3\n"),
        "{body}"
    );
    assert!(
        body.contains(
            "capi_sync_rows_refused_total{model=\"leads\",reason=\"event_time_too_old\"} 1\n"
        ),
        "{body}"
    );
    assert!(
        body.contains("capi_sync_batch_duration_seconds_count{model=\"leads\"} 1\n"),
        "{body}"
    );
    stop.cancel();
}

#[tokio::test]
async fn metrics_count_retries_by_class() {
    let (db, sandbox) = leads_and_sandbox(2).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sandbox.fail_next(1);
    let metrics = sync_counted(&ctx).await;
    let (base, stop) = serve(&ctx, metrics).await;
    let body = get(&format!("{base}/metrics")).await.1;
    assert!(
        body.contains("capi_sync_retries_total{model=\"leads\",class=\"transient\"} 1\n"),
        "{body}"
    );
    stop.cancel();
}

#[tokio::test]
async fn metrics_give_the_last_successful_run_time() {
    let (db, sandbox) = leads_and_sandbox(1).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let before = chrono::Utc::now().timestamp();
    let metrics = sync_counted(&ctx).await;
    let (base, stop) = serve(&ctx, metrics).await;
    let body = get(&format!("{base}/metrics")).await.1;
    let value: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("capi_sync_last_success_timestamp_seconds{model=\"leads\"} "))
        .unwrap_or_else(|| panic!("no last-success sample in {body}"))
        .parse()
        .unwrap();
    assert!(value >= before as f64 && value <= chrono::Utc::now().timestamp() as f64 + 1.0);
    stop.cancel();
}

#[tokio::test]
async fn metrics_give_rows_waiting_and_cursor_lag_per_model() {
    let db = TestDb::new().await;
    seed_waiting_leads(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let metrics = Arc::new(Metrics::new(["leads"]));
    capi_sync::http_server::refresh_backlog(&ctx, &metrics).await;
    let (base, stop) = serve(&ctx, metrics).await;
    let body = get(&format!("{base}/metrics")).await.1;
    assert!(
        body.contains("capi_sync_rows_waiting{model=\"leads\"} 3\n"),
        "{body}"
    );
    let lag: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("capi_sync_cursor_lag_seconds{model=\"leads\"} "))
        .unwrap_or_else(|| panic!("no lag sample in {body}"))
        .parse()
        .unwrap();
    assert!((3500.0..3600.0).contains(&lag), "lag {lag}");
    stop.cancel();
}
