//! Every value Postgres can return: `±infinity` and out-of-range times, NaN and infinite
//! numbers, over-long text, JSON serde cannot hold, control characters. None stops a model:
//! an event-level value refuses its row with a reason, a field value drops the field, and
//! ignored columns are never fetched. Also: cursors at `infinity`, a stored key of another
//! arity, pages bounded by bytes, and Postgres data errors that quote customer values.

use crate::helpers::*;
use capi_sync::pipeline::RunStatus;
use capi_sync::sandbox::Faults;
use capi_sync::source::{LowerBound, ReadRange, SourceRow};
use std::path::Path;

async fn exec(db: &TestDb, sql: &str) {
    sqlx::query(sql)
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// (row_key, reason, detail) of the model's refused rows, by key.
async fn refused(db: &TestDb, model: &str) -> Vec<(Vec<String>, String, String)> {
    sqlx::query_as(
        "SELECT row_key, reason, detail FROM capi_sync.refused_rows WHERE model = $1 ORDER BY row_key",
    )
    .bind(model)
    .fetch_all(&db.pool)
    .await
    .expect("read refused rows")
}

async fn stored_cursor(db: &TestDb, model: &str) -> Option<(String, Vec<String>)> {
    sqlx::query_as("SELECT cursor_value, row_key FROM capi_sync.cursors WHERE model = $1")
        .bind(model)
        .fetch_optional(&db.pool)
        .await
        .expect("read the cursor")
}

/// The shared test config with patience for a loaded machine: the Graph stand-in may answer
/// slowly while other tests run, and a timed-out batch must not fail these runs.
fn patient_config(db: &TestDb, graph_url: &str, models: &str) -> capi_sync::config::Config {
    let mut cfg = config(db, graph_url, models);
    cfg.meta.request_timeout = std::time::Duration::from_secs(60);
    cfg.meta.max_attempts = 6;
    cfg
}

const ODD_MODEL: &str = r#"
[[models]]
name = "odd"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT * FROM crm.odd"
primary_key = "id"
cursor = "updated_at"
ignore_columns = ["valid_to", "archived_on"]
[models.columns]
em = "email"
"custom_data.expires_at" = "expires_at"
"custom_data.score" = "score"
"custom_data.amount" = "amount"
"custom_data.blob" = "blob"
"custom_data.doc" = "doc"
"custom_data.note" = "note"
db = "birthday"
[models.constants]
event_name = "Lead"
action_source = "system_generated"
"#;

async fn create_odd_table(db: &TestDb) {
    exec(db, "CREATE SCHEMA crm").await;
    exec(
        db,
        "CREATE TABLE crm.odd (id int PRIMARY KEY, updated_at timestamptz NOT NULL,
            event_time timestamptz, email text, valid_to timestamptz, archived_on date,
            expires_at timestamp, score float8, amount numeric, blob text, doc json, note text,
            birthday date, contents text)",
    )
    .await;
}

