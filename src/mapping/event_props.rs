//! Property test of the mapping: any row of any values, the odd ones included (infinite and
//! out-of-range times, NaN, over-long text, control characters, JSON-looking text), maps
//! without a panic to an event that is valid JSON, or to a refusal with a reason whose detail
//! quotes none of the row's values.

use super::event::{ColumnInfo, ModelPlan};
use super::value::{Unusable, Value, ValueKind, MAX_VALUE_BYTES};
use crate::config::Config;
use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;

const COLUMNS: &[(&str, ValueKind)] = &[
    ("id", ValueKind::Int),
    ("updated_at", ValueKind::TimestampTz),
    ("event_name", ValueKind::Text),
    ("event_time", ValueKind::TimestampTz),
    ("action_source", ValueKind::Text),
    ("em", ValueKind::Text),
    ("ph", ValueKind::Text),
    ("fn", ValueKind::Text),
    ("db", ValueKind::Date),
    ("external_id", ValueKind::Text),
    ("client_ip_address", ValueKind::Text),
    ("event_source_url", ValueKind::Text),
    ("value", ValueKind::Numeric),
    ("currency", ValueKind::Text),
    ("contents", ValueKind::Text),
    ("plan", ValueKind::Json),
    ("note", ValueKind::Text),
    ("score", ValueKind::Float),
    ("valid_to", ValueKind::Timestamp),
];

fn plan() -> ModelPlan {
    let config = Config::from_toml_str(
        r#"
[warehouse]
url = "postgres://localhost/x"
[[models]]
name = "m"
pixel_id = "1"
schedule = "0 * * * *"
sql = "SELECT 1"
primary_key = "id"
cursor = "updated_at"
ignore_columns = ["valid_to"]
[models.columns]
"custom_data.plan" = "plan"
"custom_data.note" = "note"
"custom_data.score" = "score"
"#,
        std::path::Path::new("."),
    )
    .expect("config");
    let columns: Vec<ColumnInfo> = COLUMNS
        .iter()
        .map(|(n, k)| ColumnInfo {
            name: n.to_string(),
            kind: *k,
        })
        .collect();
    ModelPlan::new(&config.models[0], &columns).expect("plan")
}

fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Control characters (Postgres text holds no NUL) among letters, quotes and backslashes.
        "[a-zA-Z0-9@. \\x01-\\x1f\\x7f\"\\\\\u{2028}é☃]{0,40}",
        Just("Purchase".to_string()),
        Just("system_generated".to_string()),
        Just("[{\"id\":\"sku-1\",\"quantity\":2}]".to_string()),
        Just("[{\"id\": 1e400}]".to_string()),
        Just("{not json".to_string()),
        Just("NaN".to_string()),
        (0usize..3).prop_map(|n| "x".repeat(MAX_VALUE_BYTES - 1 + n)),
    ]
}

fn time(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

fn any_value() -> impl Strategy<Value = Value> {
    let unusable = prop_oneof![
        Just(Unusable::InfiniteTime),
        Just(Unusable::TimeOutOfRange),
        Just(Unusable::NotFinite),
        Just(Unusable::TooLong),
        Just(Unusable::InvalidJson),
        Just(Unusable::Unreadable),
    ];
    // From before chrono's first year to after its last, and around now.
    let min = NaiveDate::MIN
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let max = NaiveDate::MAX
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let now = Utc::now().timestamp();
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        prop_oneof![
            Just("NaN".to_string()),
            Just("-Infinity".to_string()),
            "-?[0-9]{1,30}(\\.[0-9]{1,20})?"
        ]
        .prop_map(|s| Value::Numeric(s.into())),
        odd_text().prop_map(|s| Value::Text(s.into())),
        (min..max).prop_filter_map("in range", |s| time(s).map(Value::TimestampTz)),
        (now - 86_400..now + 60).prop_filter_map("in range", |s| time(s).map(Value::TimestampTz)),
        (min..max).prop_filter_map("in range", |s| time(s)
            .map(|t| Value::Timestamp(t.naive_utc()))),
        (min..max).prop_filter_map("in range", |s| time(s).map(|t| Value::Date(t.date_naive()))),
        prop_oneof![
            Just(serde_json::json!({"tier": "gold", "nul": "\u{0}"})),
            Just(serde_json::json!([1, 2.5, null])),
            Just(serde_json::json!("text")),
        ]
        .prop_map(Value::Json),
        proptest::collection::vec(proptest::option::of(odd_text()), 0..3)
            .prop_map(Value::TextArray),
        unusable.prop_map(Value::Unusable),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_row_maps_to_a_json_event_or_a_refusal_that_quotes_no_value(
        values in proptest::collection::vec(any_value(), COLUMNS.len()),
    ) {
        let plan = plan();
        let now = Utc::now().timestamp();
        let out = plan.map_row(&values, &["7".to_string()], now);
        for d in &out.dropped {
            prop_assert!(!d.field.is_empty() && !d.reason.is_empty());
        }
        match out.result {
            Ok(event) => {
                let json: serde_json::Value = serde_json::from_str(&event.json)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {}", event.json)))?;
                prop_assert_eq!(json["event_time"].as_i64(), Some(event.event_time));
                prop_assert!(json["event_name"].is_string());
            }
            Err(refusal) => {
                prop_assert!(!refusal.reason.is_empty() && !refusal.detail.is_empty());
                for v in &values {
                    if let Value::Text(t) = v {
                        let t = t.trim();
                        // Plain names (`system_generated`) may be in a detail as the rule's words.
                        let plain_name = t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                        if t.len() >= 12 && !plain_name {
                            prop_assert!(!refusal.detail.contains(t), "{} quotes a value", refusal.detail);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_unusable_event_time_refuses_the_row_and_an_unusable_field_drops_it(
        u in prop_oneof![Just(Unusable::InfiniteTime), Just(Unusable::TimeOutOfRange), Just(Unusable::Unreadable)],
    ) {
        let plan = plan();
        let now = Utc::now();
        let mut values: Vec<Value> = vec![Value::Null; COLUMNS.len()];
        values[0] = Value::Int(7);
        values[1] = Value::TimestampTz(now);
        values[2] = Value::Text("Lead".into());
        values[3] = Value::TimestampTz(now - chrono::Duration::hours(1));
        values[4] = Value::Text("system_generated".into());
        values[5] = Value::Text("a@example.com".into());
        values[8] = Value::Unusable(u);
        values[15] = Value::Unusable(u);
        let out = plan.map_row(&values, &["7".to_string()], now.timestamp());
        let event = out.result.expect("the event goes without the unusable fields");
        prop_assert!(!event.json.contains("\"db\"") && !event.json.contains("\"plan\""));
        let fields: Vec<String> = out.dropped.iter().map(|d| format!("{}:{}", d.field, d.reason)).collect();
        prop_assert!(fields.contains(&format!("db:{}", u.reason())), "{:?}", fields);
        prop_assert!(fields.contains(&format!("custom_data.plan:{}", u.reason())), "{:?}", fields);

        values[3] = Value::Unusable(u);
        let refusal = plan.map_row(&values, &["7".to_string()], now.timestamp()).result.expect_err("refused");
        prop_assert_eq!(refusal.reason, "invalid_event_time");
        prop_assert!(refusal.event_id.is_some());
    }
}
