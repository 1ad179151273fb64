//! Micro-benchmarks of the hot path: normalize+hash of messy ten-field rows, a whole row
//! mapped to its event JSON, and a 1000-event request body.
//!
//!   cargo bench --bench mapping

use capi_sync::config::Config;
use capi_sync::mapping::{ColumnInfo, ModelPlan, Value, ValueKind};
use capi_sync::normalize::{normalize_and_hash, NormalizeContext, PiiField, PiiInput};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const EMAILS: [&str; 5] = ["  John.Smith", "MARY_jane", "josé.garcía", "Zoe.Q", "priya"];
const DOMAINS: [&str; 3] = ["Gmail.com", "Example.COM ", "mail.co.uk"];
const PHONES: [&str; 5] = [
    "+1 (650) 253-",
    "650.253.",
    "(415) 253 ",
    "+44 20 7946 ",
    "212-253-",
];
const FIRST: [&str; 5] = [" John", "Mary-Jane", "José", "ZOË", "Priya"];
const LAST: [&str; 5] = ["Smith", " O'Neil", "García", "Müller", "van der Berg"];
const CITIES: [&str; 5] = [
    "San Francisco",
    "New York",
    "St. Louis",
    "São Paulo",
    "Winston-Salem",
];
const STATES: [&str; 5] = ["California", "CA", "N.Y.", "new york", "Texas"];
const ZIPS: [&str; 5] = ["94105-1234", "10001", " 02134", "73301", "941051234"];
const COUNTRIES: [&str; 5] = ["US", "United States", "usa", "us", "U.S.A."];

/// The same messy rows as bench/e2e.sh seeds.
fn messy_fields(i: usize) -> [String; 10] {
    [
        format!("{}{i}@{}", EMAILS[i % 5], DOMAINS[i % 3]),
        format!("{}{:04}", PHONES[i % 5], i % 10_000),
        FIRST[i % 5].to_string(),
        LAST[i % 5].to_string(),
        CITIES[i % 5].to_string(),
        STATES[i % 5].to_string(),
        ZIPS[i % 5].to_string(),
        COUNTRIES[i % 5].to_string(),
        format!("{}-{:02}-{:02}", 1950 + i % 50, 1 + i % 12, 1 + i % 28),
        format!("CUST-{i}"),
    ]
}

/// The same rows with first name, last name and city made distinct (a letter suffix): the
/// per-thread memo then misses for them, as with high-cardinality columns. State and country
/// stay a small set, as they are in real tables.
fn distinct_fields(i: usize) -> [String; 10] {
    let mut f = messy_fields(i);
    let suffix: String = [i % 26, i / 26 % 26, i / 676 % 26]
        .iter()
        .map(|&n| (b'a' + n as u8) as char)
        .collect();
    for k in [2, 3, 4] {
        f[k].push_str(&suffix);
    }
    f
}

const FIELDS: [PiiField; 10] = [
    PiiField::Em,
    PiiField::Ph,
    PiiField::Fn,
    PiiField::Ln,
    PiiField::Ct,
    PiiField::St,
    PiiField::Zp,
    PiiField::Country,
    PiiField::Db,
    PiiField::ExternalId,
];

fn normalize_hash(c: &mut Criterion) {
    let rows: Vec<[String; 10]> = (0..1000).map(messy_fields).collect();
    let ctx = NormalizeContext {
        default_country: Some("us"),
        ..Default::default()
    };
    let mut g = c.benchmark_group("normalize_hash");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("ten_field_events_x1000", |b| {
        b.iter(|| {
            for row in &rows {
                for (field, value) in FIELDS.iter().zip(row.iter()) {
                    let _ = black_box(normalize_and_hash(*field, PiiInput::Text(value), &ctx));
                }
            }
        })
    });
    let distinct: Vec<[String; 10]> = (0..1000).map(distinct_fields).collect();
    g.bench_function("ten_field_events_names_distinct_x1000", |b| {
        b.iter(|| {
            for row in &distinct {
                for (field, value) in FIELDS.iter().zip(row.iter()) {
                    let _ = black_box(normalize_and_hash(*field, PiiInput::Text(value), &ctx));
                }
            }
        })
    });
    g.finish();

    // Each field alone (same rows), to see where the time goes.
    let mut g = c.benchmark_group("normalize_hash_field");
    g.throughput(Throughput::Elements(rows.len() as u64));
    for (i, field) in FIELDS.iter().enumerate() {
        g.bench_function(field.key(), |b| {
            b.iter(|| {
                for row in &rows {
                    let _ = black_box(normalize_and_hash(*field, PiiInput::Text(&row[i]), &ctx));
                }
            })
        });
    }
    g.finish();
}