#[tokio::test]
async fn infinity_in_ignored_columns_is_never_read_and_odd_field_values_drop_only_their_field() {
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    // Every row: infinite dates in the ignored columns (the reader panicked on these before,
    // on every run, at the same page). Rows 2-10 carry odd values in mapped fields.
    exec(
        &db,
        "INSERT INTO crm.odd (id, updated_at, event_time, email, valid_to, archived_on)
         SELECT g, now() - interval '1 hour' + g * interval '1 second', now() - interval '2 hours',
                'person' || g || '@example.com', 'infinity', '-infinity'
         FROM generate_series(1, 10) g",
    )
    .await;
    exec(
        &db,
        "UPDATE crm.odd SET expires_at = 'infinity' WHERE id = 2",
    )
    .await;
    exec(
        &db,
        "UPDATE crm.odd SET expires_at = '270000-01-01' WHERE id = 3",
    )
    .await;
    exec(
        &db,
        "UPDATE crm.odd SET score = 'NaN', amount = 'Infinity' WHERE id = 4",
    )
    .await;
    exec(
        &db,
        "UPDATE crm.odd SET blob = repeat('x', 70000) WHERE id = 5",
    )
    .await;
    exec(
        &db,
        "UPDATE crm.odd SET doc = '{\"big\": 1e400}' WHERE id = 6",
    )
    .await;
    exec(
        &db,
        "UPDATE crm.odd SET note = E'tab\\there\\x01\\x1f\\x7f \"q\" \\\\ end' WHERE id = 7",
    )
    .await;
    exec(&db, "UPDATE crm.odd SET birthday = 'infinity' WHERE id = 8").await;
    exec(
        &db,
        "UPDATE crm.odd SET score = 'Infinity', expires_at = '-infinity', doc = '[1, 2]',
            contents = '[{\"id\": \"sku-1\", \"quantity\": 2}]' WHERE id = 9",
    )
    .await;
    // JSON held in a text column, mapped to `contents` by its name: not JSON at all.
    exec(
        &db,
        "UPDATE crm.odd SET contents = '[{\"id\": \"sku-1\", ' WHERE id = 10",
    )
    .await;

    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(patient_config(&db, &sandbox.base_url(), ODD_MODEL)).await;
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 10);
    assert_eq!(run.counters.events_sent, 10, "{:?}", run.counters);
    assert_eq!(run.counters.rows_refused, 0);
    let dropped: Vec<(&str, i64)> = run
        .counters
        .dropped_by_field
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        dropped,
        vec![
            ("custom_data.amount:not_a_finite_number", 1),
            ("custom_data.blob:value_too_long", 1),
            ("custom_data.contents:invalid_contents", 1),
            ("custom_data.doc:invalid_json", 1),
            ("custom_data.expires_at:infinite_time", 2),
            ("custom_data.expires_at:time_out_of_range", 1),
            ("custom_data.score:not_a_finite_number", 2),
            ("db:infinite_time", 1),
        ]
    );

    let events = sandbox.events();
    let by_email_hash = |id: i32| {
        let hash = capi_sync::normalize::sha256_hex(&format!("person{id}@example.com"));
        events
            .iter()
            .find(|e| e["user_data"]["em"] == hash)
            .unwrap_or_else(|| panic!("row {id} was sent"))
            .clone()
    };
    // The odd field is left out; the rest of the event goes.
    assert!(by_email_hash(2)["custom_data"].get("expires_at").is_none());
    assert!(by_email_hash(5)["custom_data"].get("blob").is_none());
    assert!(by_email_hash(8)["user_data"].get("db").is_none());
    let nine = by_email_hash(9);
    assert_eq!(nine["custom_data"]["doc"], serde_json::json!([1, 2]));
    assert!(nine["custom_data"].get("score").is_none());
    assert_eq!(
        nine["custom_data"]["contents"],
        serde_json::json!([{"id": "sku-1", "quantity": 2}])
    );
    assert!(by_email_hash(10)["custom_data"].get("contents").is_none());
    // Control characters, quotes and backslashes arrive as they were.
    assert_eq!(
        by_email_hash(7)["custom_data"]["note"],
        "tab\there\u{1}\u{1f}\u{7f} \"q\" \\ end"
    );
    // The cursor passed every row: the next run has nothing to read.
    let again = sync(&ctx, "odd").await;
    assert_eq!(again.status, RunStatus::Succeeded, "{:?}", again.error);
    assert_eq!(again.counters.rows_read, 0);
}

