//! Two hundred models in one service: the scheduler runs at most `service.max_concurrent_runs`
//! of them at once, the most overdue first, within a connection budget that does not grow with
//! the number of models, and every row reaches Meta once.
//!
//! Each model is a slice of one table (`id % 200`), on a once-a-minute schedule; rows are added
//! to every slice between minutes. The service loop runs in-process for three fire times (two
//! minutes) against the local Postgres, whose default `max_connections` (100) would not survive
//! one session per model.

use crate::helpers::*;
use capi_sync::mapping::derive_event_id;
use capi_sync::metrics::Metrics;
use capi_sync::observer::RunObserver;
use capi_sync::sandbox::Faults;
use chrono::{DateTime, Timelike, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODELS: i64 = 200;
/// Rows added to each model's slice per round: a few, so the test measures scheduling.
const ROWS_PER_MODEL: i64 = 3;

fn models_toml(schedule: &str) -> String {
    (0..MODELS)
        .map(|k| {
            format!(
                r#"
[[models]]
name = "m{k}"
pixel_id = "123456789012345"
schedule = "{schedule}"
sql = "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em FROM crm.leads WHERE id % {MODELS} = {k}"
primary_key = "id"
cursor = "updated_at"
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#
            )
        })
        .collect()
}

/// Adds `ROWS_PER_MODEL` rows to every model's slice; returns when they committed (the
/// database's clock).
async fn add_rows(db: &TestDb) -> DateTime<Utc> {
    seed_leads(
        &db.pool,
        MODELS * ROWS_PER_MODEL,
        "now()",
        "now() - interval '1 hour'",
    )
    .await;
    sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits until every model has a finished run that started after `since`.
async fn every_model_ran_after(db: &TestDb, since: DateTime<Utc>, what: &str) {
    let limit = Duration::from_secs(200);
    let start = Instant::now();
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT model) FROM capi_sync.runs WHERE status <> 'running' AND started_at > $1",
        )
        .bind(since)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if done == MODELS {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}: {done} of {MODELS} models ran"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The peaks seen while the service runs.
#[derive(Debug, Default)]
struct Peaks {
    connections: i64,
    runs_in_progress: i64,
    runs_waiting: i64,
}

fn gauge(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}")) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_per_minute_models_run_every_minute_within_the_connection_budget() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    add_rows(&db).await;
    // Seconds-precision cron firing once a minute, the first time about 12 s from now: three
    // fire times within two minutes and a few seconds of the start.
    let second = (Utc::now() + chrono::Duration::seconds(12)).second();
    let schedule = format!("{second} * * * * *");
    let config = config(&db, &sandbox.base_url(), &models_toml(&schedule));
    let budget = capi_sync::app::ConnectionBudget::of(&config).total();
    let max_runs = config.service.max_concurrent_runs as i64;
    let ctx = context(config).await;
    let metrics = Arc::new(Metrics::new(
        ctx.config.models.iter().map(|m| m.name.as_str()),
    ));

    // Samples the service's sessions on this database (other tests share the server) and the
    // scheduler's gauges every 200 ms.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pool, name, metrics, sampling) = (
            db.pool.clone(),
            db.name.clone(),
            metrics.clone(),
            sampling.clone(),
        );
        tokio::spawn(async move {
            let mut peaks = Peaks::default();
            while sampling.load(Ordering::SeqCst) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'capi-sync' AND datname = $1",
                )
                .bind(&name)
                .fetch_one(&pool)
                .await
                .unwrap();
                let text = metrics.render();
                peaks.connections = peaks.connections.max(n);
                peaks.runs_in_progress = peaks
                    .runs_in_progress
                    .max(gauge(&text, "capi_sync_runs_in_progress"));
                peaks.runs_waiting = peaks
                    .runs_waiting
                    .max(gauge(&text, "capi_sync_runs_waiting"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peaks
        })
    };

    let t0: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let observer: Arc<dyn RunObserver> = metrics.clone();
    let service = tokio::spawn(capi_sync::scheduler::run_service_observed(
        ctx.clone(),
        Some(observer),
    ));
    every_model_ran_after(&db, t0, "the first minute's runs").await;
    let second_rows = add_rows(&db).await;
    every_model_ran_after(&db, second_rows, "the second minute's runs").await;
    let third_rows = add_rows(&db).await;
    every_model_ran_after(&db, third_rows, "the third minute's runs").await;
    ctx.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(60), service)
        .await
        .expect("the service stops once its runs settled")
        .unwrap();
    sampling.store(false, Ordering::SeqCst);
    let peaks = sampler.await.unwrap();

    // Connections and concurrency stay within the budget, though all 200 models fall due at once.
    println!("peaks: {peaks:?}, connection budget {budget}");
    assert!(
        peaks.connections > 0,
        "the sampler saw the service's sessions"
    );
    assert!(
        peaks.connections <= budget as i64,
        "{} sessions at peak, over the budget of {budget}",
        peaks.connections
    );
    assert!(peaks.runs_in_progress <= max_runs, "{peaks:?}");
    assert!(
        peaks.runs_waiting > 0,
        "200 models due at once queue: {peaks:?}"
    );

    // No run failed, for lack of connections or anything else.
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status || coalesce(': ' || error, ''), count(*) FROM capi_sync.runs GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        statuses
            .iter()
            .all(|(s, _)| s == "succeeded" || s.starts_with("cancelled")),
        "{statuses:?}"
    );

    // Every run was scheduled, started at or after its fire time, and no model missed two
    // fire times in a row.
    let runs: Vec<(String, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT model, scheduled_for, started_at FROM capi_sync.runs ORDER BY model, started_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let first_fire = ctx.config.models[0].schedule.next_after(t0).unwrap();
    let fires: Vec<DateTime<Utc>> = (0..3)
        .map(|i| first_fire + chrono::Duration::minutes(i))
        .collect();
    let mut served: BTreeMap<&str, HashSet<DateTime<Utc>>> = BTreeMap::new();
    let mut delays = Vec::new();
    for (model, scheduled_for, started_at) in &runs {
        let due = scheduled_for.expect("a service run records its fire time");
        assert!(*started_at >= due, "{model} started before it was due");
        delays.push((*started_at - due).num_milliseconds());
        served.entry(model).or_default().insert(due);
    }
    assert_eq!(served.len(), MODELS as usize);
    let mut collapsed = 0;
    for (model, due) in &served {
        assert!(
            due.contains(&fires[0]),
            "{model} ran for the first fire time"
        );
        for pair in fires.windows(2) {
            assert!(
                due.contains(&pair[0]) || due.contains(&pair[1]),
                "{model} was skipped at {} and {}: {due:?}",
                pair[0],
                pair[1]
            );
        }
        collapsed += fires.iter().filter(|f| !due.contains(f)).count();
    }
    delays.sort();
    println!(
        "{} runs; start delay median {} ms, max {} ms; fire times collapsed into a later run: {collapsed}",
        delays.len(),
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    let text = metrics.render();
    for model in ["m0", "m199"] {
        let count = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "capi_sync_run_start_delay_seconds_count{{model=\"{model}\"}} "
                ))
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(count >= 2.0, "{model}'s start delays observed: {count}");
    }

    // Every row was delivered once, under its one event id.
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM crm.leads")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(ids.len() as i64, 3 * MODELS * ROWS_PER_MODEL);
    let expected: HashSet<String> = ids
        .iter()
        .map(|id| derive_event_id(&format!("m{}", id % MODELS), &[id.to_string()], "Lead"))
        .collect();
    let counts: HashMap<String, usize> = event_id_counts(&sandbox.events());
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let got: HashSet<String> = counts.into_keys().collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "missing: {}",
        expected.difference(&got).count()
    );
    assert_eq!(got, expected);
}

