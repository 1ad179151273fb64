//! The delivery ledger as written by `settle` and by senders' early writes: the bulk COPY
//! path, and the replacement of an event id already there.

use crate::helpers::TestDb;
use capi_sync::config::Secret;
use capi_sync::pipeline::ledger_writer::LedgerWriter;
use capi_sync::state::{
    CursorPosition, Delivered, MayBeRefused, RunCounters, Settlement, StateStore,
};

fn delivered(id: &str, key: &[&str], fingerprint: &str, trace: Option<&str>) -> Delivered {
    Delivered {
        row_key: key.iter().map(|s| s.to_string()).collect(),
        event_id: id.into(),
        event_name: "Closed Won".into(),
        event_time: 1_764_000_000,
        fingerprint: fingerprint.into(),
        fbtrace_id: trace.map(Into::into),
    }
}

async fn store(db: &TestDb) -> StateStore {
    let store = StateStore::connect(&Secret::new(db.url.clone()), "capi_sync")
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

type LedgerRow = (
    String,
    Vec<String>,
    String,
    String,
    i64,
    Option<String>,
    i64,
);

async fn ledger(db: &TestDb) -> Vec<LedgerRow> {
    sqlx::query_as(
        "SELECT event_id, row_key, event_name, fingerprint, extract(epoch FROM event_time)::bigint,
                fbtrace_id, run_id
         FROM capi_sync.deliveries WHERE model = 'crm' ORDER BY event_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("ledger")
}

#[tokio::test]
async fn settled_rows_land_in_the_ledger_field_for_field() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = store.start_run("crm", "manual").await.expect("run");
    let settlement = Settlement {
        position: Some(CursorPosition {
            cursor_value: "2026-11-28 10:00:00+00".into(),
            row_key: vec!["b\t\"x\"".into(), "7".into()],
        }),
        delivered: vec![
            // Keys with characters text formats would have to escape, and a non-ASCII name.
            delivered("a1", &["b\t\"x\"", "7"], "f1", Some("trace-1")),
            delivered("a2", &["c,{}\\", "ü"], "f2", None),
        ],
        ..Default::default()
    };
    store
        .settle("crm", run, &settlement, &RunCounters::default())
        .await
        .expect("settle");
    let rows = ledger(&db).await;
    assert_eq!(
        rows,
        vec![
            (
                "a1".into(),
                vec!["b\t\"x\"".into(), "7".into()],
                "Closed Won".into(),
                "f1".into(),
                1_764_000_000,
                Some("trace-1".into()),
                run
            ),
            (
                "a2".into(),
                vec!["c,{}\\".into(), "ü".into()],
                "Closed Won".into(),
                "f2".into(),
                1_764_000_000,
                None,
                run
            ),
        ]
    );
    let cursor = store.cursor("crm").await.expect("cursor").expect("moved");
    assert_eq!(cursor.row_key, vec!["b\t\"x\"".to_string(), "7".into()]);
}

/// A write of more `COPY` data than the driver is handed at once (256 KiB) goes in pieces,
/// split wherever the bytes fall, mid-row included: every row must land whole.
#[tokio::test]
async fn a_write_larger_than_one_piece_lands_every_row_whole() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = store.start_run("crm", "manual").await.expect("run");
    // About 400 bytes of COPY data a row: 3,000 rows are near 1.2 MB, five pieces.
    let written: Vec<Delivered> = (0..3000)
        .map(|i| {
            let key = format!("{i:06}-{}", "k".repeat(300));
            let trace = format!("trace-{i}");
            delivered(
                &format!("id-{i:06}"),
                &[&key, "ü"],
                &format!("fp{i}"),
                Some(&trace),
            )
        })
        .collect();
    store
        .record_acknowledged("crm", run, &[&written], &MayBeRefused::new(false))
        .await
        .expect("one write");
    let rows = ledger(&db).await;
    let expected: Vec<LedgerRow> = written
        .iter()
        .map(|d| {
            (
                d.event_id.clone(),
                d.row_key.clone(),
                d.event_name.clone(),
                d.fingerprint.clone(),
                d.event_time,
                d.fbtrace_id.as_deref().map(str::to_string),
                run,
            )
        })
        .collect();
    assert_eq!(rows.len(), 3000);
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn an_event_id_already_in_the_ledger_is_updated_and_the_rest_of_the_stretch_recorded() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let first = store.start_run("crm", "manual").await.expect("run");
    let once = Settlement {
        delivered: vec![delivered("a1", &["1"], "old", Some("t1"))],
        ..Default::default()
    };
    store
        .settle("crm", first, &once, &RunCounters::default())
        .await
        .expect("first settle");
    // Sent again (its acknowledgement was lost with a crash), next to a new event.
    let second = store.start_run("crm", "manual").await.expect("run");
    let again = Settlement {
        position: after_row_2(),
        delivered: vec![
            delivered("a1", &["1"], "new", Some("t2")),
            delivered("a2", &["2"], "f2", None),
        ],
        ..Default::default()
    };
    store
        .settle("crm", second, &again, &RunCounters::default())
        .await
        .expect("second settle replaces the ledger rows of its ids");
    let rows = ledger(&db).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].3.as_str(), rows[0].6), ("new", second));
    assert_eq!(rows[0].5.as_deref(), Some("t2"));
    assert_eq!((rows[1].0.as_str(), rows[1].6), ("a2", second));
    let cursor = store.cursor("crm").await.expect("cursor").expect("moved");
    assert_eq!(cursor.cursor_value, "5");
}