#[tokio::test]
async fn an_event_time_at_infinity_or_beyond_chrono_refuses_its_row_with_a_reason() {
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    exec(
        &db,
        "INSERT INTO crm.odd (id, updated_at, event_time, email)
         SELECT g, now() - interval '1 hour' + g * interval '1 second',
                CASE g WHEN 2 THEN 'infinity'::timestamptz
                       WHEN 3 THEN '-infinity'::timestamptz
                       WHEN 4 THEN '280000-06-01 00:00:00+00'::timestamptz
                       WHEN 5 THEN '4713-01-01 BC'::timestamptz
                       ELSE now() - interval '2 hours' END,
                'person' || g || '@example.com'
         FROM generate_series(1, 6) g",
    )
    .await;
    let models = ODD_MODEL.replace("name = \"odd\"", "name = \"times\"");
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(patient_config(&db, &sandbox.base_url(), &models)).await;
    let run = sync(&ctx, "times").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 6);
    assert_eq!(run.counters.events_sent, 2);
    assert_eq!(run.counters.rows_refused, 4);
    let refusals = refused(&db, "times").await;
    let reasons: Vec<(&str, &str)> = refusals
        .iter()
        .map(|(k, r, _)| (k[0].as_str(), r.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("2", "invalid_event_time"),
            ("3", "invalid_event_time"),
            ("4", "invalid_event_time"),
            // Year 4713 BC is a time chrono can hold: Meta's window refuses it.
            ("5", "event_time_too_old"),
        ]
    );
    for (_, _, detail) in &refusals {
        assert!(detail.starts_with("event_time "), "{detail}");
        for value in ["infinity\"", "280000", "person"] {
            assert!(!detail.contains(value), "`{detail}` quotes the value");
        }
    }
    let cursor = stored_cursor(&db, "times").await.expect("cursor stored");
    assert_eq!(cursor.1, vec!["6".to_string()]);
}

#[tokio::test]
async fn rows_with_an_infinity_cursor_are_read_once_and_the_stored_cursor_round_trips() {
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    exec(
        &db,
        "INSERT INTO crm.odd (id, updated_at, event_time, email)
         SELECT g,
                CASE WHEN g = 1 THEN '-infinity'::timestamptz
                     WHEN g > 3 THEN 'infinity'::timestamptz
                     ELSE now() - interval '1 hour' + g * interval '1 second' END,
                now() - interval '2 hours', 'person' || g || '@example.com'
         FROM generate_series(1, 6) g",
    )
    .await;
    // Two rows a page: pages start after an `infinity` cursor; a lookback is subtracted from it.
    let models = ODD_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\npage_size = 2\nlookback = \"10m\"",
    );
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(patient_config(&db, &sandbox.base_url(), &models)).await;
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 6);
    assert_eq!(run.counters.events_sent, 6);
    assert_eq!(
        stored_cursor(&db, "odd").await,
        Some(("infinity".to_string(), vec!["6".to_string()]))
    );

    // `status` and `check` count the rows waiting: `-infinity` has no age, and no error.
    let model = ctx.config.model("odd").expect("model").clone();
    let (query, _) = ctx.warehouse.describe(&model).await.expect("describe");
    let all = ctx
        .warehouse
        .backlog(&model, &query, None)
        .await
        .expect("backlog of every row");
    assert_eq!(all.rows, 6);
    assert_eq!(all.oldest.as_deref(), Some("-infinity"));
    assert_eq!(all.oldest_age_secs, None);

    // Nothing after (infinity, 6) until a row sorts after it.
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 0);
    exec(
        &db,
        "INSERT INTO crm.odd (id, updated_at, event_time, email)
         VALUES (7, 'infinity', now() - interval '2 hours', 'person7@example.com')",
    )
    .await;
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 1);
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 7);
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
}

