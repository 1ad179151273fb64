//! The delivery ledger in generations: a new partition once the newest one's index is full,
//! lookups that see every generation, a repeated write that leaves one row per event id, and
//! pruning that drops the generations it emptied.

use crate::helpers::*;
use capi_sync::config::{Config, Secret};
use capi_sync::state::{
    CursorPosition, Delivered, MayBeRefused, RunCounters, Settlement, StateStore,
};
use std::time::Duration;

fn delivered(id: &str, fingerprint: &str) -> Delivered {
    Delivered {
        row_key: vec![format!("key-{id}")],
        event_id: id.into(),
        event_name: "Lead".into(),
        event_time: 1_764_000_000,
        fingerprint: fingerprint.into(),
        fbtrace_id: None,
    }
}

/// A store whose generations are full from their first byte: every write starts one.
async fn store_one_write_per_generation(db: &TestDb) -> StateStore {
    let store = StateStore::connect(&Secret::new(db.url.clone()), "capi_sync")
        .await
        .expect("connect")
        .with_ledger_partition_bytes(1);
    store.migrate().await.expect("migrate");
    store
}

async fn generations(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar("SELECT generation FROM capi_sync.ledger_generations ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// (generation, event id) of every ledger row, read through each partition's own table.
async fn rows_by_partition(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT tableoid::regclass::text, event_id FROM capi_sync.deliveries ORDER BY 2, 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_full_generation_starts_the_next_and_lookups_see_them_all() {
    let db = TestDb::new().await;
    let store = store_one_write_per_generation(&db).await;
    assert_eq!(generations(&db).await, vec![0]);
    let run = store.start_run("crm", "test").await.unwrap();
    for (id, fp) in [("a", "fa"), ("b", "fb"), ("c", "fc")] {
        store
            .record_acknowledged(
                "crm",
                run,
                &[&[delivered(id, fp)]],
                &MayBeRefused::new(false),
            )
            .await
            .unwrap();
    }
    assert_eq!(generations(&db).await, vec![0, 1, 2, 3]);
    assert_eq!(
        rows_by_partition(&db).await,
        vec![
            ("capi_sync.deliveries_g1".into(), "a".into()),
            ("capi_sync.deliveries_g2".into(), "b".into()),
            ("capi_sync.deliveries_g3".into(), "c".into()),
        ]
    );
    let ids: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let found = store.delivered_fingerprints("crm", &ids).await.unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found["a"], "fa");
    assert_eq!(found["c"], "fc");
    let rows = store.delivered_rows("crm", &ids).await.unwrap();
    assert_eq!(rows["b"], (vec!["key-b".to_string()], "fb".to_string()));
    // Another model sees none of them.
    assert!(store
        .delivered_fingerprints("orders", &ids)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_repeated_write_leaves_one_row_per_event_whatever_its_generation() {
    let db = TestDb::new().await;
    let store = store_one_write_per_generation(&db).await;
    let run = store.start_run("crm", "test").await.unwrap();
    store
        .record_acknowledged(
            "crm",
            run,
            &[&[delivered("a", "f1"), delivered("b", "f1")]],
            &MayBeRefused::new(false),
        )
        .await
        .unwrap();
    // The cursor's transaction records the same events again (their early write's answer was
    // lost): it replaces the rows in the older generation instead of adding a second.
    let settlement = Settlement {
        position: Some(CursorPosition {
            cursor_value: "2026-12-06 10:00:00+00".into(),
            row_key: vec!["2".into()],
        }),
        delivered: vec![delivered("a", "f2"), delivered("b", "f2")],
        ..Default::default()
    };
    store
        .settle("crm", run, &settlement, &RunCounters::default())
        .await
        .unwrap();
    assert_eq!(
        rows_by_partition(&db).await,
        vec![
            ("capi_sync.deliveries_g2".into(), "a".into()),
            ("capi_sync.deliveries_g2".into(), "b".into()),
        ]
    );
    let ids = vec!["a".to_string()];
    assert_eq!(
        store.delivered_fingerprints("crm", &ids).await.unwrap()["a"],
        "f2"
    );
}

#[tokio::test]
async fn pruning_drops_the_generations_it_empties_and_keeps_the_newest() {
    let db = TestDb::new().await;
    let store = store_one_write_per_generation(&db).await;
    let run = store.start_run("crm", "test").await.unwrap();
    for id in ["old", "recent", "newest"] {
        store
            .record_acknowledged(
                "crm",
                run,
                &[&[delivered(id, "f")]],
                &MayBeRefused::new(false),
            )
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE capi_sync.deliveries SET delivered_at = now() - interval '30 days'
         WHERE event_id IN ('old', 'newest')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pruned = store
        .prune_ledger(Duration::from_secs(14 * 86_400))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    // Generation 0 (never written) and 1 ("old") are gone; 2 still holds "recent"; 3, the
    // newest, stays although pruning emptied it: writers are about to use it.
    assert_eq!(generations(&db).await, vec![2, 3]);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'capi_sync.deliveries'::regclass ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, vec!["deliveries_g2", "deliveries_g3"]);
    assert_eq!(
        rows_by_partition(&db).await,
        vec![("capi_sync.deliveries_g2".into(), "recent".into())]
    );
    // Writing goes on into the newest generation, or the one after it.
    store
        .record_acknowledged(
            "crm",
            run,
            &[&[delivered("later", "f")]],
            &MayBeRefused::new(false),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .delivered_fingerprints("crm", &["later".to_string()])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn the_default_size_follows_the_servers_shared_buffers() {
    let db = TestDb::new().await;
    let store = StateStore::connect(&Secret::new(db.url.clone()), "capi_sync")
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let run = store.start_run("crm", "test").await.unwrap();
    for i in 0..5 {
        let rows: Vec<Delivered> = (0..200)
            .map(|j| delivered(&format!("e{i}-{j}"), "f"))
            .collect();
        store
            .record_acknowledged("crm", run, &[&rows], &MayBeRefused::new(false))
            .await
            .unwrap();
    }
    // A thousand events are far below a quarter of any shared_buffers the server allows
    // to start with (8 MiB at least): one generation holds them all.
    assert_eq!(generations(&db).await, vec![0]);
    assert_eq!(rows_by_partition(&db).await.len(), 1000);
}

fn config_one_write_per_generation(db: &TestDb, graph_url: &str) -> Config {
    Config::from_toml_str(
        &config_text(
            db,
            graph_url,
            "[state]\nledger_partition_bytes = 1",
            &LEADS_MODEL.replace(
                "cursor = \"updated_at\"",
                "cursor = \"updated_at\"\nbatch_size = 5",
            ),
        ),
        std::path::Path::new("."),
    )
    .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

#[tokio::test]
async fn rows_read_again_are_found_in_whichever_generation_holds_them() {
    let (db, sandbox) = leads_and_sandbox(23).await;
    let ctx = context(config_one_write_per_generation(&db, &sandbox.base_url())).await;
    let first = sync(&ctx, "leads").await;
    assert_eq!(first.counters.events_sent, 23, "{first:?}");
    assert!(
        generations(&db).await.len() >= 3,
        "batches of 5 spread over generations: {:?}",
        generations(&db).await
    );
    change_every_lead(&db).await;
    let second = sync(&ctx, "leads").await;
    assert_eq!(second.counters.events_sent, 0, "{second:?}");
    assert_eq!(second.counters.rows_already_sent, 23, "{second:?}");
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 23);
    assert!(counts.values().all(|&n| n == 1), "nothing was sent twice");
}
