//! HTTP/1.1 server on hyper: one task per connection, served by hand so that a "drop" fault can
//! close a connection without answering, and so shutdown can drain in-flight requests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::error::GraphError;
use super::faults::{FaultState, Injected};
use super::json::Jv;
use super::misanswer::Window;
use super::quality::QualityBook;
use super::record::Recorder;
use super::request;
use super::validate::validate_batch;
use super::SandboxStats;

/// Largest accepted request body (Meta documents no byte limit; 1,000 large events fit).
const MAX_BODY_BYTES: usize = 64 << 20;
/// How long shutdown waits for in-flight requests before closing their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct Counters {
    requests: AtomicU64,
    accepted_requests: AtomicU64,
    rejected_requests: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    dropped: AtomicU64,
    events_accepted: AtomicU64,
    misanswered: AtomicU64,
    rejected_by: Mutex<(BTreeMap<i64, u64>, BTreeMap<i64, u64>)>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// A request being answered; counted out when dropped, also when its connection is dropped.
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(counters: &'a Counters) -> InFlight<'a> {
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// State shared by every connection.
pub(super) struct Shared {
    pub token: Option<String>,
    pub faults: FaultState,
    pub recorder: Option<Recorder>,
    pub keep_in_memory: bool,
    /// See [`super::SandboxConfig::count_only`].
    pub count_only: bool,
    pub events: Mutex<Vec<Value>>,
    pub counters: Counters,
    /// The `test_event_code` of the last accepted request that had one.
    pub last_test_event_code: Mutex<Option<String>>,
    /// Requests to be answered as something other than the Graph API.
    pub misanswer: Mutex<Option<Window>>,
    /// What `GET /vNN.N/dataset_quality` answers from.
    pub quality: QualityBook,
}

impl Shared {
    pub fn stats(&self) -> SandboxStats {
        let c = &self.counters;
        let (by_code, by_subcode) = c
            .rejected_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        SandboxStats {
            requests: c.requests.load(Ordering::SeqCst),
            accepted_requests: c.accepted_requests.load(Ordering::SeqCst),
            rejected_requests: c.rejected_requests.load(Ordering::SeqCst),
            rejected_by_code: by_code,
            rejected_by_subcode: by_subcode,
            failed: c.failed.load(Ordering::SeqCst),
            throttled: c.throttled.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
            events_accepted: c.events_accepted.load(Ordering::SeqCst),
            misanswered: c.misanswered.load(Ordering::SeqCst),
            last_test_event_code: self
                .last_test_event_code
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            max_in_flight: c.max_in_flight.load(Ordering::SeqCst),
        }
    }

    fn token_ok(&self, t: &str) -> bool {
        match &self.token {
            Some(expected) => same_token(t, expected),
            None => !t.is_empty(),
        }
    }

    /// A request is authenticated when it carries a token and every token it carries is
    /// valid.
    fn authenticated(&self, tokens: &[String]) -> bool {
        !tokens.is_empty() && tokens.iter().all(|t| self.token_ok(t))
    }

    fn count_rejection(&self, e: &GraphError) {
        self.counters
            .rejected_requests
            .fetch_add(1, Ordering::SeqCst);
        let mut by = self
            .counters
            .rejected_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *by.0.entry(e.code).or_default() += 1;
        if let Some(sub) = e.subcode {
            *by.1.entry(sub).or_default() += 1;
        }
    }
}

/// Accepts connections until `shutdown` fires, then drains in-flight requests.
pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(stream, shared.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // E.g. too many open files: back off a little instead of spinning.
                    tracing::warn!(error = %e, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let drop_conn = CancellationToken::new();
    let svc_drop = drop_conn.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let drop_conn = svc_drop.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req, &drop_conn).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        // A drop fault: the events are recorded; close the socket without a response.
        _ = drop_conn.cancelled() => {}
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "sandbox: connection error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = drop_conn.cancelled() => {}
                _ = conn.as_mut() => {}
            }
        }
    }
}

fn fbtrace_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..11)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn json_response(status: u16, body: Vec<u8>, trace: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Ok(v) = HeaderValue::from_str(trace) {
        h.insert("x-fb-trace-id", v);
    }
    resp
}

fn error_response(e: &GraphError) -> Response<Full<Bytes>> {
    let trace = fbtrace_id();
    let mut resp = json_response(e.http_status, e.to_body(&trace), &trace);
    if e.code == super::error::CODE_INVALID_TOKEN {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(
                "OAuth \"Facebook Platform\" \"invalid_token\" \"Invalid OAuth access token - Cannot parse access token\"",
            ),
        );
    }
    resp
}

/// Byte comparison whose time does not depend on where the first difference is.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

