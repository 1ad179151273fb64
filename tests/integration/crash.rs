//! Crash safety and shutdown of the real binary: `kill -9` at random points of `sync` and `run`,
//! and SIGTERM with batches in flight.

use crate::helpers::*;
use crate::lives::*;
use capi_sync::mapping::derive_event_id;
use capi_sync::sandbox::Faults;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// `LEADS_MODEL` on a one-second schedule (for `run`), with the row's id in `custom_data` so a
/// recorded event can be traced back to its row independently of its event id.
pub fn traced_leads_model() -> String {
    LEADS_MODEL
        .replace("schedule = \"*/5 * * * *\"", "schedule = \"* * * * * *\"")
        .replace(
            "email AS em, phone AS ph FROM crm.leads",
            "email AS em, phone AS ph, id::text AS row_ref FROM crm.leads",
        )
        .replace(
            "[models.constants]",
            "[models.columns]\n\"custom_data.row_ref\" = \"row_ref\"\n[models.constants]",
        )
}

/// Every recorded event carries the id derived from its own row (`model_of` names the row's
/// model) and stage: one row in one stage, one id.
pub fn assert_each_event_carries_its_rows_id_in(
    events: &[serde_json::Value],
    model_of: impl Fn(&str) -> String,
) {
    for e in events {
        let row = e["custom_data"]["row_ref"].as_str().expect("row_ref");
        let name = e["event_name"].as_str().expect("event_name");
        assert_eq!(
            e["event_id"].as_str(),
            Some(derive_event_id(&model_of(row), &[row.to_string()], name).as_str()),
            "row {row} ({name}) was sent under a foreign event id"
        );
    }
}