fn map_rows(c: &mut Criterion) {
    let config = Config::from_toml_str(
        r#"
[warehouse]
url = "postgres://localhost/x"
[[models]]
name = "bench"
pixel_id = "1"
schedule = "0 * * * *"
sql = "SELECT 1"
primary_key = "id"
cursor = "updated_at"
default_country = "us"
[models.constants]
action_source = "system_generated"
"custom_data.currency" = "USD"
"#,
        std::path::Path::new("."),
    )
    .expect("bench config");
    let model = &config.models[0];
    let names = [
        ("id", ValueKind::Int),
        ("updated_at", ValueKind::TimestampTz),
        ("event_name", ValueKind::Text),
        ("event_time", ValueKind::TimestampTz),
        ("em", ValueKind::Text),
        ("ph", ValueKind::Text),
        ("fn", ValueKind::Text),
        ("ln", ValueKind::Text),
        ("ct", ValueKind::Text),
        ("st", ValueKind::Text),
        ("zp", ValueKind::Text),
        ("country", ValueKind::Text),
        ("db", ValueKind::Date),
        ("external_id", ValueKind::Text),
        ("value", ValueKind::Numeric),
    ];
    let columns: Vec<ColumnInfo> = names
        .iter()
        .map(|(n, k)| ColumnInfo {
            name: n.to_string(),
            kind: *k,
        })
        .collect();
    let plan = ModelPlan::new(model, &columns).expect("plan");
    let now = chrono::Utc::now();
    let rows: Vec<(Vec<Value>, Vec<String>)> = (0..1000)
        .map(|i| {
            let f = messy_fields(i);
            let values = vec![
                Value::Int(i as i64),
                Value::TimestampTz(now),
                Value::Text("Lead".into()),
                Value::TimestampTz(now - chrono::Duration::hours(1)),
                Value::Text(f[0].as_str().into()),
                Value::Text(f[1].as_str().into()),
                Value::Text(f[2].as_str().into()),
                Value::Text(f[3].as_str().into()),
                Value::Text(f[4].as_str().into()),
                Value::Text(f[5].as_str().into()),
                Value::Text(f[6].as_str().into()),
                Value::Text(f[7].as_str().into()),
                Value::Date(chrono::NaiveDate::from_ymd_opt(1980, 1 + (i % 12) as u32, 1).unwrap()),
                Value::Text(f[9].as_str().into()),
                Value::Numeric(format!("{}.{:02}", i % 500, i % 100).into()),
            ];
            (values, vec![i.to_string()])
        })
        .collect();
    let ts = now.timestamp();
    let mut g = c.benchmark_group("map_row");
    g.throughput(Throughput::Elements(rows.len() as u64));
    g.bench_function("messy_rows_x1000", |b| {
        b.iter(|| {
            for (values, key) in &rows {
                black_box(plan.map_row(values, key, ts));
            }
        })
    });
    g.finish();

    let events: Vec<String> = rows
        .iter()
        .map(|(v, k)| plan.map_row(v, k, ts).result.expect("valid event").json)
        .collect();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let client = capi_sync::sink::GraphClient::new(&config.meta).expect("client");
    let mut g = c.benchmark_group("batch_encoding");
    g.throughput(Throughput::Elements(refs.len() as u64));
    g.bench_function("body_of_1000_events", |b| {
        b.iter(|| black_box(client.body(&refs, None)))
    });
    g.finish();
}

criterion_group!(benches, normalize_hash, map_rows);
criterion_main!(benches);