enum Outcome {
    /// `GET /vNN.N/{id}` with a valid token: the object's id.
    Object(String),
    /// `GET /vNN.N/dataset_quality`: the quality answer.
    Quality(Value),
    Reject(GraphError),
    Fail,
    Throttle,
    Accept {
        events: usize,
        drop: bool,
    },
}

async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
    drop_conn: &CancellationToken,
) -> Response<Full<Bytes>> {
    shared.counters.requests.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::enter(&shared.counters);
    let misanswer = shared
        .misanswer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .and_then(Window::next);
    if let Some(answer) = misanswer {
        shared.counters.misanswered.fetch_add(1, Ordering::SeqCst);
        // Read (and drop) the body first, so the client is not cut off mid-request: the
        // answer is what is being tested, not a reset connection.
        let _ = Limited::new(req.into_body(), MAX_BODY_BYTES)
            .collect()
            .await;
        tracing::debug!(
            ?answer,
            "sandbox: answering as something other than the Graph API"
        );
        return answer.response();
    }
    let faults = shared.faults.current();
    let outcome = process(shared, req, &faults).await;
    if faults.slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
    }
    match outcome {
        Outcome::Object(id) => {
            let trace = fbtrace_id();
            let body = serde_json::to_vec(&serde_json::json!({ "id": id })).unwrap_or_default();
            json_response(200, body, &trace)
        }
        Outcome::Quality(body) => {
            let trace = fbtrace_id();
            json_response(200, serde_json::to_vec(&body).unwrap_or_default(), &trace)
        }
        Outcome::Reject(e) => {
            shared.count_rejection(&e);
            tracing::debug!(code = e.code, subcode = ?e.subcode, "sandbox: request rejected");
            error_response(&e)
        }
        Outcome::Fail => {
            shared.counters.failed.fetch_add(1, Ordering::SeqCst);
            error_response(&GraphError::transient_failure())
        }
        Outcome::Throttle => {
            shared.counters.throttled.fetch_add(1, Ordering::SeqCst);
            let mut resp = error_response(&GraphError::throttled());
            let h = resp.headers_mut();
            h.insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            h.insert(
                "x-business-use-case-usage",
                HeaderValue::from_static(
                    r#"{"0":[{"type":"ads_management","call_count":100,"total_cputime":100,"total_time":100,"estimated_time_to_regain_access":1}]}"#,
                ),
            );
            resp
        }
        Outcome::Accept { events, drop } => {
            if drop {
                shared.counters.dropped.fetch_add(1, Ordering::SeqCst);
                tracing::debug!(
                    events,
                    "sandbox: events recorded, dropping the acknowledgement"
                );
                drop_conn.cancel();
                // The connection task closes the socket; this response is never produced.
                std::future::pending::<()>().await;
            }
            let trace = fbtrace_id();
            let body = serde_json::to_vec(&serde_json::json!({
                "events_received": events,
                "messages": [],
                "fbtrace_id": trace,
            }))
            .unwrap_or_default();
            let mut resp = json_response(200, body, &trace);
            if faults.usage_percent > 0 {
                let p = faults.usage_percent;
                let usage = format!(
                    r#"{{"0":[{{"type":"ads_management","call_count":{p},"total_cputime":{p},"total_time":{p},"estimated_time_to_regain_access":0}}]}}"#
                );
                if let Ok(v) = HeaderValue::from_str(&usage) {
                    resp.headers_mut().insert("x-business-use-case-usage", v);
                }
            }
            resp
        }
    }
}