const ROWS: i64 = 6000;
const BATCH: usize = 100;
const CONCURRENCY: usize = 4;
const KILLS: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_row_and_resends_only_batches_in_flight() {
    let started = Instant::now();
    let seed = seed("kill_9_at_random_points");
    let mut h = Harness::new(
        seed,
        // Latency keeps several batches in flight when the kill lands.
        Faults {
            slow_ms: 20,
            ..Faults::default()
        },
        &format!(
            "batch_size = {BATCH}\nconcurrency = {CONCURRENCY}\nmax_concurrency = {CONCURRENCY}\nmax_attempts = 3\nrequest_timeout = \"10s\""
        ),
        &traced_leads_model(),
    )
    .await;
    seed_leads(
        &h.db.pool,
        ROWS,
        "now() - interval '1 day' + g * interval '1 ms'",
        "now() - interval '2 hours'",
    )
    .await;

    h.watch_ledger();
    let mut kills = 0;
    for i in 0..KILLS {
        // Most kills land while batches are in flight; some anywhere from start-up on
        // (connecting, migrating, taking the lock); every third life is the `run` service.
        let (command, point) = match i % 3 {
            0 => ("sync", KillPoint::AfterFirstRequest(h.random_ms(0..120))),
            1 => ("sync", KillPoint::AfterStart(h.random_ms(20..700))),
            _ => ("run", KillPoint::AfterFirstRequest(h.random_ms(0..120))),
        };
        match h.live_and_kill(command, point).await {
            Ending::Killed => kills += 1,
            Ending::Exited(0) => break,
            Ending::Exited(code) => panic!("capi-sync {command} exited {code}\n{}", h.log_tail()),
        }
    }
    h.sync_until_success(5, Duration::from_secs(60)).await;

    h.stop_watching_ledger().await;
    let audit = h.audit();
    let events = h.sandbox.events();
    println!(
        "kill_9_at_random_points: {ROWS} rows, {kills} kills, {} events recorded, {} repeats, {:.1} s\n{}",
        audit.recorded,
        audit.repeats(),
        started.elapsed().as_secs_f64(),
        h.describe_lives(&audit)
    );
    assert!(
        kills >= 3,
        "only {kills} kills landed before the rows ran out"
    );

    // Nothing acknowledged and committed was ever sent again.
    assert!(
        audit.resent_after_commit.is_empty(),
        "events sent again after their acknowledgement was committed: {:?}",
        &audit.resent_after_commit[..audit.resent_after_commit.len().min(5)]
    );
    // Without injected faults, a repeat can only come from a batch in flight at a kill.
    assert_eq!(audit.repeats_within_a_life, 0);
    let window = BATCH * uncommitted_batches_at_most(CONCURRENCY);
    for (k, life) in h.lives.iter().enumerate() {
        let unsettled = audit.unsettled_at_end[&k];
        match life.ending {
            Ending::Killed => assert!(
                unsettled <= window,
                "life {k} died with {unsettled} recorded events not in the ledger; at most {window} can be uncommitted"
            ),
            Ending::Exited(_) => assert_eq!(unsettled, 0, "life {k} exited with unsettled events"),
        }
        assert!(audit.repeats_after_life.get(&k).copied().unwrap_or(0) <= unsettled);
    }
    assert!(audit.repeats() <= window * kills);

    // Every row is there, under exactly one id: the one derived from its key and stage.
    let expected: HashSet<String> = (1..=ROWS)
        .map(|id| derive_event_id("leads", &[id.to_string()], "Lead"))
        .collect();
    assert_eq!(audit.recorded_ids, expected);
    assert_each_event_carries_its_rows_id_in(&events, |_| "leads".to_string());
    assert_eq!(h.ledger().await, expected);
    assert_eq!(
        h.ledger_duplicates().await,
        vec![],
        "one ledger row per event"
    );
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(refused, 0);
    assert_eq!(
        cursor(&h.db, "leads").await,
        Some(last_row(&h.db, "true").await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_batches_in_flight_settle_and_run_exits_zero() {
    let h = Harness::new(
        0,
        // Each answer takes 1.5 s: the batches are surely in flight when SIGTERM comes.
        Faults {
            slow_ms: 1500,
            ..Faults::default()
        },
        "batch_size = 100\nconcurrency = 2\nmax_concurrency = 2\nrequest_timeout = \"10s\"",
        &traced_leads_model(),
    )
    .await;
    seed_leads(
        &h.db.pool,
        1000,
        "now() - interval '1 day' + g * interval '1 ms'",
        "now() - interval '2 hours'",
    )
    .await;
    let mut child = h.spawn("run");
    let sandbox = &h.sandbox;
    // The sandbox records a batch when it arrives and answers 1.5 s later.
    wait_until("a batch in flight", Duration::from_secs(20), || {
        !sandbox.events().is_empty()
    })
    .await;
    let signalled = Instant::now();
    sigterm(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("capi-sync run exits after SIGTERM")
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", h.log_tail());
    assert!(took < Duration::from_secs(4), "exit took {took:?}");

    // Every batch that reached Meta was acknowledged and committed before the exit, and the
    // cursor stands right after the last of them.
    let recorded: HashSet<String> = event_id_counts(&h.sandbox.events()).into_keys().collect();
    assert!(!recorded.is_empty() && recorded.len() < 1000);
    assert_eq!(h.ledger().await, recorded);
    let last_sent = h
        .sandbox
        .events()
        .iter()
        .filter_map(|e| e["custom_data"]["row_ref"].as_str()?.parse::<i64>().ok())
        .max()
        .unwrap();
    let (_, key) = cursor(&h.db, "leads").await.expect("a cursor");
    assert_eq!(key, vec![last_sent.to_string()]);
    let status: String =
        sqlx::query_scalar("SELECT status FROM capi_sync.runs ORDER BY id DESC LIMIT 1")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(status, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_throttling_backoff_exits_promptly_and_the_batch_goes_next_run() {
    let mut h = Harness::new(
        0,
        // Every request is throttled (Retry-After: 1): the batch sits in its backoff.
        Faults {
            throttle_rate: 1.0,
            ..Faults::default()
        },
        "batch_size = 100\nconcurrency = 2\nmax_concurrency = 2\nmax_attempts = 8\nrequest_timeout = \"10s\"",
        &traced_leads_model(),
    )
    .await;
    seed_leads(
        &h.db.pool,
        300,
        "now() - interval '1 day' + g * interval '1 ms'",
        "now() - interval '2 hours'",
    )
    .await;
    let mut child = h.spawn("run");
    let sandbox = &h.sandbox;
    wait_until("a throttled batch", Duration::from_secs(20), || {
        sandbox.stats().throttled >= 2
    })
    .await;
    let signalled = Instant::now();
    sigterm(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("capi-sync run exits after SIGTERM")
        .unwrap();
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", h.log_tail());
    assert!(
        took < Duration::from_secs(3),
        "a batch waiting to retry held the shutdown for {took:?}"
    );
    // Nothing was acknowledged, so nothing moved; the run stopped for shutdown, not failed.
    assert!(h.sandbox.events().is_empty());
    assert!(h.ledger().await.is_empty());
    assert_eq!(cursor(&h.db, "leads").await, None);
    let run: (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM capi_sync.runs ORDER BY id DESC LIMIT 1")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(run, ("cancelled".to_string(), None));

    // The next run sends every row, once.
    h.sandbox.set_faults(Faults::default());
    h.sync_until_success(1, Duration::from_secs(30)).await;
    let counts = event_id_counts(&h.sandbox.events());
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|&c| c == 1));
}
