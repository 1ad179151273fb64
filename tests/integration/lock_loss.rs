//! A model's lock cannot be lost silently: when the lock's session in the state database ends
//! mid-run, the run stops at its next cursor write without writing it, another process takes
//! the model over, and no row goes under two ids nor any cursor back.

use crate::helpers::*;
use crate::stalls::{
    assert_each_row_delivered_once, paged_leads_model, proxied_config, start_run, wait_until,
};
use capi_sync::pipeline::RunStatus;
use capi_sync::sandbox::Faults;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The backend holding the `leads` model's lock in this test's database.
async fn lock_backend(pool: &PgPool) -> i32 {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 2
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = hashtext('capi_sync')::oid AND objid = hashtext('leads')::oid",
    )
    .fetch_one(pool)
    .await
    .expect("a session holds the model's lock")
}

/// The id (the row key: ids grow with `updated_at`) of the stored cursor.
async fn cursor_id(pool: &PgPool) -> Option<i64> {
    cursor_key(pool, "leads")
        .await
        .map(|k| k[0].parse().expect("a numeric key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_session_dies_stops_without_moving_the_cursor_and_another_takes_over() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        3000,
        "now() - interval '1 day' + g * interval '1 second'",
        "now() - interval '1 hour'",
    )
    .await;
    // Slow answers: the run lasts a few seconds, many cursor writes apart.
    let sandbox = start_sandbox(Faults {
        slow_ms: 200,
        ..Faults::default()
    })
    .await;
    let config = || {
        proxied_config(
            &db,
            None,
            None,
            &sandbox.base_url(),
            "",
            &paged_leads_model(),
        )
    };
    let first = context(config()).await;
    let second = context(config()).await;

    // Every cursor value seen, in order, from the first run's start to the end of the test.
    let stop_watching = CancellationToken::new();
    let watcher = {
        let (pool, stop) = (db.pool.clone(), stop_watching.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                // Told to stop after the last run ended: one more reading sees its cursor.
                let last = stop.is_cancelled();
                if let Some(id) = cursor_id(&pool).await {
                    if seen.last() != Some(&id) {
                        seen.push(id);
                    }
                }
                if last {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let run = start_run(&first).await;
    wait_until("some events are sent", || sandbox.events().len() >= 300).await;
    // The first process's lock session, which holds every lock of that process.
    let backend = lock_backend(&db.pool).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);

    // The second process takes the model while the first still runs. Taking the lock waits
    // for any cursor write the first run had already proven its lock for.
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
    let cursor_at_takeover = cursor_id(&db.pool).await;

    let run = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the first run ended")
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("lost the model's lock"), "{error}");
    assert!(
        run.counters.events_sent < 3000,
        "the first run finished before it noticed"
    );
    assert_eq!(
        cursor_id(&db.pool).await,
        cursor_at_takeover,
        "the first run wrote the cursor after the model was taken over"
    );

    taken.release().await;
    let next = sync(&second, "leads").await;
    assert_eq!(next.status, RunStatus::Succeeded, "{:?}", next.error);
    stop_watching.cancel();
    let seen = watcher.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the cursor moved back: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&3000));
    assert_each_row_delivered_once(&sandbox, &db.pool, 3000).await;
}

fn stretch(upto: i64) -> capi_sync::state::Settlement {
    capi_sync::state::Settlement {
        position: Some(capi_sync::state::CursorPosition {
            cursor_value: format!("2026-11-28 10:00:{upto:02}+00"),
            row_key: vec![upto.to_string()],
        }),
        delivered: vec![capi_sync::state::Delivered {
            row_key: vec![upto.to_string()],
            event_id: format!("id-{upto}"),
            event_name: "Lead".into(),
            event_time: 1_764_000_000,
            fingerprint: "f".into(),
            fbtrace_id: None,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_cursor_write_whose_lock_is_no_longer_held_writes_nothing() {
    let db = TestDb::new().await;
    let ctx = context(config(&db, "http://127.0.0.1:9", LEADS_MODEL)).await;
    let state = &ctx.state;
    let counters = capi_sync::state::RunCounters::default();
    let lock = state.try_lock_model("leads").await.unwrap().unwrap();
    let proof = lock.proof();
    let run = state.start_run("leads", "test").await.unwrap();
    state
        .settle_holding("leads", run, &stretch(1), &counters, proof)
        .await
        .expect("the lock is held");
    assert_eq!(cursor_id(&db.pool).await, Some(1));

    // The lock is freed and another run of this process takes the model again, on the same
    // lock session (the same backend): the old proof no longer holds all the same.
    lock.release().await;
    let other = state.try_lock_model("leads").await.unwrap().unwrap();
    let refused = state
        .settle_holding("leads", run, &stretch(2), &counters, proof)
        .await;
    let message = refused
        .expect_err("a lost lock must fail the write")
        .to_string();
    assert!(message.contains("lost the model's lock"), "{message}");
    assert_eq!(cursor_id(&db.pool).await, Some(1), "the cursor moved");
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.deliveries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ledger, 1, "the failed write recorded its events");
    // The new holder writes.
    state
        .settle_holding("leads", run, &stretch(3), &counters, other.proof())
        .await
        .expect("the new holder's write");
    assert_eq!(cursor_id(&db.pool).await, Some(3));
    other.release().await;
}
