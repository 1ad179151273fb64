//! Many models in one process: the connections stay within warehouse.max_connections +
//! state.max_connections + one lock session however many models run, one session holds every
//! model lock (and still keeps two processes, or two tasks of one, off the same model), and the
//! models of one pixel share its requests in flight.

use crate::helpers::*;
use crate::stalls::{start_run, wait_until};
use capi_sync::app::ConnectionBudget;
use capi_sync::config::Config;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunStatus, RunSummary, SyncContext};
use capi_sync::sandbox::Faults;
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `n` models, each a slice of `crm.leads` (`id % n`), model `i` sending to `pixel(i)`.
fn sliced_models(n: usize, batch_size: usize, pixel: impl Fn(usize) -> u64) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"
[[models]]
name = "m{i}"
pixel_id = "{pixel}"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, stage AS event_name, happened_at AS event_time, email AS em FROM crm.leads WHERE id % {n} = {i}"
primary_key = "id"
cursor = "updated_at"
batch_size = {batch_size}
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#,
                pixel = pixel(i)
            )
        })
        .collect()
}

async fn seed(db: &TestDb, rows: i64) {
    seed_leads(
        &db.pool,
        rows,
        "now() - interval '1 day' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
}

/// Runs every model of the context at once, each on a task of its own.
async fn run_all_at_once(ctx: &SyncContext) -> Vec<RunSummary> {
    let tasks: Vec<_> = ctx
        .config
        .models
        .iter()
        .map(|m| {
            let (ctx, m) = (ctx.clone(), m.clone());
            tokio::spawn(async move {
                let opts = RunOptions {
                    trigger: "test".into(),
                    ..Default::default()
                };
                sync_model_once(&ctx, &m, &opts).await
            })
        })
        .collect();
    let mut summaries = Vec::new();
    for t in tasks {
        summaries.push(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("the runs ended")
                .unwrap(),
        );
    }
    summaries
}

/// The most of each seen while sampling.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    /// Backends of capi-sync (application_name) in the test's database.
    connections: i64,
    /// Distinct backends holding a model lock.
    lock_sessions: i64,
    /// Model locks held at once.
    locks: i64,
}

