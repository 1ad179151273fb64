//! The service's endpoints under abuse: a client that never finishes its request head is cut
//! off, connections past the cap wait until one closes, and a flood of `/readyz` asks the
//! databases once per cached answer.

use crate::helpers::*;
use capi_sync::http_server::{start_with_limits, EndpointLimits, Endpoints};
use capi_sync::metrics::Metrics;
use capi_sync::sandbox::Faults;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Far longer than any step here takes, even on a loaded machine; only reached when broken.
const PATIENCE: Duration = Duration::from_secs(20);

struct Served {
    endpoints: Endpoints,
    stop: CancellationToken,
    _db: TestDb,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(limits: EndpointLimits) -> Served {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let stop = CancellationToken::new();
    let endpoints = start_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        ctx,
        Arc::new(Metrics::new(["leads"])),
        stop.clone(),
        limits,
    )
    .await
    .unwrap();
    Served {
        endpoints,
        stop,
        _db: db,
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: capi-sync\r\n\r\n";

/// Sends one request on a kept-alive connection and reads its whole (small) answer.
async fn round_trip(conn: &mut TcpStream) -> String {
    conn.write_all(HEALTHZ).await.unwrap();
    read_answer(conn).await
}

async fn read_answer(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        // The answer to /healthz ends with its 3-byte body "ok\n".
        while !got.ends_with(b"ok\n") {
            let n = conn.read(&mut buf).await.expect("read the answer");
            assert!(
                n > 0,
                "closed before answering: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_client_that_sends_a_partial_header_is_disconnected_after_the_timeout() {
    let served = serve(EndpointLimits {
        header_read_timeout: Duration::from_millis(300),
        ..EndpointLimits::default()
    })
    .await;
    let mut slow = TcpStream::connect(served.endpoints.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: capi-sync\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the connection was still open long after the header read timeout"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "an unfinished request was served: {rest:?}"
    );
    // A client that sends its request at once is served as before.
    let mut prompt = TcpStream::connect(served.endpoints.addr).await.unwrap();
    assert!(round_trip(&mut prompt).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_a_served_one_closes() {
    let served = serve(EndpointLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections: 2,
        ..EndpointLimits::default()
    })
    .await;
    let addr = served.endpoints.addr;
    // Two kept-alive connections, each proven served, hold both slots.
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(round_trip(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(round_trip(&mut second).await.starts_with("HTTP/1.1 200"));

    // The third is accepted by the kernel (the listen backlog) but not by the server.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(HEALTHZ).await.unwrap();
    // Give a wrongly accepted connection every chance to be answered: a moment, then a
    // request on a served connection, answered after the third's was sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(round_trip(&mut second).await.starts_with("HTTP/1.1 200"));
    let mut peek = [0u8; 16];
    match third.try_read(&mut peek) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the connection past the cap was served or closed: {other:?}"),
    }

    // Once a served connection closes, the waiting one is served.
    drop(first);
    assert!(read_answer(&mut third).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn two_hundred_concurrent_readyz_requests_ask_the_databases_once() {
    let served = serve(EndpointLimits {
        readiness_ttl: Duration::from_secs(30),
        ..EndpointLimits::default()
    })
    .await;
    let url = format!("http://{}/readyz", served.endpoints.addr);
    // Each request on its own connection, closed after its answer, as probes from many
    // clients would come (a kept-alive idle connection holds its slot until the header read
    // timeout).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answers = futures::future::join_all((0..200).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(&url).send().await.map(|r| r.status().as_u16()) }
    }))
    .await;
    let ready = answers.iter().filter(|a| matches!(a, Ok(200))).count();
    assert_eq!(
        ready,
        200,
        "{:?}",
        answers.iter().find(|a| !matches!(a, Ok(200)))
    );
    assert_eq!(served.endpoints.readiness_probes(), 1);
}

#[tokio::test]
async fn readyz_reports_a_database_gone_once_the_cached_answer_expires() {
    let db = TestDb::new().await;
    let sandbox = start_sandbox(Faults::default()).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    let stop = CancellationToken::new();
    let endpoints = start_with_limits(
        "127.0.0.1:0".parse().unwrap(),
        ctx.clone(),
        Arc::new(Metrics::new(["leads"])),
        stop.clone(),
        EndpointLimits {
            readiness_ttl: Duration::from_millis(200),
            ..EndpointLimits::default()
        },
    )
    .await
    .unwrap();
    let url = format!("http://{}/readyz", endpoints.addr);
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
    ctx.warehouse.pool().close().await;
    let not_ready = tokio::time::timeout(PATIENCE, async {
        loop {
            let resp = reqwest::get(&url).await.unwrap();
            if resp.status().as_u16() == 503 {
                return resp.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("/readyz went on answering ready after the warehouse was gone");
    assert!(not_ready.contains("the warehouse"), "{not_ready}");
    assert!(endpoints.readiness_probes() >= 2);
    stop.cancel();
}