#[tokio::test]
async fn a_stored_cursor_with_another_key_arity_is_a_configuration_error_naming_both_keys() {
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    exec(
        &db,
        "ALTER TABLE crm.odd ADD COLUMN line int NOT NULL DEFAULT 1",
    )
    .await;
    exec(
        &db,
        "INSERT INTO crm.odd (id, updated_at, event_time, email)
         SELECT g, now() - interval '1 hour' + g * interval '1 second', now() - interval '2 hours',
                'person' || g || '@example.com'
         FROM generate_series(1, 3) g",
    )
    .await;
    let models = ODD_MODEL.replace("ignore_columns = [", "ignore_columns = [\"line\", ");
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(patient_config(&db, &sandbox.base_url(), &models)).await;
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let before = stored_cursor(&db, "odd").await.expect("cursor stored");
    assert_eq!(before.1, vec!["3".to_string()]);

    // primary_key grows to two columns after the cursor was stored with one.
    let changed = models.replace("primary_key = \"id\"", "primary_key = [\"id\", \"line\"]");
    let ctx = context(patient_config(&db, &sandbox.base_url(), &changed)).await;
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Failed);
    let error = run.error.expect("an error");
    for part in ["`odd`", "(3)", "(id, line)", "primary_key"] {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
    assert_eq!(stored_cursor(&db, "odd").await, Some(before));
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT error FROM capi_sync.runs WHERE model = 'odd' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded.as_deref(), Some(error.as_str()));
}

#[tokio::test]
async fn rows_larger_than_the_page_byte_budget_are_each_delivered_once() {
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    // Eight rows of about 1 MB each (their blob is over 64 KiB: dropped from the event, yet
    // read, and counted against the page's bytes).
    exec(
        &db,
        "INSERT INTO crm.odd (id, updated_at, event_time, email, blob)
         SELECT g, now() - interval '1 hour' + g * interval '1 second', now() - interval '2 hours',
                'person' || g || '@example.com', repeat(chr(97 + g), 1000000)
         FROM generate_series(1, 8) g",
    )
    .await;
    let sandbox = start_sandbox(Faults::default()).await;
    let text = config_text(
        &db,
        &sandbox.base_url(),
        "",
        &ODD_MODEL.replace("[[models]]", "[[models]]\npage_size = 1000"),
    )
    .replace("[warehouse]\n", "[warehouse]\npage_bytes = 2500000\n");
    let mut cfg = capi_sync::config::Config::from_toml_str(&text, Path::new(".")).expect("config");
    assert_eq!(cfg.warehouse.page_bytes, 2_500_000);
    cfg.meta.request_timeout = std::time::Duration::from_secs(60);
    cfg.meta.max_attempts = 6;

    // The reader's pages: each stops once it holds 2.5 MB, three rows at most.
    let warehouse = capi_sync::app::connect_warehouse(&cfg)
        .await
        .expect("warehouse");
    let model = cfg.model("odd").expect("model").clone();
    let (query, _) = warehouse.describe(&model).await.expect("describe");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<SourceRow>>(100);
    let range = ReadRange {
        lower: LowerBound::Beginning,
        upper: None,
        reread: false,
    };
    let read = warehouse
        .stream_rows(&query, vec![range], tx, 1000)
        .await
        .expect("read");
    assert_eq!(read, 8);
    let mut pages = Vec::new();
    while let Some(chunk) = rx.recv().await {
        pages.push(chunk.iter().map(|r| r.key[0].clone()).collect::<Vec<_>>());
    }
    assert!(
        pages.iter().all(|p| !p.is_empty() && p.len() <= 3),
        "{pages:?}"
    );
    assert_eq!(
        pages.concat(),
        (1..=8).map(|i| i.to_string()).collect::<Vec<_>>()
    );

    let ctx = context(cfg).await;
    let run = sync(&ctx, "odd").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 8);
    assert_eq!(
        run.counters
            .dropped_by_field
            .get("custom_data.blob:value_too_long"),
        Some(&8)
    );
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 8);
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test]
async fn postgres_data_errors_never_show_the_customer_value_they_quote() {
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    exec(
        &db,
        "CREATE TABLE crm.contacts (id int PRIMARY KEY, updated_at timestamptz NOT NULL,
            email text, phone text)",
    )
    .await;
    exec(
        &db,
        "INSERT INTO crm.contacts VALUES
            (1, now() - interval '1 hour', 'Jane.Roe.Private@example.com', '15551234567')",
    )
    .await;
    // One model casts an email to an integer (22P02, the message quotes the email), the other
    // a phone number out of integer range (22003, the message quotes the number).
    let models = r#"