async fn process(shared: &Shared, req: Request<Incoming>, faults: &super::Faults) -> Outcome {
    let (parts, body) = req.into_parts();
    if request::retired_version(parts.uri.path()).is_some() {
        return Outcome::Reject(GraphError::deprecated_version());
    }
    if request::quality_route(&parts.method, parts.uri.path()) {
        let bearer = request::bearer_token(&parts.headers);
        return match shared
            .quality
            .answer(parts.uri.query(), |t| shared.token_ok(t), bearer)
        {
            Ok(v) => Outcome::Quality(v),
            Err(e) => Outcome::Reject(e),
        };
    }
    if let Some(id) = request::object_route(&parts.method, parts.uri.path()) {
        let mut tokens: Vec<String> = request::bearer_token(&parts.headers).into_iter().collect();
        tokens.extend(request::query_token(parts.uri.query()));
        if !shared.authenticated(&tokens) {
            return Outcome::Reject(GraphError::invalid_token());
        }
        return Outcome::Object(id.to_string());
    }
    if let Err(e) = request::check_route(&parts.method, parts.uri.path()) {
        return Outcome::Reject(e);
    }
    if let Some(enc) = parts.headers.get(hyper::header::CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Outcome::Reject(GraphError::invalid_parameter(
                "Unsupported Content-Encoding",
            ));
        }
    }
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Outcome::Reject(GraphError::invalid_parameter(format!(
                "Request body unreadable or larger than {} MiB",
                MAX_BODY_BYTES >> 20
            )))
        }
    };
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (kind, boundary) = match request::body_kind(content_type, body.is_empty()) {
        Ok(k) => k,
        Err(e) => return Outcome::Reject(e),
    };
    let bearer = request::bearer_token(&parts.headers);
    if shared.count_only && kind == request::BodyKind::Json {
        return count_only(shared, faults, &body, bearer, parts.uri.query());
    }
    // Body errors (syntax, unknown top-level keys) are answered before authentication: they
    // reveal nothing, and a token inside an undecodable body could not be read anyway.
    let params = match request::decode(parts.uri.query(), kind, boundary.as_deref(), &body, bearer)
    {
        Ok(p) => p,
        Err(e) => return Outcome::Reject(e),
    };
    // Authentication: there must be a token, and every token given must be valid.
    if !shared.authenticated(&params.tokens) {
        return Outcome::Reject(GraphError::invalid_token());
    }
    let is_test = params.test_event_code.is_some();
    let test_event_code = params.test_event_code.clone();
    let data_text: String;
    let data = match params.data {
        request::Data::Parsed(v) => v,
        request::Data::Text(text) => {
            data_text = text;
            match request::parse_data_text(&data_text) {
                Ok(v) => v,
                Err(e) => return Outcome::Reject(e),
            }
        }
    };
    let events = match request::events_from_data(data) {
        Ok(ev) => ev,
        Err(e) => return Outcome::Reject(e),
    };

    let drop = match injected_fault(shared, faults) {
        Ok(drop) => drop,
        Err(outcome) => return outcome,
    };

    let now = chrono::Utc::now().timestamp();
    if let Err(e) = validate_batch(&events, now, &|id| faults.rejects_event(id)) {
        return Outcome::Reject(e);
    }

    let n = events.len();
    if let Some(pixel) = request::pixel_of(parts.uri.path()) {
        shared.quality.record(pixel, &events, now);
    }
    if let Some(rec) = &shared.recorder {
        let mut lines = Vec::with_capacity(n * 512);
        for ev in &events {
            // Serializing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut lines, ev);
            lines.push(b'\n');
        }
        if let Err(e) = rec.append(lines).await {
            tracing::error!(error = %e, "sandbox: writing the record file failed");
            return Outcome::Fail;
        }
    }
    if shared.keep_in_memory {
        let values: Vec<Value> = events.iter().map(Jv::to_value).collect();
        shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(values);
    }
    if test_event_code.is_some() {
        *shared
            .last_test_event_code
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = test_event_code;
    }
    count_accepted(shared, n);
    tracing::debug!(
        events = n,
        test_event_code = is_test,
        "sandbox: events accepted"
    );
    Outcome::Accept { events: n, drop }
}

/// The fault injected into a request about to be accepted: `Err` with the answer to give
/// instead, or whether to drop the acknowledgement.
fn injected_fault(shared: &Shared, faults: &super::Faults) -> Result<bool, Outcome> {
    let accepted_so_far = shared.counters.accepted_requests.load(Ordering::SeqCst);
    let (injected, drop) = shared.faults.decide(faults, accepted_so_far);
    match injected {
        Injected::Fail => Err(Outcome::Fail),
        Injected::Throttle => Err(Outcome::Throttle),
        Injected::None => Ok(drop),
    }
}

fn count_accepted(shared: &Shared, events: usize) {
    shared
        .counters
        .accepted_requests
        .fetch_add(1, Ordering::SeqCst);
    shared
        .counters
        .events_accepted
        .fetch_add(events as u64, Ordering::SeqCst);
}

/// A JSON events request under `count_only`: authenticated like any other, then accepted
/// with its count of `data` entries, the events themselves unread.
fn count_only(
    shared: &Shared,
    faults: &super::Faults,
    body: &[u8],
    bearer: Option<String>,
    query: Option<&str>,
) -> Outcome {
    let Some(counted) = super::count_only::count(body) else {
        return Outcome::Reject(GraphError::invalid_parameter(
            "Request body must be a JSON object",
        ));
    };
    let tokens: Vec<String> = counted
        .access_token
        .into_iter()
        .chain(bearer)
        .chain(request::query_token(query))
        .collect();
    if !shared.authenticated(&tokens) {
        return Outcome::Reject(GraphError::invalid_token());
    }
    let Some(n) = counted.events.filter(|n| *n > 0) else {
        return Outcome::Reject(GraphError::invalid_parameter(
            "The parameter data is required and must be a non-empty array",
        ));
    };
    let drop = match injected_fault(shared, faults) {
        Ok(drop) => drop,
        Err(outcome) => return outcome,
    };
    count_accepted(shared, n);
    Outcome::Accept { events: n, drop }
}

/// Binds and starts the accept loop.
pub(super) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
