//! `capi-sync demo --serve`: after the demo's sync, the service keeps running with the
//! dashboard on the printed address, and stops cleanly on SIGTERM.

use crate::helpers::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn demo_serve_prints_the_dashboard_address_and_serves_it_until_stopped() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = binary();
    let mut child = cmd
        .args(["demo", "--serve", "--addr", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        // The demo records its events in the working directory.
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let printed = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("dashboard: ") {
                return rest.split_whitespace().next().map(str::to_string);
            }
        }
        None
    })
    .await
    .expect("the demo prints the dashboard's address within 2 minutes")
    .expect("a `dashboard: URL` line");
    let (status, body) = get(&printed).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<tr data-model=\"crm_lead_stages\""),
        "{body}"
    );
    assert!(
        body.contains("<tr data-model=\"store_purchases\""),
        "{body}"
    );
    // The demo's sync ran before: its runs show.
    assert!(body.contains("data-field=\"events_sent\""), "{body}");

    sigterm(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the demo stops within 30 s")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
