//! Logs free of customer data: every command, at debug level and in JSON, prints neither a
//! customer's value nor the access token.

use crate::helpers::*;
use capi_sync::sandbox::Faults;

#[tokio::test]
async fn sync_check_status_refused_and_preview_log_no_customer_data_and_never_the_token() {
    let db = TestDb::new().await;
    sqlx::query("CREATE SCHEMA crm")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE crm.people (id bigint PRIMARY KEY, email text, phone text, first_name text,
            last_name text, city text, happened_at timestamptz, updated_at timestamptz)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Row 3's phone is invalid and row 4 has no usable identifier: dropped values and refusals
    // are logged and recorded too, and must not carry the values either.
    sqlx::query(
        "INSERT INTO crm.people VALUES
         (1, 'Zelda.Quartermaine@Example.com', '+1 (415) 555-0199', 'Zelda', 'Quartermaine', 'Tuscaloosa', now() - interval '1 hour', now() - interval '50 minutes'),
         (2, 'Barnaby.Featherstonehaugh@Example.org', '(212) 555-0147', 'Barnaby', 'Featherstonehaugh', 'Kalamazoo', now() - interval '1 hour', now() - interval '40 minutes'),
         (3, 'Ottoline.Vandersloot@Example.net', 'call me maybe', 'Ottoline', 'Vandersloot', 'Walla Walla', now() - interval '1 hour', now() - interval '30 minutes'),
         (4, 'not-an-email', 'nope', NULL, NULL, NULL, now() - interval '1 hour', now() - interval '20 minutes')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let sandbox = start_sandbox(Faults::default()).await;
    let models = r#"
[[models]]
name = "people"
pixel_id = "123456789012345"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, 'Lead' AS event_name, happened_at AS event_time, email AS em, phone AS ph, first_name AS fn, last_name AS ln, city AS ct FROM crm.people"
primary_key = "id"
cursor = "updated_at"
default_country = "us"
[models.constants]
action_source = "crm"
"custom_data.lead_event_source" = "TestCRM"
"#;
    let cfg = config_file(&db, &sandbox.base_url(), models, "");
    let mut outputs = Vec::new();
    for args in [
        vec!["--log-format", "json", "sync"],
        vec!["--log-format", "json", "check"],
        vec!["--log-format", "json", "status"],
        vec!["--log-format", "json", "refused", "people"],
        vec!["--log-format", "json", "preview", "people"],
    ] {
        let mut cmd = command(&cfg.path, &args);
        cmd.env("RUST_LOG", "debug");
        let out = cmd.output().await.unwrap();
        outputs.push(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    assert_eq!(sandbox.stats().events_accepted, 3, "{}", outputs[0]);
    let all = outputs.join("\n").to_lowercase();
    assert!(all.contains("\"level\":\"info\""), "JSON logs were written");
    for raw in [
        "zelda",
        "quartermaine",
        "tuscaloosa",
        "barnaby",
        "featherstonehaugh",
        "kalamazoo",
        "ottoline",
        "vandersloot",
        "walla",
        "example.com",
        "example.org",
        "example.net",
        "not-an-email",
        "call me maybe",
        "555-0199",
        "5550199",
        "555-0147",
        "2125550147",
    ] {
        assert!(!all.contains(raw), "`{raw}` appears in the output");
    }
    assert!(
        !all.contains(&TOKEN.to_lowercase()),
        "the token appears in the output"
    );
}
