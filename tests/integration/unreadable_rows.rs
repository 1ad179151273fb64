//! Rows keyset paging cannot handle are counted, not hidden: rows with a NULL cursor or key
//! (which the reader never sees) in every run's summary, the runs table, `status --json`,
//! `/metrics` and `check`; a row repeating another's (cursor, primary key) is refused as
//! `duplicate_primary_key`, on a page or across a page boundary.

use crate::helpers::*;
use capi_sync::metrics::Metrics;
use capi_sync::observer::RunObserver;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunStatus, RunSummary, SyncContext};
use capi_sync::sandbox::Faults;
use std::process::Stdio;
use std::sync::Arc;

/// `crm.signups` without key constraints, so the model's output can hold what a careless
/// view or join produces.
async fn create_signups(db: &TestDb) {
    sqlx::query("CREATE SCHEMA crm")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE crm.signups (id bigint, updated_at timestamptz, email text, happened_at timestamptz)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Adds a row: `id` and the cursor as `minute` minutes past a fixed hour (None: NULL).
async fn add(db: &TestDb, id: Option<i64>, minute: Option<i64>) {
    sqlx::query(
        "INSERT INTO crm.signups (id, updated_at, email, happened_at)
         VALUES ($1, date_trunc('hour', now()) - interval '2 hours' + make_interval(mins => $2::int),
                 'person' || coalesce($1, 0) || '@example.com', now() - interval '1 hour')",
    )
    .bind(id)
    .bind(minute)
    .execute(&db.pool)
    .await
    .unwrap();
}

fn model(extra: &str) -> String {
    format!(
        r#"
[[models]]
name = "signups"
pixel_id = "123456789012345"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, 'Lead' AS event_name, happened_at AS event_time, email AS em FROM crm.signups"
primary_key = "id"
cursor = "updated_at"
{extra}
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#
    )
}

async fn run_observed(ctx: &SyncContext, metrics: &Arc<Metrics>) -> RunSummary {
    let observer: Arc<dyn RunObserver> = metrics.clone();
    let m = ctx.config.model("signups").unwrap().clone();
    sync_model_once(
        ctx,
        &m,
        &RunOptions {
            trigger: "test".into(),
            observer: Some(observer),
            ..Default::default()
        },
    )
    .await
}

async fn cli(db: &TestDb, graph_url: &str, models: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capi-sync.toml");
    std::fs::write(&path, config_text(db, graph_url, "", models)).unwrap();
    let mut cmd = binary();
    cmd.arg("--config").arg(&path).args(args);
    let out = cmd
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run capi-sync");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn rows_with_a_null_cursor_or_key_are_counted_in_the_summary_status_and_metrics() {
    let db = TestDb::new().await;
    create_signups(&db).await;
    for id in 1..=4 {
        add(&db, Some(id), Some(id)).await;
    }
    add(&db, Some(5), None).await;
    add(&db, Some(6), None).await;
    add(&db, None, Some(7)).await;
    add(&db, None, None).await; // A NULL cursor counts once, as a NULL cursor.
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), &model(""))).await;
    let metrics = Arc::new(Metrics::new(["signups"]));

    let run = run_observed(&ctx, &metrics).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 4);
    assert_eq!(run.counters.events_sent, 4, "{:?}", run.counters);
    assert_eq!(run.counters.rows_null_cursor, Some(3));
    assert_eq!(run.counters.rows_null_key, Some(1));
    let text = capi_sync::commands::summary::format_summary(&run, false);
    assert!(
        text.contains("unreadable: 3 rows with a NULL cursor, 1 with a NULL in the primary key"),
        "{text}"
    );

    let stored: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT rows_null_cursor, rows_null_key FROM capi_sync.runs WHERE id = $1")
            .bind(run.run_id.unwrap())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, (Some(3), Some(1)));

    let rendered = metrics.render();
    assert!(
        rendered
            .contains("capi_sync_rows_unreadable{model=\"signups\",reason=\"null_cursor\"} 3\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains("capi_sync_rows_unreadable{model=\"signups\",reason=\"null_key\"} 1\n"),
        "{rendered}"
    );

    let (code, out) = cli(&db, &sandbox.base_url(), &model(""), &["status", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        status["models"][0]["last_run"]["unreadable_rows"],
        serde_json::json!({ "null_cursor": 3, "null_key": 1 }),
        "{out}"
    );
    let (_, text) = cli(&db, &sandbox.base_url(), &model(""), &["status"]).await;
    assert!(
        text.contains("unreadable: 3 rows with a NULL cursor, 1 with a NULL in the primary key"),
        "{text}"
    );
}

#[tokio::test]
async fn a_duplicated_key_is_refused_with_its_own_reason_and_counted() {
    let db = TestDb::new().await;
    create_signups(&db).await;
    for id in 1..=5 {
        add(&db, Some(id), Some(id)).await;
    }
    add(&db, Some(3), Some(3)).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), &model(""))).await;
    let metrics = Arc::new(Metrics::new(["signups"]));

    let run = run_observed(&ctx, &metrics).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 6);
    assert_eq!(run.counters.events_sent, 5);
    assert_eq!(
        run.counters.rows_already_sent, 0,
        "the copy passed for sent"
    );
    assert_eq!(
        run.counters.refused_by_reason.get("duplicate_primary_key"),
        Some(&1)
    );
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 5);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");

    let (key, reason, detail): (Vec<String>, String, String) = sqlx::query_as(
        "SELECT row_key, reason, detail FROM capi_sync.refused_rows WHERE model = 'signups'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(key, vec!["3".to_string()]);
    assert_eq!(reason, "duplicate_primary_key");
    assert!(detail.contains("primary_key (id)"), "{detail}");
    assert!(!detail.contains("example.com"), "{detail}");
    let rendered = metrics.render();
    assert!(
        rendered.contains(
            "capi_sync_rows_refused_total{model=\"signups\",reason=\"duplicate_primary_key\"} 1\n"
        ),
        "{rendered}"
    );
}