#[tokio::test]
async fn events_whose_early_write_landed_unseen_are_recorded_once_by_the_cursors_transaction() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = store.start_run("crm", "manual").await.expect("run");
    // The early write commits, but its answer is lost: the sender hands the events to the
    // cursor's transaction, which records them again.
    let acked = record_two_early(&store, run).await;
    let later = store.start_run("crm", "manual").await.expect("run");
    let settle = Settlement {
        position: after_row_2(),
        delivered: acked,
        ..Default::default()
    };
    store
        .settle("crm", later, &settle, &RunCounters::default())
        .await
        .expect("settle");
    let rows = ledger(&db).await;
    assert_eq!(rows.len(), 2, "one ledger row per event id: {rows:?}");
    assert!(rows.iter().all(|r| r.6 == later), "{rows:?}");
    let found = store
        .delivered_fingerprints("crm", &["a1".into(), "a2".into(), "a3".into()])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 2);
    assert_eq!(found["a1"], "f1");
}

/// Events a1 (row 1) and a2 (row 2), acknowledged in one batch and written by their sender.
async fn record_two_early(store: &StateStore, run: i64) -> Vec<Delivered> {
    let acked = vec![
        delivered("a1", &["1"], "f1", Some("t1")),
        delivered("a2", &["2"], "f2", Some("t1")),
    ];
    store
        .record_acknowledged("crm", run, &[&acked], &MayBeRefused::new(false))
        .await
        .expect("recorded");
    acked
}

fn after_row_2() -> Option<CursorPosition> {
    Some(CursorPosition {
        cursor_value: "5".into(),
        row_key: vec!["2".into()],
    })
}

/// Starts a run that refuses row 1 (event a1); returns the run id.
async fn refuse_row_1(store: &StateStore) -> i64 {
    let run = store.start_run("crm", "manual").await.expect("run");
    let refusal = Settlement {
        refused: vec![capi_sync::state::RefusedRow {
            row_key: vec!["1".into()],
            event_id: Some("a1".into()),
            reason: "rejected_by_meta".into(),
            detail: "Meta rejected the event (code 100)".into(),
            meta_code: Some(100),
            meta_subcode: None,
            cursor_value: Some("4".into()),
        }],
        ..Default::default()
    };
    store
        .settle("crm", run, &refusal, &RunCounters::default())
        .await
        .expect("refusal settles");
    assert!(!store.refused_keys("crm").await.expect("refused").is_empty());
    run
}

#[tokio::test]
async fn events_recorded_by_their_sender_clear_refusals_when_the_cursor_settles() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    // Row 1 was refused in an earlier stretch; now its fixed event is acknowledged.
    let run = refuse_row_1(&store).await;

    // The sender writes the ledger rows at once: the cursor has not moved yet.
    let acked = record_two_early(&store, run).await;
    assert_eq!(ledger(&db).await.len(), 2);
    assert!(store.cursor("crm").await.expect("cursor").is_none());

    // Settling moves the cursor, clears the refusal and writes no second ledger row.
    let settle = Settlement {
        position: after_row_2(),
        recorded: acked.into_iter().map(|d| d.row_key).collect(),
        clear_refused: Some(std::sync::Arc::new(MayBeRefused::new(true))),
        ..Default::default()
    };
    store
        .settle("crm", run, &settle, &RunCounters::default())
        .await
        .expect("settle");
    assert_eq!(ledger(&db).await.len(), 2);
    assert!(store.refused_keys("crm").await.expect("refused").is_empty());
    let cursor = store.cursor("crm").await.expect("cursor").expect("moved");
    assert_eq!(cursor.cursor_value, "5");
}

