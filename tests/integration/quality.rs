//! Match quality as Meta reports it (Dataset Quality API), read from the sandbox, which derives
//! it from the events it received: `capi-sync quality`, the recorded snapshots and the
//! `results_latest_quality` view, `status`, `check --min-quality` and the service's gauges.

use crate::helpers::*;
use capi_sync::sandbox::{composite_score, Faults, SandboxHandle};
use std::time::Duration;

const PIXEL: &str = "987654321098765";

/// Website visits: every row has an email, the even rows a phone.
const VISITS_MODEL: &str = r#"
[[models]]
name = "visits"
pixel_id = "987654321098765"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, email AS em, CASE WHEN id % 2 = 0 THEN phone END AS ph, 'Mozilla/5.0 (X11; Linux x86_64)' AS client_user_agent, now() - interval '5 minutes' AS event_time FROM web.visits"
primary_key = "id"
cursor = "updated_at"
[models.constants]
event_name = "Lead"
action_source = "website"
event_source_url = "https://shop.example.com/signup"
"#;

/// In-store sales with an email and a phone on every row.
const STORE_MODEL: &str = r#"
[[models]]
name = "store"
pixel_id = "987654321098765"
schedule = "*/5 * * * *"
sql = "SELECT id, updated_at, email AS em, phone AS ph, 12.5 AS value, 'USD' AS currency, now() - interval '1 day' AS event_time FROM web.visits"
primary_key = "id"
cursor = "updated_at"
[models.constants]
event_name = "Purchase"
action_source = "physical_store"
"#;

async fn seed_visits(db: &TestDb, from: i64, to: i64) {
    sqlx::query("CREATE SCHEMA IF NOT EXISTS web")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS web.visits (id bigint PRIMARY KEY, email text, phone text, updated_at timestamptz NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO web.visits SELECT g, 'visitor' || g || '@example.com', '+1 650 253 ' || lpad(g::text, 4, '0'),
                now() - interval '10 minutes' + g * interval '1 second'
         FROM generate_series($1::bigint, $2::bigint) AS g",
    )
    .bind(from)
    .bind(to)
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Four visits synced to the sandbox: the config file for the binary, the database and the
/// sandbox.
async fn synced(models: &str) -> (TestDb, SandboxHandle, ConfigFile) {
    let db = TestDb::new().await;
    seed_visits(&db, 1, 4).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), models)).await;
    for m in &ctx.config.models {
        let summary = sync(&ctx, &m.name).await;
        assert_eq!(summary.counters.events_sent, 4, "{:?}", summary.error);
    }
    let cfg = config_file(&db, &sandbox.base_url(), models, "");
    (db, sandbox, cfg)
}

/// Every visit carries an email and a user agent, half of them a phone.
fn expected_score() -> f64 {
    composite_score([("email", 100.0), ("phone", 50.0), ("user_agent", 100.0)])
}