/// Samples the database until `stop` is cancelled, then once more. `models`: whose locks count
/// (not the transactions' short settle locks).
fn sample_peaks(
    pool: PgPool,
    db: String,
    models: Vec<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Peaks> {
    tokio::spawn(async move {
        let mut peaks = Peaks::default();
        loop {
            let last = stop.is_cancelled();
            let (connections, lock_sessions, locks): (i64, i64, i64) = sqlx::query_as(
                "SELECT
                   (SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'capi-sync'),
                   (SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                       AND database = (SELECT oid FROM pg_database WHERE datname = $1)
                       AND classid = hashtext('capi_sync')::oid AND objid IN (SELECT hashtext(m)::oid FROM unnest($2::text[]) AS m)),
                   (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                       AND database = (SELECT oid FROM pg_database WHERE datname = $1)
                       AND classid = hashtext('capi_sync')::oid AND objid IN (SELECT hashtext(m)::oid FROM unnest($2::text[]) AS m))",
            )
            .bind(&db)
            .bind(&models)
            .fetch_one(&pool)
            .await
            .expect("sample the server's activity");
            peaks.connections = peaks.connections.max(connections);
            peaks.lock_sessions = peaks.lock_sessions.max(lock_sessions);
            peaks.locks = peaks.locks.max(locks);
            if last {
                return peaks;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_models_at_once_stay_within_the_connection_budget_on_one_lock_session() {
    let db = TestDb::new().await;
    let models = 30;
    let rows = 600;
    seed(&db, rows).await;
    // Slow answers keep the runs, and their locks, side by side.
    let sandbox = start_sandbox(Faults {
        slow_ms: 30,
        ..Faults::default()
    })
    .await;
    let mut cfg: Config = config(
        &db,
        &sandbox.base_url(),
        &sliced_models(models, 5, |i| 100_000_000_000_000 + i as u64),
    );
    cfg.warehouse.max_connections = 3;
    cfg.state.max_connections = 3;
    let budget = ConnectionBudget::of(&cfg);
    assert_eq!(budget.total(), 3 + 3 + 1);
    let ctx = context(cfg).await;

    let stop = CancellationToken::new();
    let names = ctx.config.models.iter().map(|m| m.name.clone()).collect();
    let sampler = sample_peaks(db.pool.clone(), db.name.clone(), names, stop.clone());
    let summaries = run_all_at_once(&ctx).await;
    stop.cancel();
    let peaks = sampler.await.unwrap();

    for s in &summaries {
        assert_eq!(s.status, RunStatus::Succeeded, "{}: {:?}", s.model, s.error);
    }
    assert!(
        peaks.connections <= budget.total() as i64,
        "{} connections at once, over the budget of {}",
        peaks.connections,
        budget.total()
    );
    assert!(
        peaks.locks > 1,
        "the runs never held their locks side by side: {peaks:?}"
    );
    assert_eq!(
        peaks.lock_sessions, 1,
        "the model locks were held on more than one session"
    );
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), rows as usize, "rows delivered");
    assert!(counts.values().all(|&n| n == 1), "a row was sent twice");
}

#[tokio::test]
async fn a_held_model_is_refused_to_another_process_and_to_another_task_of_the_same_one() {
    let db = TestDb::new().await;
    let cfg = || config(&db, "http://127.0.0.1:9", LEADS_MODEL);
    let first = context(cfg()).await;
    let second = context(cfg()).await;

    let leads = first.state.try_lock_model("leads").await.unwrap();
    let leads = leads.expect("a free model is taken");
    // The lock session would grant its own lock again; the process must not.
    assert!(
        first.state.try_lock_model("leads").await.unwrap().is_none(),
        "a second task of the same process got a model the process holds"
    );
    assert!(
        second
            .state
            .try_lock_model("leads")
            .await
            .unwrap()
            .is_none(),
        "another process got a held model"
    );
    // Another model of the same process: the same session holds both.
    let other = first.state.try_lock_model("other").await.unwrap();
    let other = other.expect("another model is free");
    assert_eq!(other.proof().backend_pid, leads.proof().backend_pid);

    leads.release().await;
    let taken = second.state.try_lock_model("leads").await.unwrap();
    let taken = taken.expect("a released model is free to another process");
    assert!(first.state.try_lock_model("leads").await.unwrap().is_none());
    taken.release().await;
    // Dropped without release (a run stopped where it stood): freed all the same.
    drop(other);
    let again = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(lock) = second.state.try_lock_model("other").await.unwrap() {
                return lock;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a dropped lock is freed");
    again.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_model_is_skipped_by_another_process_and_by_a_second_run_of_its_own() {
    let db = TestDb::new().await;
    seed(&db, 300).await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 100,
        ..Faults::default()
    })
    .await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\nbatch_size = 10",
    );
    let mut cfg = config(&db, &sandbox.base_url(), &models);
    cfg.meta.concurrency = 1;
    cfg.meta.max_concurrency = 1;
    let first = context(cfg.clone()).await;
    let second = context(cfg).await;

    let run = start_run(&first).await;
    wait_until("the first run sends", || !sandbox.events().is_empty()).await;
    let elsewhere = sync(&second, "leads").await;
    assert_eq!(elsewhere.status, RunStatus::Skipped, "{elsewhere:?}");
    let again = sync(&first, "leads").await;
    assert_eq!(again.status, RunStatus::Skipped, "{again:?}");
    let run = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the first run ended")
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|&n| n == 1), "a row was sent twice");
}

#[tokio::test]
async fn when_the_lock_session_dies_every_lock_is_lost_and_the_next_ask_opens_a_new_one() {
    let db = TestDb::new().await;
    let cfg = || config(&db, "http://127.0.0.1:9", LEADS_MODEL);
    let first = context(cfg()).await;
    let second = context(cfg()).await;
    let leads = first.state.try_lock_model("leads").await.unwrap().unwrap();
    let other = first.state.try_lock_model("other").await.unwrap().unwrap();
    let old_pid = leads.proof().backend_pid;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old_pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);

    // Both locks went with the session: another process takes the models.
    let taken = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(lock) = second.state.try_lock_model("leads").await.unwrap() {
                return lock;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lock was freed by its session's end");
    // The first process reconnects at its next ask, on a new backend.
    let fresh = first.state.try_lock_model("third").await.unwrap();
    let fresh = fresh.expect("the keeper reconnects");
    assert_ne!(fresh.proof().backend_pid, old_pid);
    // It no longer counts the lost models as its own: `other` is free again to it, and
    // `leads` is held by the other process.
    assert!(first.state.try_lock_model("leads").await.unwrap().is_none());
    let other_again = first.state.try_lock_model("other").await.unwrap();
    assert!(other_again.is_some(), "a lost lock stayed counted as held");

    // A run holding a proof of the old session cannot write the cursor.
    let counters = capi_sync::state::RunCounters::default();
    let run = first.state.start_run("other", "test").await.unwrap();
    let settlement = capi_sync::state::Settlement {
        position: Some(capi_sync::state::CursorPosition {
            cursor_value: "2026-11-28 10:00:00+00".into(),
            row_key: vec!["1".into()],
        }),
        ..Default::default()
    };
    let refused = first
        .state
        .settle_holding("other", run, &settlement, &counters, other.proof())
        .await
        .expect_err("a proof of the ended session must fail");
    assert!(
        refused.to_string().contains("lost the model's lock"),
        "{refused}"
    );
    assert_eq!(
        cursor_key(&db.pool, "other").await,
        None,
        "the cursor moved"
    );
    // Its release frees nothing of the new holder's.
    drop(other);
    leads.release().await;
    let holder = other_again.unwrap();
    first
        .state
        .settle_holding("other", run, &settlement, &counters, holder.proof())
        .await
        .expect("the new holder writes");
    taken.release().await;
    holder.release().await;
    fresh.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_on_one_pixel_never_have_more_requests_in_flight_than_meta_max_concurrency() {
    let db = TestDb::new().await;
    let rows = 400;
    seed(&db, rows).await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 50,
        ..Faults::default()
    })
    .await;
    let mut cfg = config(
        &db,
        &sandbox.base_url(),
        &sliced_models(4, 10, |_| 123_456_789_012_345),
    );
    cfg.meta.concurrency = 2;
    cfg.meta.max_concurrency = 2;
    let ctx = context(cfg).await;
    let summaries = run_all_at_once(&ctx).await;
    for s in &summaries {
        assert_eq!(s.status, RunStatus::Succeeded, "{}: {:?}", s.model, s.error);
    }
    let peak = sandbox.stats().max_in_flight;
    assert!(
        peak <= 2,
        "{peak} requests to one pixel in flight at once, over meta.max_concurrency (2)"
    );
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), rows as usize);
    assert!(counts.values().all(|&n| n == 1), "a row was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_on_different_pixels_each_have_their_own_requests_in_flight() {
    let db = TestDb::new().await;
    let rows = 400;
    seed(&db, rows).await;
    let sandbox = start_sandbox(Faults {
        slow_ms: 50,
        ..Faults::default()
    })
    .await;
    let mut cfg = config(
        &db,
        &sandbox.base_url(),
        &sliced_models(4, 10, |i| 123_456_789_012_340 + i as u64),
    );
    cfg.meta.concurrency = 2;
    cfg.meta.max_concurrency = 2;
    let ctx = context(cfg).await;
    let summaries = run_all_at_once(&ctx).await;
    for s in &summaries {
        assert_eq!(s.status, RunStatus::Succeeded, "{}: {:?}", s.model, s.error);
    }
    // Four pixels of two requests each: more than one pixel's worth went side by side.
    let peak = sandbox.stats().max_in_flight;
    assert!(
        peak > 2,
        "the pixels' requests never went side by side (peak {peak})"
    );
    let ids: HashSet<String> = event_id_counts(&sandbox.events()).into_keys().collect();
    assert_eq!(ids.len(), rows as usize);
}