#[tokio::test]
async fn an_early_ledger_write_clears_the_rows_refusal_in_the_same_transaction() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = refuse_row_1(&store).await;
    // A crash after this write and before the cursor's commit must not leave the delivered
    // row listed as refused.
    store
        .record_acknowledged(
            "crm",
            run,
            &[&[delivered("a1", &["1"], "f1", None)]],
            &MayBeRefused::new(true),
        )
        .await
        .expect("recorded");
    assert!(store.refused_keys("crm").await.expect("refused").is_empty());
    assert_eq!(ledger(&db).await.len(), 1);
}

/// A later run finds row 1's new event already in the ledger (its sender wrote it, then the
/// process died before the cursor moved, and the row's old refusal was committed after that
/// write). Nothing is sent; settling the row clears its refusal all the same.
#[tokio::test]
async fn a_row_found_already_sent_loses_its_older_refusal() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = refuse_row_1(&store).await;
    let settle = Settlement {
        position: after_row_2(),
        already_sent: vec![vec!["1".into()]],
        clear_refused: Some(std::sync::Arc::new(MayBeRefused::new(true))),
        ..Default::default()
    };
    let counters = RunCounters {
        rows_already_sent: 1,
        ..Default::default()
    };
    store
        .settle("crm", run, &settle, &counters)
        .await
        .expect("settle");
    assert!(store.refused_keys("crm").await.expect("refused").is_empty());
    assert!(ledger(&db).await.is_empty(), "nothing is recorded as sent");
}

fn batch(ids: &[&str]) -> Vec<Delivered> {
    ids.iter()
        .map(|id| delivered(id, &[&id[1..]], &format!("f{id}"), Some("t")))
        .collect()
}

/// Batches acknowledged while a write is under way are written together: one transaction
/// for all three here, every row in the ledger, each batch given back its own rows.
#[tokio::test]
async fn the_ledger_writer_groups_queued_batches_into_one_write() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = store.start_run("crm", "manual").await.expect("run");
    let writer = LedgerWriter::start(
        store.clone(),
        "crm".into(),
        run,
        std::sync::Arc::new(capi_sync::state::MayBeRefused::new(false)),
    );
    // On this single-threaded runtime the writer first runs once all three are queued.
    let (a, b, c) = tokio::join!(
        writer.record(batch(&["a1", "a2"])),
        writer.record(batch(&["b3"])),
        writer.record(batch(&["c4", "c5"])),
    );
    for (given, (rows, outcome)) in [
        (vec!["a1", "a2"], a),
        (vec!["b3"], b),
        (vec!["c4", "c5"], c),
    ] {
        outcome.expect("written");
        let ids: Vec<&str> = rows.iter().map(|d| d.event_id.as_str()).collect();
        assert_eq!(ids, given);
    }
    assert_eq!(writer.writes(), 1);
    let rows = ledger(&db).await;
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "b3", "c4", "c5"]);
    assert!(rows.iter().all(|r| r.6 == run));
    // A batch acknowledged later gets a write of its own.
    let (_, outcome) = writer.record(batch(&["d6"])).await;
    outcome.expect("written");
    assert_eq!(writer.writes(), 2);
    assert_eq!(ledger(&db).await.len(), 6);
}

/// A write that fails gives every batch in it its rows back (for the cursor's transaction)
/// and leaves none of them in the ledger.
#[tokio::test]
async fn a_failed_ledger_write_gives_each_batch_its_rows_back() {
    let db = TestDb::new().await;
    let store = store(&db).await;
    let run = store.start_run("crm", "manual").await.expect("run");
    sqlx::query(
        "ALTER TABLE capi_sync.deliveries ADD CONSTRAINT refuse_b3 CHECK (event_id <> 'b3')",
    )
    .execute(&db.pool)
    .await
    .expect("constraint");
    let writer = LedgerWriter::start(
        store.clone(),
        "crm".into(),
        run,
        std::sync::Arc::new(capi_sync::state::MayBeRefused::new(false)),
    );
    let (a, b) = tokio::join!(
        writer.record(batch(&["a1", "a2"])),
        writer.record(batch(&["b3"])),
    );
    let (rows_a, outcome_a) = a;
    let (rows_b, outcome_b) = b;
    assert!(outcome_a.is_err() && outcome_b.is_err());
    assert_eq!(rows_a.len(), 2);
    assert_eq!(rows_a[1].event_id, "a2");
    assert_eq!(rows_b[0].event_id, "b3");
    assert!(ledger(&db).await.is_empty());
}
