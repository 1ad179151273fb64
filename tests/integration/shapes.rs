//! Models of many shapes: composite and uuid keys, integer and date cursors, arrays, json,
//! numeric values and 17-digit lead ids, NULL cursors.

use crate::helpers::*;
use capi_sync::pipeline::RunStatus;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn composite_uuid_keys_integer_cursor_arrays_and_json_all_round_trip() {
    let db = TestDb::new().await;
    sqlx::query("CREATE SCHEMA shop")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE shop.orders (store text, order_uuid uuid, seq bigint NOT NULL, emails text[],
            amount numeric(14,4), currency text, items jsonb, lead bigint, sold_at timestamp,
            PRIMARY KEY (store, order_uuid))",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO shop.orders
         SELECT 'S' || (g % 3), md5(g::text)::uuid, g / 7, ARRAY['A' || g || '@Example.com', 'b' || g || '@example.com'],
                g * 1.2345, 'eur', '[{\"id\": \"sku-1\", \"quantity\": 2}]'::jsonb,
                12345678901234567, (now() at time zone 'utc') - interval '1 hour'
         FROM generate_series(1, 40) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let models = r#"
[[models]]
name = "orders"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT store, order_uuid, seq, emails AS em, amount AS value, currency, items AS contents, lead AS lead_id, sold_at AS event_time FROM shop.orders"
primary_key = ["store", "order_uuid"]
cursor = "seq"
page_size = 7
batch_size = 5
[models.constants]
event_name = "Purchase"
action_source = "physical_store"
"#;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), models)).await;
    let run = sync(&ctx, "orders").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 40);
    let events = sandbox.events();
    let counts = event_id_counts(&events);
    assert_eq!(counts.len(), 40);

    let e = &events[0];
    // Two emails from a text[] column, both hashed.
    assert_eq!(e["user_data"]["em"].as_array().unwrap().len(), 2);
    // numeric goes as an exact JSON number, currency uppercased, json passes through.
    assert!(e["custom_data"]["value"].is_number());
    assert_eq!(e["custom_data"]["currency"], "EUR");
    assert_eq!(e["custom_data"]["contents"][0]["id"], "sku-1");
    // 17 digits survive without float rounding.
    assert_eq!(e["user_data"]["lead_id"].as_u64(), Some(12345678901234567));

    // A second run reads nothing; a new row with a higher seq goes.
    assert_eq!(sync(&ctx, "orders").await.counters.rows_read, 0);
    sqlx::query(
        "INSERT INTO shop.orders VALUES ('S9', md5('new')::uuid, 1000, ARRAY['x@example.com'], 5, 'USD', '[]', NULL, (now() at time zone 'utc'))",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let next = sync(&ctx, "orders").await;
    assert_eq!(next.counters.events_sent, 1);
    let key = cursor_key(&db.pool, "orders")
        .await
        .expect("a stored cursor");
    assert_eq!(key[0], "S9");
}

#[tokio::test]
async fn a_date_cursor_and_text_event_times_work_and_null_cursors_are_not_read() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE public.leads (id text PRIMARY KEY, day date, at text, email text)")
        .execute(&db.pool)
        .await
        .unwrap();
    let recent = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    sqlx::query(
        "INSERT INTO public.leads VALUES ('a', current_date, $1, 'a@example.com'), ('b', current_date, $1, 'b@example.com'),
         ('c', NULL, $1, 'c@example.com')",
    )
    .bind(&recent)
    .execute(&db.pool)
    .await
    .unwrap();
    let models = r#"
[[models]]
name = "daily"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT id, day, at AS event_time, email AS em FROM public.leads"
primary_key = "id"
cursor = "day"
[models.constants]
event_name = "Lead"
action_source = "other"
"#;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), models)).await;
    let run = sync(&ctx, "daily").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.rows_read, 2, "the NULL-cursor row is not read");
    assert_eq!(run.counters.events_sent, 2);
    let t = sandbox.events()[0]["event_time"].as_i64().unwrap();
    assert_eq!(
        t,
        chrono::DateTime::parse_from_rfc3339(&recent)
            .unwrap()
            .timestamp()
    );
}

#[tokio::test]
async fn integer_widths_and_floats_decode_by_their_column_types() {
    let db = TestDb::new().await;
    sqlx::query(
        "CREATE TABLE public.sales (id integer PRIMARY KEY, pos smallint, score real, ratio double precision,
            amount integer, email text, at timestamptz)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO public.sales VALUES (1, 7, 1.5, 2.25, 1999, 'a@example.com', now() - interval '1 hour')")
        .execute(&db.pool)
        .await
        .unwrap();
    let models = r#"
[[models]]
name = "sales"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT id, pos AS \"custom_data.pos\", score AS \"custom_data.score\", ratio AS \"custom_data.ratio\", amount AS value, email AS em, at AS event_time FROM public.sales"
primary_key = "id"
cursor = "id"
[models.constants]
event_name = "Purchase"
action_source = "physical_store"
"custom_data.currency" = "USD"
"#;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), models)).await;
    let run = sync(&ctx, "sales").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let e = &sandbox.events()[0];
    assert_eq!(e["custom_data"]["pos"], 7);
    assert_eq!(e["custom_data"]["score"], 1.5);
    assert_eq!(e["custom_data"]["ratio"], 2.25);
    assert_eq!(e["custom_data"]["value"], 1999);
}