[[models]]
name = "bad_cast"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT id, updated_at, updated_at AS event_time, email::int AS lead_id FROM crm.contacts"
primary_key = "id"
cursor = "updated_at"
[models.constants]
event_name = "Lead"
action_source = "system_generated"

[[models]]
name = "bad_range"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT id, updated_at, updated_at AS event_time, phone::int AS external_id FROM crm.contacts"
primary_key = "id"
cursor = "updated_at"
[models.constants]
event_name = "Lead"
action_source = "system_generated"
"#;
    let sandbox = start_sandbox(Faults::default()).await;
    let cfg = config_file(&db, &sandbox.base_url(), models, "");
    let mut outputs = Vec::new();
    for args in [
        vec!["--log-format", "json", "sync", "bad_cast"],
        vec!["--log-format", "json", "sync", "bad_range"],
        vec!["--log-format", "json", "preview", "bad_cast"],
        vec!["--log-format", "json", "preview", "bad_range"],
        vec!["--log-format", "json", "check", "--offline"],
        vec!["--log-format", "json", "status"],
        vec!["--log-format", "json", "runs", "bad_cast"],
    ] {
        let out = command(&cfg.path, &args)
            .env("RUST_LOG", "debug")
            .output()
            .await
            .expect("run capi-sync");
        outputs.push(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let all = outputs.join("\n");
    // The runs failed and said why, with the SQLSTATE.
    assert!(all.contains("SQLSTATE 22P02"), "{all}");
    assert!(all.contains("SQLSTATE 22003"), "{all}");
    assert!(
        all.contains("invalid input syntax for type integer"),
        "{all}"
    );
    assert!(all.contains("out of range for type integer"), "{all}");

    let state: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(t, ' '), '') FROM (
            SELECT row_to_json(r)::text AS t FROM capi_sync.runs r
            UNION ALL SELECT row_to_json(f)::text FROM capi_sync.refused_rows f
            UNION ALL SELECT row_to_json(c)::text FROM capi_sync.cursors c) x",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        state.contains("SQLSTATE 22P02") && state.contains("SQLSTATE 22003"),
        "{state}"
    );
    let everything = format!("{all}\n{state}").to_lowercase();
    for value in [
        "jane.roe.private",
        "example.com",
        "15551234567",
        "5551234567",
    ] {
        assert!(
            !everything.contains(value),
            "`{value}` appears: {everything}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_typed_rows_are_each_delivered_or_refused_with_a_reason() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};
    use std::sync::atomic::{AtomicI64, Ordering};

    /// One row's odd values, as SQL literals.
    #[derive(Debug, Clone)]
    struct Row {
        event_time: String,
        expires_at: String,
        score: String,
        amount: String,
        note: String,
        doc: String,
        birthday: String,
    }
    let time = prop_oneof![
        Just("'infinity'".to_string()),
        Just("'-infinity'".to_string()),
        Just("now() - interval '2 hours'".to_string()),
        Just("now() - interval '30 days'".to_string()),
        Just("now() + interval '3 days'".to_string()),
        Just("NULL".to_string()),
        (-4712i32..294276).prop_map(|y| format!(
            "make_timestamptz({}, 6, 15, 12, 0, 0, 'UTC')",
            if y <= 0 { y - 1 } else { y }
        )),
    ];
    let float = prop_oneof![
        Just("'NaN'".to_string()),
        Just("'Infinity'".to_string()),
        Just("'-Infinity'".to_string()),
        (-1e300f64..1e300).prop_map(|f| format!("{f:e}")),
        Just("NULL".to_string()),
    ];
    let quote = |s: String| format!("'{}'", s.replace('\'', "''"));
    let text = prop_oneof![
        "[a-zA-Z0-9 '\"\\\\\\x01-\\x1f\\x7fé☃]{0,30}".prop_map(quote),
        (60_000usize..70_000).prop_map(|n| format!("repeat('y', {n})")),
        Just("NULL".to_string()),
    ];
    let doc = prop_oneof![
        Just("'{\"big\": 1e400}'".to_string()),
        Just("'[1, \"two\", null]'".to_string()),
        Just("'\"\\u0000 nul\"'".to_string()),
        Just(format!("'{}1{}'", "[".repeat(200), "]".repeat(200))),
        Just("NULL".to_string()),
    ];
    let date = prop_oneof![
        Just("'infinity'::date".to_string()),
        Just("'-infinity'::date".to_string()),
        (-4712i32..5_000_000)
            .prop_map(|y| format!("make_date({}, 2, 28)", if y <= 0 { y - 1 } else { y })),
        Just("NULL".to_string()),
    ];
    let row = (time.clone(), time, float.clone(), float, text, doc, date).prop_map(
        |(event_time, expires_at, score, amount, note, doc, birthday)| Row {
            event_time,
            expires_at: format!("({expires_at})::timestamp"),
            score,
            amount,
            note,
            doc,
            birthday,
        },
    );
    let rows = proptest::collection::vec(row, 30..50);

    // One database and one context for every case; each case starts from an empty table and
    // no state for the model (a database per case cost most of the test's time).
    let db = TestDb::new().await;
    create_odd_table(&db).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(patient_config(&db, &sandbox.base_url(), ODD_MODEL)).await;
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 12,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let handle = tokio::runtime::Handle::current();
    let (sent, refused_total) = (AtomicI64::new(0), AtomicI64::new(0));
    let result = tokio::task::block_in_place(|| {
        runner.run(&rows, |rows| {
            handle.block_on(async {
                for table in ["crm.odd", "capi_sync.cursors", "capi_sync.refused_rows", "capi_sync.deliveries"] {
                    exec(&db, &format!("DELETE FROM {table}")).await;
                }
                let values: Vec<String> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        format!(
                            "({i}, now() - interval '1 hour' + {i} * interval '1 second', {},
                                'p{i}@example.com', 'infinity', {}, {}, {}, {}, {}, {})",
                            r.event_time, r.expires_at, r.score, r.amount, r.note, r.doc, r.birthday
                        )
                    })
                    .collect();
                exec(
                    &db,
                    &format!(
                        "INSERT INTO crm.odd (id, updated_at, event_time, email, valid_to, expires_at,
                            score, amount, note, doc, birthday) VALUES {}",
                        values.join(", ")
                    ),
                )
                .await;
                let run = sync(&ctx, "odd").await;
                prop_assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
                let c = &run.counters;
                prop_assert_eq!(c.rows_read, rows.len() as i64);
                prop_assert_eq!(
                    c.rows_read,
                    c.events_sent + c.rows_refused + c.rows_already_sent,
                    "{:?}",
                    c
                );
                sent.fetch_add(c.events_sent, Ordering::Relaxed);
                refused_total.fetch_add(c.rows_refused, Ordering::Relaxed);
                let refusals = refused(&db, "odd").await;
                prop_assert_eq!(refusals.len() as i64, c.rows_refused);
                for (_, reason, detail) in &refusals {
                    prop_assert!(!reason.is_empty() && !detail.is_empty());
                }
                let cursor = stored_cursor(&db, "odd").await;
                prop_assert_eq!(cursor.map(|c| c.1), Some(vec![(rows.len() - 1).to_string()]));
                Ok(())
            })
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Both outcomes were exercised.
    assert!(sent.into_inner() > 0 && refused_total.into_inner() > 0);
}
