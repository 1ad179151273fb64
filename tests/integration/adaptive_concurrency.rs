//! Requests in flight per pixel find their level: from `meta.concurrency` they grow while
//! the Graph API answers fast, never beyond `meta.max_concurrency`, and throttling keeps
//! them down.

use crate::helpers::*;
use capi_sync::observer::RunObserver;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunStatus, RunSummary, SyncContext};
use capi_sync::sandbox::Faults;
use std::sync::{Arc, Mutex};

/// The limits the run reported after its batches (the `/metrics` gauge's values).
#[derive(Debug, Default)]
struct Limits(Mutex<Vec<usize>>);

impl RunObserver for Limits {
    fn requests_in_flight_limit(&self, pixel_id: &str, limit: usize) {
        assert_eq!(pixel_id, "123456789012345");
        self.0.lock().unwrap().push(limit);
    }
}

impl Limits {
    fn highest(&self) -> usize {
        self.0.lock().unwrap().iter().copied().max().unwrap_or(0)
    }
}

/// `rows` leads in batches of 20 (many batches, so the limit has windows to grow in).
async fn leads_in_small_batches(
    db: &TestDb,
    sandbox_url: &str,
    rows: i64,
) -> capi_sync::config::Config {
    seed_recent_leads(db, rows).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\nbatch_size = 20",
    );
    config(db, sandbox_url, &models)
}

async fn sync_watched(ctx: &SyncContext, limits: &Arc<Limits>) -> RunSummary {
    let m = ctx.config.model("leads").expect("model exists").clone();
    sync_model_once(
        ctx,
        &m,
        &RunOptions {
            trigger: "test".into(),
            observer: Some(limits.clone()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_config_requests_in_flight_grow_above_meta_concurrency_within_the_maximum()
{
    let db = TestDb::new().await;
    // Answers take 100 ms whatever the number in flight: a server far from saturated.
    let sandbox = start_sandbox(Faults {
        slow_ms: 100,
        ..Faults::default()
    })
    .await;
    let cfg = leads_in_small_batches(&db, &sandbox.base_url(), 3000).await;
    let (start, max) = (cfg.meta.concurrency, cfg.meta.max_concurrency);
    assert!(
        start < max,
        "the defaults leave room to grow ({start}, {max})"
    );
    let ctx = context(cfg).await;
    let limits = Arc::new(Limits::default());
    let run = sync_watched(&ctx, &limits).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 3000);
    let peak = sandbox.stats().max_in_flight as usize;
    assert!(
        peak > start,
        "at most {peak} requests in flight: never above meta.concurrency ({start})"
    );
    assert!(
        peak <= max,
        "{peak} requests in flight, over meta.max_concurrency ({max})"
    );
    assert!(limits.highest() > start && limits.highest() <= max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_never_exceed_meta_max_concurrency() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 50,
        ..Faults::default()
    })
    .await;
    let mut cfg = leads_in_small_batches(&db, &sandbox.base_url(), 3000).await;
    cfg.meta.concurrency = 2;
    cfg.meta.max_concurrency = 4;
    let ctx = context(cfg).await;
    let limits = Arc::new(Limits::default());
    let run = sync_watched(&ctx, &limits).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let peak = sandbox.stats().max_in_flight;
    assert!(
        peak <= 4,
        "{peak} requests in flight, over meta.max_concurrency (4)"
    );
    assert!(peak > 2, "never above meta.concurrency (peak {peak})");
    assert!(limits.highest() <= 4, "a limit of {}", limits.highest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_halves_the_requests_in_flight() {
    let db = TestDb::new().await;
    // A third of the requests throttled (with Retry-After: 1), answers otherwise fast.
    let sandbox = start_sandbox(Faults {
        slow_ms: 20,
        throttle_rate: 0.3,
        seed: 7,
        ..Faults::default()
    })
    .await;
    let mut cfg = leads_in_small_batches(&db, &sandbox.base_url(), 640).await;
    cfg.meta.max_attempts = 10;
    let start = cfg.meta.concurrency;
    let ctx = context(cfg).await;
    let limits = Arc::new(Limits::default());
    let run = sync_watched(&ctx, &limits).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert!(sandbox.stats().throttled > 0, "the sandbox never throttled");
    let lowest = limits.0.lock().unwrap().iter().copied().min().unwrap_or(0);
    assert!(
        (1..=start / 2).contains(&lowest),
        "the throttles lowered the limit only to {lowest} (from {start})"
    );
}

/// Every answer reports usage at `usage_percent` of a rate limit; fast answers otherwise.
async fn sync_reporting_usage(usage_percent: u32) -> (Arc<Limits>, u64, usize) {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 50,
        usage_percent,
        ..Faults::default()
    })
    .await;
    let cfg = leads_in_small_batches(&db, &sandbox.base_url(), 2000).await;
    let start = cfg.meta.concurrency;
    let ctx = context(cfg).await;
    let limits = Arc::new(Limits::default());
    let run = sync_watched(&ctx, &limits).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 2000);
    (limits, sandbox.stats().max_in_flight, start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_near_meta_rate_limit_keeps_requests_in_flight_down() {
    // 95%: over the 90% at which the limit is halved, as if throttled.
    let (limits, peak, start) = sync_reporting_usage(95).await;
    assert!(
        limits.highest() <= start,
        "the limit grew to {} while Meta reported 95% usage",
        limits.highest()
    );
    assert!(
        peak as usize <= start,
        "{peak} requests in flight at 95% usage"
    );
    let lowest = limits.0.lock().unwrap().iter().copied().min().unwrap_or(0);
    assert_eq!(lowest, 1, "halved down to one request in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_approaching_meta_rate_limit_stops_the_growth() {
    // 80%: under the 90% that halves the limit, over the 75% from which it no longer grows.
    let (limits, peak, start) = sync_reporting_usage(80).await;
    assert_eq!(
        limits.highest(),
        start,
        "the limit moved from meta.concurrency at 80% usage"
    );
    assert!(
        peak as usize <= start,
        "{peak} requests in flight at 80% usage"
    );
}

const ONE_MODEL: &str = r#"
[[models]]
name = "m1"
pixel_id = "123"
schedule = "*/15 * * * *"
sql = "SELECT 1"
primary_key = "id"
cursor = "updated_at"
"#;

fn load_meta(meta: &str) -> Result<capi_sync::config::Config, capi_sync::config::ConfigError> {
    let text =
        format!("[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\n{meta}\n{ONE_MODEL}");
    capi_sync::config::Config::from_toml_str(&text, std::path::Path::new("."))
}

#[test]
fn a_maximum_below_meta_concurrency_is_an_error_naming_the_key() {
    let err = load_meta("concurrency = 8\nmax_concurrency = 4")
        .expect_err("a maximum below the start")
        .to_string();
    assert!(err.contains("meta.max_concurrency"), "{err}");
    assert!(err.contains("at least 8"), "{err}");
    let fixed = load_meta("concurrency = 8\nmax_concurrency = 8").expect("equal keeps it fixed");
    assert_eq!(fixed.meta.max_concurrency, 8);
    let defaults = load_meta("").expect("the defaults");
    assert_eq!(
        (defaults.meta.concurrency, defaults.meta.max_concurrency),
        (4, 16)
    );
}
