//! The dashboard over HTTP: its pages and their headers, where it is served
//! (`service.ui_addr`), and its actions: read-only without `service.admin_token`, 401 without
//! the token, 405 on GET, and a run that the queue really starts with it.

use crate::helpers::*;
use capi_sync::config::Config;
use capi_sync::http_server::Listening;
use capi_sync::pipeline::SyncContext;
use capi_sync::sandbox::{Faults, SandboxHandle};
use std::time::Duration;

const ADMIN: &str = "dashboard-admin-token-7c41e9";

/// A schedule that does not fire while a test runs: every run seen is one the test asked for.
fn models() -> String {
    LEADS_MODEL.replace("*/5 * * * *", "0 0 1 1 *")
}

/// The `run` service in-process, on ports the system chose.
struct Service {
    ctx: SyncContext,
    at: Listening,
    db: TestDb,
    _sandbox: SandboxHandle,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    fn dashboard(&self) -> String {
        format!(
            "http://{}",
            self.at.dashboard.expect("a dashboard is served")
        )
    }
    fn endpoints(&self) -> String {
        format!(
            "http://{}",
            self.at.endpoints.expect("endpoints are served")
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.ctx.cancel.cancel();
    }
}

/// A service over 5 recent leads (row 3 refused as too old, once synced), with `service` as
/// the `[service]` section's keys.
async fn service(service: &str) -> Service {
    let db = TestDb::new().await;
    seed_recent_leads(&db, 5).await;
    make_too_old(&db, 3).await;
    let sandbox = start_sandbox(Faults::default()).await;
    let text = config_text(
        &db,
        &sandbox.base_url(),
        &format!("[service]\nmetrics_addr = \"127.0.0.1:0\"\n{service}"),
        &models(),
    );
    let config = Config::from_toml_str(&text, std::path::Path::new(".")).unwrap();
    let ctx = context(config).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(capi_sync::http_server::run_service_announced(
        ctx.clone(),
        Some(tx),
    ));
    let at = rx.await.expect("the service listens");
    Service {
        ctx,
        at,
        db,
        _sandbox: sandbox,
        task: Some(task),
    }
}

async fn post(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The runs of `leads` with this trigger, as (status, events sent), waiting (up to a minute)
/// until one has finished.
async fn finished_runs(db: &TestDb, trigger: &str) -> Vec<(String, i64)> {
    let mut runs = Vec::new();
    for _ in 0..300 {
        runs = sqlx::query_as::<_, (String, i64)>(
            "SELECT status, events_sent FROM capi_sync.runs WHERE model = 'leads' AND trigger = $1 AND status <> 'running'",
        )
        .bind(trigger)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_default();
        if !runs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    runs
}

#[tokio::test]
async fn the_overview_is_html_with_the_security_headers_and_its_nonce() {
    let s = service("").await;
    let resp = reqwest::get(format!("{}/", s.dashboard())).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let h = resp.headers().clone();
    let body = resp.text().await.unwrap();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // The only script and style are those carrying this answer's nonce.
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("a nonce in the CSP");
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(
        body.contains(&format!("<script nonce=\"{nonce}\"")),
        "{body}"
    );
    assert!(
        body.contains(&format!("<style nonce=\"{nonce}\"")),
        "{body}"
    );
    assert!(body.contains("<tr data-model=\"leads\""), "{body}");
    assert!(body.contains("<th scope=\"col\">"), "{body}");
}

#[tokio::test]
async fn a_model_page_shows_its_runs_and_refused_rows_and_an_unknown_model_is_a_404_page() {
    let s = service("").await;
    sync(&s.ctx, "leads").await;
    let (status, body) = get(&format!("{}/models/leads", s.dashboard())).await;
    assert_eq!(status, 200);
    assert!(body.contains("data-chart=\"runs\""), "{body}");
    assert!(body.contains("<tr data-row-key=\"3\">"), "{body}");
    assert!(body.contains("event_time_too_old"), "{body}");
    assert!(!body.contains("@example.com"), "no customer value: {body}");

    let resp = reqwest::get(format!("{}/models/nope", s.dashboard()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert!(resp.text().await.unwrap().contains("no model `nope`"));

    // What the path carries is escaped, never markup.
    let (status, body) = get(&format!("{}/models/%3Cb%3Ex%3C%2Fb%3E", s.dashboard())).await;
    assert_eq!(status, 404);
    assert!(body.contains("&lt;b&gt;x&lt;/b&gt;"), "{body}");
    assert!(!body.contains("<b>x</b>"), "{body}");
}

#[tokio::test]
async fn without_an_admin_token_the_dashboard_only_reads() {
    let s = service("").await;
    let (_, page) = get(&format!("{}/models/leads", s.dashboard())).await;
    assert!(!page.contains("data-action=\""), "no buttons: {page}");
    for action in ["run", "retry"] {
        let url = format!("{}/models/leads/{action}", s.dashboard());
        let (status, body) = post(&url, Some(ADMIN)).await;
        assert_eq!(status, 401, "{action}: {body}");
        assert!(body.contains("service.admin_token"), "{body}");
    }
    assert!(finished_runs_now(&s.db).await.is_empty(), "nothing ran");
}

async fn finished_runs_now(db: &TestDb) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM capi_sync.runs")
        .fetch_all(&db.pool)
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn an_action_without_the_right_bearer_token_answers_401() {
    let s = service(&format!("admin_token = \"{ADMIN}\"")).await;
    let url = format!("{}/models/leads/run", s.dashboard());
    for token in [None, Some("wrong-token-of-some-length"), Some("")] {
        let (status, body) = post(&url, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(!body.contains(ADMIN));
    }
    let resp = reqwest::Client::new()
        .post(&url)
        .header("authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"capi-sync\""
    );
}

#[tokio::test]
async fn get_on_an_action_answers_405() {
    let s = service(&format!("admin_token = \"{ADMIN}\"")).await;
    for action in ["run", "retry"] {
        let resp = reqwest::get(format!("{}/models/leads/{action}", s.dashboard()))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{action}");
    }
}

#[tokio::test]
async fn run_now_with_the_token_queues_a_run_that_sends_the_rows() {
    let s = service(&format!("admin_token = \"{ADMIN}\"")).await;
    let (_, page) = get(&format!("{}/models/leads", s.dashboard())).await;
    assert!(page.contains("data-action=\"/models/leads/run\""), "{page}");
    assert!(!page.contains(ADMIN), "the token is never shown");
    let (status, body) = post(&format!("{}/models/leads/run", s.dashboard()), Some(ADMIN)).await;
    assert_eq!(status, 202, "{body}");
    // Rows 1, 2, 4 and 5 are sent; row 3 is too old.
    assert_eq!(
        finished_runs(&s.db, "dashboard").await,
        vec![("succeeded".to_string(), 4)]
    );
    // The service measured the lag at its start and after the run: the lag line is drawn.
    let mut page = String::new();
    for _ in 0..150 {
        page = get(&format!("{}/models/leads", s.dashboard())).await.1;
        if page.contains("data-chart=\"lag\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(page.contains("data-chart=\"lag\""), "{page}");
    assert!(page.contains("<tr data-run="), "the run is listed: {page}");
    // The ledger was counted (0) before the run; the run's end has it counted again.
    assert!(
        page.contains("data-field=\"ledger_events\" value=\"4\""),
        "{page}"
    );
    // The first measurement after the run is kept with it.
    let mut lag: Option<f64> = None;
    for _ in 0..150 {
        lag = sqlx::query_scalar(
            "SELECT lag_seconds FROM capi_sync.runs WHERE trigger = 'dashboard'",
        )
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
        if lag.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(lag.is_some_and(|l| l >= 0.0), "{lag:?}");
}

/// Each refresh of an open page does not count the ledger again: with no run started or
/// ended since, the count made a moment ago is shown.
#[tokio::test]
async fn a_refresh_shows_the_ledger_count_made_moments_before() {
    let s = service("").await;
    let ledger_field = |n: i64| format!("data-field=\"ledger_events\" value=\"{n}\"");
    let (_, page) = get(&format!("{}/models/leads", s.dashboard())).await;
    assert!(page.contains(&ledger_field(0)), "{page}");
    // A row that reached the ledger without a run of this service (another process).
    sqlx::query(
        "INSERT INTO capi_sync.deliveries (model, event_id, row_key, event_name, fingerprint, event_time) \
         VALUES ('leads', 'e-1', '{1}', 'Lead', 'f', now())",
    )
    .execute(&s.db.pool)
    .await
    .expect("a ledger row");
    let (_, page) = get(&format!("{}/models/leads", s.dashboard())).await;
    assert!(page.contains(&ledger_field(0)), "counted again: {page}");
}

#[tokio::test]
async fn the_lag_line_reaches_back_over_runs_before_the_service_started() {
    let s = service("").await;
    // Runs of an earlier life of the service, each with the lag measured after it.
    sqlx::query(
        "INSERT INTO capi_sync.runs (model, trigger, started_at, finished_at, status, lag_seconds)
         SELECT 'leads', 'schedule', now() - g * interval '1 hour',
                now() - g * interval '1 hour' + interval '5 seconds', 'succeeded', 60 * g
         FROM generate_series(1, 3) AS g",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();
    let (status, page) = get(&format!("{}/models/leads", s.dashboard())).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-chart=\"lag\""), "{page}");
}

#[tokio::test]
async fn retry_with_the_token_sends_a_refused_row_that_is_now_valid() {
    let s = service(&format!("admin_token = \"{ADMIN}\"")).await;
    sync(&s.ctx, "leads").await;
    sqlx::query("UPDATE crm.leads SET happened_at = now() - interval '1 hour' WHERE id = 3")
        .execute(&s.db.pool)
        .await
        .unwrap();
    let (status, body) = post(
        &format!("{}/models/leads/retry", s.dashboard()),
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        finished_runs(&s.db, "retry").await,
        vec![("succeeded".to_string(), 1)]
    );
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM capi_sync.refused_rows")
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(refused, 0);
}

#[tokio::test]
async fn an_action_on_an_unknown_model_answers_404() {
    let s = service(&format!("admin_token = \"{ADMIN}\"")).await;
    let (status, _) = post(&format!("{}/models/nope/run", s.dashboard()), Some(ADMIN)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn with_ui_addr_the_dashboard_has_its_own_listener() {
    let s = service("ui_addr = \"127.0.0.1:0\"").await;
    assert_ne!(s.at.dashboard, s.at.endpoints);
    assert_eq!(get(&format!("{}/", s.dashboard())).await.0, 200);
    assert_eq!(get(&format!("{}/healthz", s.endpoints())).await.0, 200);
    let (status, body) = get(&format!("{}/", s.endpoints())).await;
    assert_eq!(status, 404, "no dashboard beside the probes");
    assert_eq!(body, "not found; try /healthz, /readyz or /metrics\n");
    let resp = reqwest::get(format!("{}/metrics", s.dashboard()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "no metrics on the dashboard's");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn an_empty_ui_addr_serves_no_dashboard() {
    let s = service("ui_addr = \"\"").await;
    assert_eq!(s.at.dashboard, None);
    assert_eq!(get(&format!("{}/", s.endpoints())).await.0, 404);
    assert_eq!(get(&format!("{}/healthz", s.endpoints())).await.0, 200);
}

#[tokio::test]
async fn the_service_stops_with_its_token() {
    let mut s = service("").await;
    s.ctx.cancel.cancel();
    let task = s.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the service stops")
        .unwrap()
        .unwrap();
    assert!(reqwest::get(format!("{}/", s.dashboard())).await.is_err());
}

#[test]
fn a_bad_ui_addr_or_a_short_admin_token_is_named_in_the_error() {
    let parse = |service: &str| {
        Config::from_toml_str(
            &format!("[warehouse]\nurl = \"postgres://localhost/w\"\n[meta]\naccess_token = \"t\"\n[service]\n{service}\n"),
            std::path::Path::new("."),
        )
    };
    let e = parse("ui_addr = \"localhost\"").unwrap_err().to_string();
    assert!(e.contains("service.ui_addr"), "{e}");
    let e = parse("admin_token = \"short-secret\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("service.admin_token"), "{e}");
    assert!(!e.contains("short-secret"), "the value is never shown: {e}");
    let ok = parse(&format!("admin_token = \"{ADMIN}\"")).unwrap();
    assert!(!format!("{:?}", ok.service).contains(ADMIN));
}
