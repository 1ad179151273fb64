//! What the service's endpoints answer besides their bodies: a path they do not serve, a
//! method other than GET, a HEAD, and the content type a scraper reads the metrics by.

use crate::helpers::*;
use capi_sync::metrics::Metrics;
use capi_sync::sandbox::Faults;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

struct Served {
    base: String,
    stop: CancellationToken,
    _db: TestDb,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve() -> Served {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let stop = CancellationToken::new();
    let endpoints = capi_sync::http_server::start(
        "127.0.0.1:0".parse().unwrap(),
        ctx,
        Arc::new(Metrics::new(["leads"])),
        stop.clone(),
    )
    .await
    .unwrap();
    Served {
        base: format!("http://{}", endpoints.addr),
        stop,
        _db: db,
    }
}

#[tokio::test]
async fn an_unknown_path_answers_404_naming_the_endpoints() {
    let served = serve().await;
    let (status, body) = get(&format!("{}/stats", served.base)).await;
    assert_eq!(status, 404);
    assert_eq!(body, "not found; try /healthz, /readyz or /metrics\n");
}

#[tokio::test]
async fn a_method_other_than_get_answers_405_on_any_path() {
    let served = serve().await;
    let client = reqwest::Client::new();
    for path in ["/metrics", "/healthz", "/nowhere"] {
        let resp = client
            .post(format!("{}{path}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "POST {path}");
        assert_eq!(resp.text().await.unwrap(), "only GET is served\n");
    }
}

#[tokio::test]
async fn head_is_answered_like_get_without_a_body() {
    let served = serve().await;
    let resp = reqwest::Client::new()
        .head(format!("{}/healthz", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text_version_0_0_4() {
    let served = serve().await;
    let resp = reqwest::get(format!("{}/metrics", served.base))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("capi_sync_rows_read_total{model=\"leads\"} 0\n"),
        "{body}"
    );
    assert!(!body.contains("# EOF"), "{body}");
    let health = reqwest::get(format!("{}/healthz", served.base))
        .await
        .unwrap();
    assert_eq!(
        health.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
}
