//! The dashboard in a real browser: headless Chromium loads the pages of a running `capi-sync
//! run` after a sync, runs their script (under the pages' Content-Security-Policy), and the
//! DOM it ends with shows the figures `status --json` gives for the same config, the runs
//! chart, a refused row by its key, and no customer value or token. The screenshots go to
//! `target/dashboard.png` (desktop) and `target/dashboard-phone.png`.
//!
//! Chromium is required: without it the test fails and says how to install it.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: &str = "browser-admin-token-93d0aa71";

/// Chromium's binary: `/usr/bin/chromium`, or `chromium` on the PATH.
fn chromium() -> PathBuf {
    let usual = PathBuf::from("/usr/bin/chromium");
    if usual.exists() {
        return usual;
    }
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v chromium"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty());
    match found {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "the dashboard's browser test needs Chromium and found none: install it with \
             `sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium` (Debian/Ubuntu), \
             then run the tests again"
        ),
    }
}

/// Runs headless Chromium with `args` then `url`; its stdout.
async fn browse(profile: &Path, args: &[&str], url: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("Chromium finishes within 2 minutes")
    .expect("Chromium starts");
    assert!(
        out.status.success(),
        "Chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after the page's script ran, with virtual time enough for a refresh or two.
async fn dom(profile: &Path, url: &str) -> String {
    browse(profile, &["--virtual-time-budget=12000", "--dump-dom"], url).await
}

async fn screenshot(profile: &Path, url: &str, file: &Path, size: &str) {
    let _ = std::fs::remove_file(file);
    browse(
        profile,
        &[
            &format!("--screenshot={}", file.display()),
            &format!("--window-size={size}"),
            "--virtual-time-budget=3000",
        ],
        url,
    )
    .await;
    let bytes =
        std::fs::read(file).unwrap_or_else(|e| panic!("no screenshot {}: {e}", file.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        file.display()
    );
}

/// The text of the overview's row of `model`.
fn model_row<'a>(dom: &'a str, model: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-model=\"{model}\""))
        .unwrap_or_else(|| panic!("no row for {model}: {dom}"));
    let end = dom[start..].find("</tr>").expect("the row ends") + start;
    &dom[start..end]
}

/// An integer in `value="…"` right after `data-field="field"`.
fn field(html: &str, name: &str) -> i64 {
    let re = regex::Regex::new(&format!(r#"data-field="{name}" value="(-?\d+)""#)).unwrap();
    re.captures(html)
        .unwrap_or_else(|| panic!("no {name} in {html}"))[1]
        .parse()
        .unwrap()
}

/// The counts by reason in the cell `data-field="field"`.
fn reasons(html: &str, name: &str) -> serde_json::Value {
    let start = html
        .find(&format!("data-field=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let end = html[start..]
        .find("</td>")
        .map_or(html.len(), |e| e + start);
    let re = regex::Regex::new(r#"data-reason="([a-z_]+)" data-count="(\d+)""#).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = re
        .captures_iter(&html[start..end])
        .map(|c| (c[1].to_string(), c[2].parse::<i64>().unwrap().into()))
        .collect();
    serde_json::Value::Object(map)
}

#[tokio::test]
async fn the_dashboard_in_chromium_shows_what_status_json_shows_and_no_customer_value() {
    let browser = chromium();
    let db = TestDb::new().await;
    seed_recent_leads(&db, 8).await;
    make_too_old(&db, 3).await;
    make_too_old(&db, 6).await;
    let sandbox = start_sandbox(capi_sync::sandbox::Faults::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("capi-sync.toml");
    let models = LEADS_MODEL.replace("*/5 * * * *", "0 0 1 1 *");
    std::fs::write(
        &cfg,
        config_text(
            &db,
            &sandbox.base_url(),
            &format!("[service]\nmetrics_addr = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\""),
            &models,
        ),
    )
    .unwrap();

    let synced = cli(&cfg, &["sync"]).await;
    assert_eq!(synced.code, 0, "{}", synced.all());
    // Two more rows wait after the sync, one of them 6.5 days old: it leaves Meta's 7-day
    // window within the next 24 hours.
    seed_recent_leads(&db, 2).await;
    sqlx::query(
        "UPDATE crm.leads SET happened_at = now() - interval '6 days 12 hours'
         WHERE id = (SELECT max(id) FROM crm.leads)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let status = cli(&cfg, &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{}", status.all());
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let leads = &status["models"][0];

    let _service = command(&cfg, &["run"]).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..150 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "the service answers on {base}");

    let profile = dir.path().join("chromium-profile");
    let overview = dom(&profile, &format!("{base}/")).await;
    assert!(
        overview.contains("data-live=\"on\""),
        "the script ran under the CSP: {overview}"
    );
    assert!(
        overview.contains("data-refreshed=\""),
        "the script refreshed <main>: {overview}"
    );
    let row = model_row(&overview, "leads");
    assert_eq!(
        field(row, "events_sent"),
        leads["last_run"]["events_sent"].as_i64().unwrap()
    );
    assert_eq!(
        field(row, "rows_read"),
        leads["last_run"]["rows_read"].as_i64().unwrap()
    );
    assert_eq!(
        field(row, "waiting_rows"),
        leads["waiting_rows"].as_i64().unwrap()
    );
    assert_eq!(
        reasons(row, "refused_by_reason"),
        leads["refused_by_reason"]
    );
    assert_eq!(
        field(row, "rows_expiring"),
        leads["rows_expiring"].as_i64().unwrap()
    );
    assert_eq!(
        field(row, "rows_expired_waiting"),
        leads["rows_expired_waiting"].as_i64().unwrap()
    );
    assert_eq!(field(row, "waiting_rows"), 2);
    assert_eq!(field(row, "rows_expiring"), 1);
    assert_eq!(leads["refused_by_reason"]["event_time_too_old"], 2);

    let page = dom(&profile, &format!("{base}/models/leads")).await;
    assert!(page.contains("<svg class=\"chart\""), "{page}");
    assert!(
        page.contains("data-row-key=\"3\""),
        "refused row 3 by its key: {page}"
    );
    assert!(
        page.contains("data-row-key=\"6\""),
        "refused row 6 by its key: {page}"
    );
    assert!(page.contains("data-action=\"/models/leads/run\""), "{page}");

    for html in [&overview, &page] {
        let lower = html.to_lowercase();
        assert!(!lower.contains("@example.com"), "an email shows: {html}");
        assert!(!lower.contains("person."), "an email shows: {html}");
        assert!(!html.contains("253-"), "a phone number shows: {html}");
        assert!(!html.contains(ADMIN), "the admin token shows");
        assert!(!html.contains(TOKEN), "the access token shows");
    }

    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    screenshot(
        &profile,
        &format!("{base}/"),
        &target.join("dashboard.png"),
        "1280,900",
    )
    .await;
    screenshot(
        &profile,
        &format!("{base}/models/leads"),
        &target.join("dashboard-phone.png"),
        "390,844",
    )
    .await;
    drop(browser);
}
