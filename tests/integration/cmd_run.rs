//! `capi-sync run`: the service runs models on their schedules, serves its endpoints, and stops
//! cleanly on SIGTERM.

use crate::helpers::*;
use std::time::Duration;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_run_service_serves_its_endpoints_and_stops_cleanly_on_sigterm() {
    let (db, sandbox) = leads_and_sandbox(5).await;
    let addr = format!("127.0.0.1:{}", free_port());
    // Every second, so a run happens while the test watches.
    let models = LEADS_MODEL.replace("*/5 * * * *", "* * * * * *");
    let cfg = config_file(&db, &sandbox.base_url(), &models, &addr);
    let mut child = command(&cfg.path, &["run"]).spawn().unwrap();
    let base = format!("http://{addr}");
    let mut body = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = reqwest::get(format!("{base}/metrics")).await {
            body = resp.text().await.unwrap_or_default();
            if body.contains("capi_sync_events_sent_total{model=\"leads\"} 5\n") {
                break;
            }
        }
    }
    assert!(
        body.contains("capi_sync_events_sent_total{model=\"leads\"} 5\n"),
        "{body}"
    );
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    sigterm(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the service stops within 20 s")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "endpoints closed"
    );
}