/// Forwards to the metrics and records the most runs seen going at once, counted from the
/// scheduler's starts and the pipeline's ends.
#[derive(Debug)]
struct Concurrency {
    metrics: Arc<Metrics>,
    going: std::sync::Mutex<(i64, i64, usize)>,
}

impl RunObserver for Concurrency {
    fn run_started(&self, model: &str, delay: Duration) {
        let mut g = self.going.lock().unwrap();
        g.0 += 1;
        g.1 = g.1.max(g.0);
        self.metrics.run_started(model, delay);
    }

    fn run_finished(&self, summary: &capi_sync::pipeline::RunSummary) {
        self.going.lock().unwrap().0 -= 1;
        self.metrics.run_finished(summary);
    }

    fn run_queue(&self, waiting: usize, running: usize) {
        let mut g = self.going.lock().unwrap();
        g.2 = g.2.max(waiting);
        self.metrics.run_queue(waiting, running);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_run_slot_every_second_models_take_turns_and_status_shows_the_start_delay() {
    const N: i64 = 20;
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    seed_leads(&db.pool, 2 * N, "now()", "now() - interval '1 hour'").await;
    // Twenty models due every second, one slot: runs wait, and must take turns.
    let models: String = (0..N)
        .map(|k| {
            format!(
                r#"
[[models]]
name = "s{k}"
pixel_id = "123456789012345"
schedule = "* * * * * *"
sql = "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em FROM crm.leads WHERE id % {N} = {k}"
primary_key = "id"
cursor = "updated_at"
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#
            )
        })
        .collect();
    let text = config_text(
        &db,
        &sandbox.base_url(),
        "[service]\nmax_concurrent_runs = 1",
        &models,
    );
    let config = capi_sync::config::Config::from_toml_str(&text, std::path::Path::new("."))
        .expect("valid config");
    assert_eq!(config.service.max_concurrent_runs, 1);
    let ctx = context(config).await;
    let watch = Arc::new(Concurrency {
        metrics: Arc::new(Metrics::new(
            ctx.config.models.iter().map(|m| m.name.as_str()),
        )),
        going: Default::default(),
    });
    let observer: Arc<dyn RunObserver> = watch.clone();
    let service = tokio::spawn(capi_sync::scheduler::run_service_observed(
        ctx.clone(),
        Some(observer),
    ));
    let start = Instant::now();
    loop {
        let ran_thrice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT model FROM capi_sync.runs WHERE status <> 'running'
               GROUP BY model HAVING count(*) >= 3) AS r",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if ran_thrice == N {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "every model ran three times"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctx.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(60), service)
        .await
        .expect("the service stops")
        .unwrap();

    let (going, most_going, most_waiting) = *watch.going.lock().unwrap();
    assert_eq!(going, 0, "every run started ended");
    assert_eq!(most_going, 1, "one run at a time");
    assert!(most_waiting >= (N - 1) as usize, "{most_waiting}");
    // Turns: the least recently started due model goes next, so no model runs twice while
    // another waits, and run counts differ by at most one.
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT model, count(*) FROM capi_sync.runs GROUP BY model")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let most = counts.iter().map(|c| c.1).max().unwrap();
    let fewest = counts.iter().map(|c| c.1).min().unwrap();
    assert!(most - fewest <= 1, "{counts:?}");
    let order: Vec<String> =
        sqlx::query_scalar("SELECT model FROM capi_sync.runs ORDER BY started_at, id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    for turn in order.chunks(N as usize).filter(|c| c.len() == N as usize) {
        let distinct: HashSet<&String> = turn.iter().collect();
        assert_eq!(
            distinct.len(),
            N as usize,
            "a turn serves each model once: {turn:?}"
        );
    }

    // `status` shows how late each model's last run started; the metrics have the histogram.
    let model = ctx.config.model("s7").unwrap();
    let s = capi_sync::commands::status::collect(
        Some(&ctx.warehouse),
        Some(&ctx.state),
        model,
        Utc::now(),
        ctx.config.service.expiring_within,
    )
    .await
    .unwrap();
    let last = s.last_run.clone().expect("s7 ran");
    assert!(
        last["start_delay_seconds"].as_f64().unwrap() >= 0.0,
        "{last}"
    );
    let text = capi_sync::commands::status::format_text(&s, Utc::now());
    assert!(text.contains("after its fire time"), "{text}");
    let rendered = watch.metrics.render();
    assert!(
        rendered.contains("capi_sync_run_start_delay_seconds_bucket{model=\"s7\",le=\"+Inf\"}"),
        "{rendered}"
    );
    assert!(
        rendered.contains("\ncapi_sync_runs_waiting 0\n"),
        "drained at shutdown"
    );
}
