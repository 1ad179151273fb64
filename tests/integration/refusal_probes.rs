//! Finding refusals by row key stays one primary-key probe per key, however stale the
//! statistics of `refused_rows` (a run refuses rows far faster than autovacuum analyzes them).
//! Read back from the primary key's own counters: a plan that read the model's refusals and
//! compared each with every key reads each refusal once per statement, where probes read only
//! the refusals that match.

use crate::helpers::TestDb;
use capi_sync::config::Secret;
use capi_sync::state::{
    Delivered, MayBeRefused, RefusedRow, RunCounters, Settlement, StateLimits, StateStore,
};

const REFUSED: usize = 2_000;
const DELIVERED: usize = 1_000;

/// A store whose pool is one session, so the test's own statements run on the session that
/// ran the store's (and can flush its statistics); `refused_rows` is never analyzed.
async fn one_session_store(db: &TestDb) -> StateStore {
    let store = StateStore::connect_with_pool(
        &Secret::new(db.url.clone()),
        "capi_sync",
        &StateLimits::default(),
        1,
    )
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    sqlx::query("ALTER TABLE capi_sync.refused_rows SET (autovacuum_enabled = false)")
        .execute(store.pool())
        .await
        .expect("no analyze");
    store
}

/// Refuses rows r0..r1999 in one settled stretch; returns the run.
async fn refuse_many(store: &StateStore) -> i64 {
    let run = store.start_run("crm", "manual").await.expect("run");
    let refused = (0..REFUSED)
        .map(|i| RefusedRow {
            row_key: vec![format!("r{i}")],
            event_id: None,
            reason: "event_time_too_old".into(),
            detail: "event_time is more than 7 days old".into(),
            meta_code: None,
            meta_subcode: None,
            cursor_value: None,
        })
        .collect();
    let settlement = Settlement {
        refused,
        ..Default::default()
    };
    store
        .settle("crm", run, &settlement, &RunCounters::default())
        .await
        .expect("refusals settle");
    run
}

/// Index scans and index entries read of `refused_rows`'s primary key so far, this session's
/// own counts included.
async fn pkey_reads(store: &StateStore) -> (i64, i64) {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .expect("flush");
    sqlx::query_as(
        "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes
         WHERE schemaname = 'capi_sync' AND indexrelname = 'refused_rows_pkey'",
    )
    .fetch_one(store.pool())
    .await
    .expect("index counters")
}

/// Rows d0..d999 delivered, and among them `refused_too` of the refused rows.
fn delivered(refused_too: usize) -> Vec<Delivered> {
    (0..DELIVERED)
        .map(|i| format!("d{i}"))
        .chain((0..refused_too).map(|i| format!("r{i}")))
        .map(|key| Delivered {
            event_id: format!("{key:0>32}"),
            row_key: vec![key],
            event_name: "Lead".into(),
            event_time: 1_764_000_000,
            fingerprint: "f".into(),
            fbtrace_id: None,
        })
        .collect()
}

#[tokio::test]
async fn clearing_the_refusals_of_delivered_rows_probes_each_key() {
    let db = TestDb::new().await;
    let store = one_session_store(&db).await;
    let run = refuse_many(&store).await;
    let (scans, read) = pkey_reads(&store).await;

    // The model held refusals before the run: every delivered row may clear one.
    let rows = delivered(5);
    store
        .record_acknowledged("crm", run, &[&rows], &MayBeRefused::new(true))
        .await
        .expect("recorded");

    let (scans_after, read_after) = pkey_reads(&store).await;
    assert!(
        scans_after - scans >= rows.len() as i64,
        "{} index scans for {} keys",
        scans_after - scans,
        rows.len()
    );
    assert!(
        read_after - read <= 10,
        "{} refusals read to clear 5 of them",
        read_after - read
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(left, (REFUSED - 5) as i64);
    let cleared: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM capi_sync.refused_rows WHERE row_key[1] IN ('r0','r1','r2','r3','r4')",
    )
    .fetch_one(store.pool())
    .await
    .expect("count");
    assert_eq!(cleared, 0);
}

#[tokio::test]
async fn looking_up_which_rows_are_refused_probes_each_key() {
    let db = TestDb::new().await;
    let store = one_session_store(&db).await;
    refuse_many(&store).await;
    let (scans, read) = pkey_reads(&store).await;

    let keys: Vec<Vec<String>> = (0..DELIVERED)
        .map(|i| vec![format!("d{i}")])
        .chain((0..3).map(|i| vec![format!("r{i}")]))
        .collect();
    let found = store.refused_among("crm", &keys).await.expect("looked up");

    let (scans_after, read_after) = pkey_reads(&store).await;
    assert_eq!(
        found,
        (0..3).map(|i| vec![format!("r{i}")]).collect(),
        "exactly the refused keys"
    );
    assert!(scans_after - scans >= keys.len() as i64);
    assert!(
        read_after - read <= 6,
        "{} refusals read to find 3",
        read_after - read
    );
}

