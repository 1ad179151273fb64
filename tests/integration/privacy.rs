//! No raw customer value ever leaves the process: everything the sandbox recorded in an
//! end-to-end run is scanned for the seeded raw and normalized-but-unhashed values.

use crate::helpers::*;
use capi_sync::pipeline::RunStatus;
use capi_sync::sandbox::Faults;

const PEOPLE: &[(&str, &str, &str, &str, &str, &str)] = &[
    // email, phone, first, last, city, zip
    (
        " Zoe.Quartermaine@Example.ORG ",
        "+1 (415) 253-7788",
        "Zoë",
        "Quartermaine",
        "São Paulo",
        "94105-1234",
    ),
    (
        "MARCUS_FITZWILLIAM@mail.co.uk",
        "020 7946 0321",
        "Marcus",
        "Fitzwilliam",
        "London",
        "SW1A 1AA",
    ),
    (
        "priya.venkataraman@gmail.com",
        "650.253.9911",
        "Priya",
        "Venkataraman",
        "Winston-Salem",
        "27101",
    ),
];

#[tokio::test]
async fn no_raw_or_normalized_customer_value_reaches_meta() {
    let db = TestDb::new().await;
    sqlx::query("CREATE SCHEMA crm")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE crm.people (id int PRIMARY KEY, email text, phone text, first_name text, last_name text,
            city text, zip text, country text, birthday date, updated_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (i, (em, ph, f, l, ct, zp)) in PEOPLE.iter().enumerate() {
        let country = if ph.starts_with("020") {
            "GB"
        } else {
            "United States"
        };
        sqlx::query("INSERT INTO crm.people VALUES ($1, $2, $3, $4, $5, $6, $7, $8, date '1987-06-05', now())")
            .bind(i as i32)
            .bind(em)
            .bind(ph)
            .bind(f)
            .bind(l)
            .bind(ct)
            .bind(zp)
            .bind(country)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let models = r#"
[[models]]
name = "people"
pixel_id = "123456789012345"
schedule = "0 * * * *"
sql = "SELECT id, updated_at, 'Lead' AS event_name, updated_at AS event_time, email AS em, phone AS ph, first_name AS fn, last_name AS ln, city AS ct, zip AS zp, country, birthday AS db, 'cust-' || id AS external_id FROM crm.people"
primary_key = "id"
cursor = "updated_at"
default_country = "us"
[models.constants]
action_source = "system_generated"
"#;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), models)).await;
    let run = sync(&ctx, "people").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.counters.events_sent, 3);
    assert!(
        run.counters.dropped_by_field.is_empty(),
        "{:?}",
        run.counters.dropped_by_field
    );

    let recorded = serde_json::to_string(&sandbox.events())
        .unwrap()
        .to_lowercase();
    let mut needles: Vec<String> = Vec::new();
    for (em, ph, f, l, ct, zp) in PEOPLE {
        needles.push(em.trim().to_lowercase());
        needles.push(em.trim().split('@').next().unwrap().to_lowercase());
        needles.push(
            ph.chars()
                .filter(|c| c.is_ascii_digit())
                .collect::<String>()
                .trim_start_matches('0')
                .to_string(),
        );
        needles.push(f.to_lowercase());
        needles.push(l.to_lowercase());
        needles.push(ct.to_lowercase().replace([' ', '-'], ""));
        needles.push(zp.to_lowercase().replace(' ', ""));
    }
    needles.extend([
        "19870605".to_string(),
        "cust-0".to_string(),
        "united states".to_string(),
    ]);
    for n in &needles {
        assert!(
            !recorded.contains(n.as_str()),
            "raw value `{n}` reached the Graph API"
        );
    }
    // Every hashed field went as 64-hex.
    for e in sandbox.events() {
        for k in [
            "em",
            "ph",
            "fn",
            "ln",
            "ct",
            "zp",
            "country",
            "db",
            "external_id",
        ] {
            let v = e["user_data"][k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} missing"));
            assert_eq!(v.len(), 64, "{k}");
        }
    }
    // The state tables hold no customer value either.
    let state_dump: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(t::text, ' '), '') FROM (
            SELECT row_to_json(d)::text AS t FROM capi_sync.deliveries d
            UNION ALL SELECT row_to_json(r)::text FROM capi_sync.runs r
            UNION ALL SELECT row_to_json(c)::text FROM capi_sync.cursors c) x",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let state_dump = state_dump.to_lowercase();
    for n in &needles {
        assert!(
            !state_dump.contains(n.as_str()),
            "raw value `{n}` stored in our tables"
        );
    }
}

#[tokio::test]
async fn throttling_is_survived_and_counted() {
    let db = TestDb::new().await;
    seed_leads(
        &db.pool,
        400,
        "now() - interval '1 hour' + g * interval '1 millisecond'",
        "now() - interval '2 hours'",
    )
    .await;
    let sandbox = start_sandbox(Faults {
        throttle_rate: 0.3,
        seed: 7,
        ..Default::default()
    })
    .await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\nbatch_size = 100",
    );
    let mut cfg = config(&db, &sandbox.base_url(), &models);
    cfg.meta.max_attempts = 10;
    let ctx = context(cfg).await;
    let run = sync(&ctx, "leads").await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert!(run.counters.throttles > 0);
    let counts = event_id_counts(&sandbox.events());
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|&c| c == 1));
}