/// The output of `capi-sync check --offline` with `warehouse.max_connections` set to
/// `warehouse_connections` and `state.max_connections` to 5.
async fn check_offline(db: &TestDb, warehouse_connections: u32) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.toml");
    let text = config_text(
        db,
        "http://127.0.0.1:9",
        "[state]\nmax_connections = 5\n",
        LEADS_MODEL,
    );
    std::fs::write(&path, text).unwrap();
    let mut cmd = binary();
    cmd.arg("--config").arg(&path).args(["check", "--offline"]);
    cmd.env(
        "CAPI_SYNC_WAREHOUSE__MAX_CONNECTIONS",
        warehouse_connections.to_string(),
    );
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("check ended")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn check_shows_the_connection_budget_and_warns_when_the_server_has_no_room_for_it() {
    let db = TestDb::new().await;
    let stdout = check_offline(&db, 3).await;
    let line = "config: ok — connections per syncing process: at most 9 = warehouse.max_connections (3) + state.max_connections (5) + 1 model-lock session";
    assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    assert!(!stdout.contains("client connections in all"), "{stdout}");

    // A warehouse pool as large as the server's whole max_connections.
    let server_max: i32 = sqlx::query_scalar("SELECT current_setting('max_connections')::int")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let stdout = check_offline(&db, server_max as u32).await;
    let warning = "warehouse: warning — the server allows";
    assert!(stdout.contains(warning), "missing {warning:?} in\n{stdout}");
    let total = format!(
        "fewer than the {} this process may open there",
        server_max + 6
    );
    assert!(stdout.contains(&total), "{stdout}");
}