#[tokio::test]
async fn refusals_of_composite_keys_are_cleared_key_by_key_and_exactly() {
    let db = TestDb::new().await;
    let store = one_session_store(&db).await;
    let run = store.start_run("crm", "manual").await.expect("run");
    // Keys of two columns, two that differ only in where the parts split.
    let key = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
    let refused_keys = [
        key("s1", "1"),
        key("s", "11"),
        key("s2", "1"),
        key("s3", "x"),
    ];
    let settlement = Settlement {
        refused: refused_keys
            .iter()
            .map(|k| RefusedRow {
                row_key: k.clone(),
                event_id: None,
                reason: "customer_information_too_broad".into(),
                detail: "only location fields".into(),
                meta_code: None,
                meta_subcode: None,
                cursor_value: None,
            })
            .collect(),
        ..Default::default()
    };
    store
        .settle("crm", run, &settlement, &RunCounters::default())
        .await
        .expect("refusals settle");
    let (scans, _) = pkey_reads(&store).await;

    let rows: Vec<Delivered> = [key("s1", "1"), key("s3", "x"), key("s9", "9")]
        .into_iter()
        .enumerate()
        .map(|(i, row_key)| Delivered {
            event_id: format!("{i:0>32}"),
            row_key,
            event_name: "Purchase".into(),
            event_time: 1_764_000_000,
            fingerprint: "f".into(),
            fbtrace_id: None,
        })
        .collect();
    store
        .record_acknowledged("crm", run, &[&rows], &MayBeRefused::new(true))
        .await
        .expect("recorded");

    let (scans_after, _) = pkey_reads(&store).await;
    assert!(scans_after - scans >= 3, "one probe per delivered key");
    let mut left = store.refused_keys("crm").await.expect("refused keys");
    left.sort();
    assert_eq!(left, vec![key("s", "11"), key("s2", "1")]);
}

/// A run of a model that already holds refusals: the keys it delivers are looked up only
/// where they may be refused, and those refusals are still cleared.
#[tokio::test]
async fn a_run_reads_the_models_refusals_and_probes_only_keys_that_may_be_among_them() {
    let db = TestDb::new().await;
    let store = one_session_store(&db).await;
    let run = refuse_many(&store).await;
    let may_be = store
        .may_be_refused("crm", false, capi_sync::state::REFUSALS_FILTERED_AT_MOST)
        .await
        .expect("refusals read");
    let (scans, _) = pkey_reads(&store).await;

    let rows = delivered(5);
    store
        .record_acknowledged("crm", run, &[&rows], &may_be)
        .await
        .expect("recorded");

    let (scans_after, _) = pkey_reads(&store).await;
    // The five refused keys, and a false positive or two of the filter at most.
    assert!(
        (5..=10).contains(&(scans_after - scans)),
        "{} index scans for 5 refused keys among {}",
        scans_after - scans,
        rows.len()
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(left, (REFUSED - 5) as i64);
}

#[tokio::test]
async fn past_the_limit_or_for_retry_every_delivered_row_is_looked_up() {
    let db = TestDb::new().await;
    let store = one_session_store(&db).await;
    let run = refuse_many(&store).await;
    for may_be in [
        store.may_be_refused("crm", false, REFUSED - 1).await,
        store.may_be_refused("crm", true, REFUSED).await,
    ] {
        let may_be = may_be.expect("refusals read");
        let (scans, _) = pkey_reads(&store).await;
        let rows = delivered(0);
        store
            .record_acknowledged("crm", run, &[&rows[..100]], &may_be)
            .await
            .expect("recorded");
        let (scans_after, _) = pkey_reads(&store).await;
        assert!(scans_after - scans >= 100, "{may_be:?}");
        sqlx::query("DELETE FROM capi_sync.deliveries")
            .execute(store.pool())
            .await
            .expect("ledger emptied for the next pass");
    }
    // Exactly at the limit, the refusals are read.
    let may_be = store
        .may_be_refused("crm", false, REFUSED)
        .await
        .expect("refusals read");
    assert!(!format!("{may_be:?}").contains("every_row: true"));
}