#[tokio::test]
async fn quality_shows_the_scores_meta_derives_from_what_was_sent() {
    let (_db, _sandbox, cfg) = synced(VISITS_MODEL).await;
    let out = cli(&cfg.path, &["quality"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let line = out.stdout_line("  Lead: ");
    assert!(
        line.contains(&format!("match quality {:.1}/10", expected_score())),
        "{line}"
    );
    assert!(line.contains("email 100%"), "{line}");
    assert!(line.contains("phone 50%"), "{line}");
    assert!(line.contains("freshness real_time"), "{line}");
    assert!(!out.all().contains(TOKEN), "{}", out.all());

    let out = cli(&cfg.path, &["quality", "visits", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let score = &doc["models"][0]["scores"][0];
    assert_eq!(score["event_name"], "Lead");
    assert_eq!(score["composite_score"], expected_score());
    assert_eq!(score["match_keys"]["email"], 100.0);
    assert_eq!(score["match_keys"]["phone"], 50.0);
}

#[tokio::test]
async fn each_read_is_recorded_and_latest_quality_gives_the_newest() {
    let (db, sandbox, cfg) = synced(VISITS_MODEL).await;
    assert_eq!(cli(&cfg.path, &["quality"]).await.code, 0);
    // Four more visits, all with an email and two with a phone: phone coverage stays 50%,
    // and a visit without a phone moves it.
    seed_visits(&db, 5, 7).await;
    let ctx = context(config(&db, &sandbox.base_url(), VISITS_MODEL)).await;
    sync(&ctx, "visits").await;
    assert_eq!(cli(&cfg.path, &["quality"]).await.code, 0);
    let snapshots: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM capi_sync.quality_snapshots WHERE model = 'visits'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(snapshots, 2);
    let rows: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT event_name, composite_score, (match_keys->>'phone')::float8 FROM capi_sync.results_latest_quality WHERE model = 'visits'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // 3 of 7 visits carry a phone.
    let phone = (3.0_f64 * 1000.0 / 7.0).round() / 10.0;
    assert_eq!(
        rows,
        vec![(
            "Lead".to_string(),
            composite_score([("email", 100.0), ("phone", phone), ("user_agent", 100.0)]),
            phone
        )]
    );
}

#[tokio::test]
async fn reads_past_their_keeping_time_go_with_their_snapshots() {
    let (db, _sandbox, cfg) = synced(VISITS_MODEL).await;
    assert_eq!(cli(&cfg.path, &["quality"]).await.code, 0);
    assert_eq!(cli(&cfg.path, &["quality"]).await.code, 0);
    sqlx::query("UPDATE capi_sync.quality_fetches SET fetched_at = fetched_at - interval '500 days' WHERE id = (SELECT min(id) FROM capi_sync.quality_fetches)")
        .execute(&db.pool)
        .await
        .unwrap();
    let state = capi_sync::state::StateStore::connect(
        &capi_sync::config::Secret::new(db.url.as_str()),
        "capi_sync",
    )
    .await
    .unwrap();
    let removed = state
        .prune_quality(capi_sync::quality::KEEP_READS_FOR)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.quality_snapshots")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(snapshots, 1);
}

#[tokio::test]
async fn a_permission_refusal_is_a_note_naming_the_role_and_exits_0() {
    let (db, sandbox, cfg) = synced(VISITS_MODEL).await;
    sandbox.deny_quality(PIXEL);
    let out = cli(&cfg.path, &["quality"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("quality unavailable: Meta refused permission"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("Use events dataset"), "{}", out.stdout);
    assert!(!out.all().contains(TOKEN), "{}", out.all());
    let (status, code): (String, Option<i64>) = sqlx::query_as(
        "SELECT status, meta_code FROM capi_sync.quality_fetches WHERE model = 'visits'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), code), ("unavailable", Some(10)));

    let out = cli(&cfg.path, &["check", "--min-quality", "9"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("not a failure"), "{}", out.stdout);
    assert!(!out.all().contains(TOKEN), "{}", out.all());
}

#[tokio::test]
async fn meta_down_is_a_note_and_exits_0() {
    let (db, sandbox, cfg) = synced(VISITS_MODEL).await;
    sandbox.misanswer(capi_sync::sandbox::Misanswer::BadGatewayHtml, 0, 1);
    let out = cli(&cfg.path, &["quality"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("HTTP 502"), "{}", out.stdout);
    assert!(out.stdout.contains("tried again"), "{}", out.stdout);
    assert!(!out.all().contains(TOKEN), "{}", out.all());
    let status: String =
        sqlx::query_scalar("SELECT status FROM capi_sync.quality_fetches WHERE model = 'visits'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "unavailable");
}

#[tokio::test]
async fn check_min_quality_fails_below_the_score_and_passes_at_it() {
    let (_db, _sandbox, cfg) = synced(VISITS_MODEL).await;
    let out = cli(&cfg.path, &["check", "--min-quality", "9"]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains(&format!(
            "visits: quality: below — Lead scores {:.1}/10",
            expected_score()
        )),
        "{}",
        out.stdout
    );
    let at = format!("{}", expected_score());
    let out = cli(&cfg.path, &["check", "--min-quality", &at]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("visits: quality: ok"), "{}", out.stdout);
}

#[tokio::test]
async fn status_shows_the_latest_score() {
    let (_db, _sandbox, cfg) = synced(VISITS_MODEL).await;
    assert_eq!(cli(&cfg.path, &["quality"]).await.code, 0);
    let out = cli(&cfg.path, &["status", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let q = &doc["models"][0]["quality"];
    assert_eq!(q["scores"][0]["composite_score"], expected_score());
    assert_eq!(q["last_fetch"]["status"], "scored");
    let out = cli(&cfg.path, &["status"]).await;
    assert!(
        out.stdout.contains(&format!(
            "quality:   Lead: match quality {:.1}/10",
            expected_score()
        )),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn a_store_model_reads_the_offline_scores_and_says_when_the_beta_is_off() {
    let (_db, sandbox, cfg) = synced(STORE_MODEL).await;
    let out = cli(&cfg.path, &["quality", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let m = &doc["models"][0];
    assert_eq!(m["source"], "offline");
    assert_eq!(m["scores"][0]["match_keys"]["phone"], 100.0);
    assert!(m["scores"][0]["freshness_score"].is_number(), "{m}");
    sandbox.set_offline_quality_beta(false);
    let out = cli(&cfg.path, &["quality"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("beta"), "{}", out.stdout);
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_service_reads_quality_into_its_gauges() {
    let (db, sandbox, _) = synced(VISITS_MODEL).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = config_file(&db, &sandbox.base_url(), VISITS_MODEL, &addr);
    let mut child = command(&cfg.path, &["run"]).spawn().unwrap();
    let gauge = format!(
        "capi_sync_event_match_quality{{model=\"visits\",event_name=\"Lead\"}} {}\n",
        expected_score()
    );
    let mut body = String::new();
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await {
            body = resp.text().await.unwrap_or_default();
            if body.contains(&gauge) {
                break;
            }
        }
    }
    let _ = child.start_kill();
    let logs = child.wait_with_output().await.unwrap();
    assert!(body.contains(&gauge), "{body}");
    let logs = String::from_utf8_lossy(&logs.stderr);
    assert!(logs.contains("match quality read"), "{logs}");
    assert!(!logs.contains(TOKEN), "{logs}");
    assert!(
        body.contains(
            "capi_sync_match_key_coverage_meta_percent{model=\"visits\",event_name=\"Lead\",identifier=\"phone\"} 50.0\n"
        ),
        "{body}"
    );
}

#[tokio::test]
async fn the_service_shows_the_last_recorded_quality_when_meta_refuses() {
    let (db, sandbox, cfg) = synced(VISITS_MODEL).await;
    assert_eq!(cli(&cfg.path, &["quality"]).await.code, 0);
    sandbox.deny_quality(PIXEL);
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = config_file(&db, &sandbox.base_url(), VISITS_MODEL, &addr);
    let mut child = command(&cfg.path, &["run"]).spawn().unwrap();
    let gauge = format!(
        "capi_sync_event_match_quality{{model=\"visits\",event_name=\"Lead\"}} {}\n",
        expected_score()
    );
    let mut body = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await {
            body = resp.text().await.unwrap_or_default();
            if body.contains(&gauge) {
                break;
            }
        }
    }
    let _ = child.start_kill();
    assert!(body.contains(&gauge), "{body}");
}