#[tokio::test]
async fn every_copy_of_a_key_repeated_across_page_boundaries_is_read_and_refused() {
    let db = TestDb::new().await;
    create_signups(&db).await;
    // Pages of 2 rows: [1, 2], then four more rows at row 2's position, then row 3. Paging
    // strictly after the last row read would skip every copy.
    add(&db, Some(1), Some(1)).await;
    for _ in 0..4 {
        add(&db, Some(2), Some(2)).await;
    }
    add(&db, Some(3), Some(3)).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), &model("page_size = 2"))).await;

    let run = sync(&ctx, "signups").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 6);
    assert_eq!(run.counters.events_sent, 3);
    assert_eq!(
        run.counters.refused_by_reason.get("duplicate_primary_key"),
        Some(&3)
    );
    assert_eq!(
        cursor_key(&db.pool, "signups").await,
        Some(vec!["3".into()])
    );

    // The next run starts after row 3: nothing read again, nothing sent again.
    add(&db, Some(4), Some(4)).await;
    let next = sync(&ctx, "signups").await;
    assert_eq!(next.counters.rows_read, 1);
    assert_eq!(next.counters.events_sent, 1);
    assert_eq!(sandbox.events().len(), 4);
}

#[tokio::test]
async fn check_warns_with_the_counts_of_null_and_duplicated_rows() {
    let db = TestDb::new().await;
    create_signups(&db).await;
    for id in 1..=3 {
        add(&db, Some(id), Some(id)).await;
    }
    add(&db, Some(2), Some(2)).await; // same key, same cursor
    add(&db, Some(3), Some(9)).await; // same key, another cursor
    add(&db, Some(7), None).await;
    add(&db, None, Some(8)).await;
    add(&db, None, Some(9)).await;
    let sandbox = start_sandbox(Faults::default()).await;

    let (code, out) = cli(
        &db,
        &sandbox.base_url(),
        &model(""),
        &["check", "--offline"],
    )
    .await;
    assert_eq!(code, 0, "warnings do not fail check: {out}");
    assert!(
        out.contains("signups: rows: warning — 1 row with a NULL cursor (updated_at) and 2 with a NULL in the primary key (id)"),
        "{out}"
    );
    assert!(
        out.contains("signups: rows: warning — 2 primary key value(s) (id) are on more than one row; 1 of them also share the cursor value"),
        "{out}"
    );
    assert!(!out.contains("example.com"), "{out}");
}

#[tokio::test]
async fn check_says_ok_when_every_row_is_readable_and_keys_are_unique() {
    let db = TestDb::new().await;
    create_signups(&db).await;
    for id in 1..=3 {
        add(&db, Some(id), Some(id)).await;
    }
    let sandbox = start_sandbox(Faults::default()).await;
    let (code, out) = cli(
        &db,
        &sandbox.base_url(),
        &model(""),
        &["check", "--offline"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "signups: rows: ok — no row has a NULL cursor (updated_at) or primary key (id)"
        ),
        "{out}"
    );
    assert!(
        out.contains("signups: rows: ok — each primary key (id) is on one row"),
        "{out}"
    );
}

#[tokio::test]
async fn retry_keeps_a_duplicate_refused_until_its_copy_is_gone() {
    let db = TestDb::new().await;
    create_signups(&db).await;
    for id in 1..=3 {
        add(&db, Some(id), Some(id)).await;
    }
    add(&db, Some(2), Some(2)).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), &model(""))).await;
    assert_eq!(sync(&ctx, "signups").await.counters.events_sent, 3);
    let retry = |ctx: SyncContext| async move {
        let m = ctx.config.model("signups").unwrap().clone();
        sync_model_once(
            &ctx,
            &m,
            &RunOptions {
                mode: capi_sync::pipeline::RunMode::RetryRefused,
                trigger: "retry".into(),
                ..Default::default()
            },
        )
        .await
    };
    let refused = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT reason FROM capi_sync.refused_rows WHERE model = 'signups'",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };

    let again = retry(ctx.clone()).await;
    assert_eq!(again.status, RunStatus::Succeeded, "{:?}", again.error);
    assert_eq!(again.counters.events_sent, 0);
    assert_eq!(
        refused(&db).await,
        vec!["duplicate_primary_key".to_string()]
    );

    sqlx::query(
        "DELETE FROM crm.signups WHERE ctid = (SELECT max(ctid) FROM crm.signups WHERE id = 2)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let fixed = retry(ctx.clone()).await;
    assert_eq!(fixed.status, RunStatus::Succeeded, "{:?}", fixed.error);
    assert_eq!(
        fixed.counters.events_sent, 0,
        "row 2's event was sent already"
    );
    assert!(refused(&db).await.is_empty(), "{:?}", fixed.counters);
    assert_eq!(sandbox.events().len(), 3);
}
