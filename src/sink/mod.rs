//! The Graph API side: one request per batch, the answer classified by Meta's error code
//! (never by message text), and the retry policy.

mod answer;
mod probe;
pub mod quality;
pub mod retry;
pub mod versions;

pub use answer::{NotGraphKind, MAX_ANSWER_BYTES};

use crate::config::{MetaSettings, Secret};
use std::time::Duration;

/// Meta's error envelope, as much of it as we use.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct GraphError {
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: i64,
    #[serde(default)]
    pub error_subcode: Option<i64>,
    #[serde(default)]
    pub is_transient: Option<bool>,
    #[serde(default)]
    pub error_user_title: Option<String>,
    #[serde(default)]
    pub error_user_msg: Option<String>,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

/// How the pipeline treats a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff: codes 1, 2, HTTP 5xx, timeouts, resets, `is_transient`.
    Transient,
    /// Back off longer and lower concurrency: 4, 17, 32, 341, 613, 80000-80014, HTTP 429.
    Throttled,
    /// Stop the model's run: 190, 102, 10, 200-299, 100/33, 3.
    Auth,
    /// An event Meta refused (code 100 with a 2804xxx subcode): split the batch to isolate
    /// the bad events. The only class that refuses rows.
    Invalid,
    /// Meta's error envelope with a code we do not classify (code 100 without an event
    /// subcode included): stop the run; nothing is refused, as we cannot tell which event,
    /// if any, is at fault.
    Unexpected,
    /// The answer is not the Graph API's (an HTML page, a redirect, no envelope, a 2xx
    /// without `events_received`, an oversized body): stop the run; nothing is refused.
    NotGraph,
    /// Meta refuses the API version in the URL (code 2635, "You are calling a deprecated
    /// version of the Ads API"): the version has ended, or the app is newer than it. A setting
    /// to change, never retried: stop the run; nothing is refused.
    RetiredVersion,
}

/// Meta's code for a call to a version it no longer serves to this app
/// (https://developers.facebook.com/blog/post/2024/04/16/upcoming-change-in-marketing-api-version-deprecation ;
/// also seen on Conversions API `/events` sends).
pub const CODE_RETIRED_VERSION: i64 = 2635;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Meta answered HTTP {status} from {url} with error code {code}{sub}: {msg}", code = .error.code,
        sub = .error.error_subcode.map(|s| format!("/{s}")).unwrap_or_default(),
        msg = .error.error_user_title.clone().unwrap_or_else(|| .error.message.clone()))]
    Api {
        status: u16,
        /// The request's URL without user info or query.
        url: String,
        error: Box<GraphError>,
        retry_after: Option<Duration>,
    },
    /// Something other than the Graph API answered: `answer` holds the first bytes of its
    /// body (control characters escaped), never the body we sent.
    #[error("HTTP {status} from {url} is {kind}; the answer begins {answer}")]
    NotGraph {
        kind: NotGraphKind,
        status: u16,
        /// The request's URL without user info or query.
        url: String,
        answer: String,
        retry_after: Option<Duration>,
    },
    #[error("Meta acknowledged {received} of {sent} events")]
    Partial { sent: usize, received: u64 },
    #[error("request to the Graph API timed out")]
    Timeout,
    #[error("network error talking to the Graph API: {0}")]
    Network(String),
}

impl SinkError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Api { status, error, .. } => classify(*status, error),
            SinkError::NotGraph { kind, status, .. } => match (kind, status) {
                (NotGraphKind::TooLarge | NotGraphKind::Redirect, _) => ErrorClass::NotGraph,
                // A load balancer's own 5xx or 429 page says Meta (or the path to it) is
                // busy or down for now: worth the retries, and the run fails after them.
                (_, 500..=599) => ErrorClass::Transient,
                (_, 429) => ErrorClass::Throttled,
                // 404, 405, 413, 401/403 pages of a proxy, 2xx junk: retrying asks the same
                // wrong server again.
                _ => ErrorClass::NotGraph,
            },
            // A short count means Meta dropped some events without saying which: the batch
            // is re-sent whole, under the same event ids.
            SinkError::Partial { .. } | SinkError::Timeout | SinkError::Network(_) => {
                ErrorClass::Transient
            }
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::Api { retry_after, .. } | SinkError::NotGraph { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    pub fn graph_error(&self) -> Option<&GraphError> {
        match self {
            SinkError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SinkError::Api { status, .. } | SinkError::NotGraph { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Code 100 subcodes in this range are the Conversions API's per-event validation errors
/// ("any event failing parameter validation: code 100 with a 2804xxx subcode", capi-reference.md
/// §6 and §11: 2804003 event_time too old, 2804050 too little customer information, 2804036
/// lead_id, 2804116 messaging ids, ...). Meta rejects the whole request for one such event, so
/// halving the batch isolates it.
const EVENT_SUBCODES: std::ops::RangeInclusive<i64> = 2_804_000..=2_804_999;

/// Classifies by `error.code`/`error_subcode`/`is_transient` and the HTTP status
/// (capi-reference.md §6; Graph API error-handling guide).
///
/// Only code 100 with an event subcode refuses rows. Code 100 without one is a request-level
/// "invalid parameter" (a body Meta cannot read, an unknown top-level key, `data` missing;
/// the Graph error guide's generic 100): every half of the batch would get it too, and
/// bisecting it would refuse every event for a fault of the request. It stops the run like
/// any code we do not classify; a stopped run loses nothing, a refused row is never sent.
pub fn classify(status: u16, e: &GraphError) -> ErrorClass {
    match e.code {
        CODE_RETIRED_VERSION => ErrorClass::RetiredVersion,
        4 | 17 | 32 | 341 | 613 | 80000..=80014 => ErrorClass::Throttled,
        190 | 102 | 10 | 3 | 200..=299 => ErrorClass::Auth,
        // 100/33: the pixel does not exist or the token cannot see it.
        100 if e.error_subcode == Some(33) => ErrorClass::Auth,
        100 if e.error_subcode.is_some_and(|s| EVENT_SUBCODES.contains(&s)) => ErrorClass::Invalid,
        1 | 2 | 368 => ErrorClass::Transient,
        _ if e.is_transient == Some(true) => ErrorClass::Transient,
        _ if status == 429 => ErrorClass::Throttled,
        _ if status >= 500 => ErrorClass::Transient,
        _ if status == 401 || status == 403 => ErrorClass::Auth,
        _ => ErrorClass::Unexpected,
    }
}

/// Meta's acknowledgement of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub events_received: u64,
    pub fbtrace_id: Option<String>,
    /// The highest usage percentage Meta reported in its rate-limit headers, if any.
    pub usage_percent: Option<u32>,
}

/// Usage headers Meta attaches to Marketing API answers (rate-limiting page): JSON whose
/// values carry `call_count`, `total_cputime` and `total_time` percentages, flat
/// (`X-App-Usage`, `X-Ad-Account-Usage`) or per business id in arrays
/// (`X-Business-Use-Case-Usage`).
pub const USAGE_HEADERS: [&str; 3] = [
    "x-business-use-case-usage",
    "x-app-usage",
    "x-ad-account-usage",
];

/// The highest percentage in a usage header's JSON.
pub fn usage_percent(header_json: &str) -> Option<u32> {
    fn walk(v: &serde_json::Value, best: &mut Option<u32>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    if matches!(
                        k.as_str(),
                        "call_count" | "total_cputime" | "total_time" | "acc_id_util_pct"
                    ) {
                        if let Some(p) = x.as_f64() {
                            let p = p.clamp(0.0, 1000.0) as u32;
                            *best = Some(best.map_or(p, |b| b.max(p)));
                        }
                    } else {
                        walk(x, best);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, best)),
            _ => {}
        }
    }
    let v: serde_json::Value = serde_json::from_str(header_json).ok()?;
    let mut best = None;
    walk(&v, &mut best);
    best
}

/// Sends batches to `POST {graph_url}/{api_version}/{pixel_id}/events`.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
    partner_agent: Option<String>,
    api_version: String,
    bodies: BodyPool,
}

/// Buffers of request bodies sent and dropped, for the next bodies. A body is about a megabyte
/// (a thousand events); a fresh one per request had the allocator hand pages back to the
/// system and fault them in again, a few percent of a backfill's CPU.
#[derive(Clone, Default)]
struct BodyPool(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// More than the requests that can be in flight at once; the rest are freed.
const POOLED_BODIES: usize = 32;

impl BodyPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        buf.reserve(capacity);
        buf
    }
}

/// A body's bytes; its buffer goes back to the pool when the HTTP client is done with it.
struct PooledBody {
    buf: Vec<u8>,
    pool: BodyPool,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        if let Ok(mut pool) = self.pool.0.lock() {
            if pool.len() < POOLED_BODIES {
                pool.push(buf);
            }
        }
    }
}

impl std::fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphClient({})", self.base)
    }
}

impl GraphClient {
    pub fn new(meta: &MetaSettings) -> Result<GraphClient, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(meta.request_timeout)
            .connect_timeout(Duration::from_secs(10).min(meta.request_timeout))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("capi-sync/", env!("CARGO_PKG_VERSION")))
            // The Graph API does not redirect; a redirect comes from something else (a proxy,
            // a login page, http->https) and must be seen as such, not followed with the token
            // in the body or the header.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SinkError::Network(e.to_string()))?;
        Ok(GraphClient {
            http,
            base: format!("{}/{}", meta.graph_url, meta.api_version),
            token: meta.access_token.clone(),
            partner_agent: meta.partner_agent.clone(),
            api_version: meta.api_version.clone(),
            bodies: BodyPool::default(),
        })
    }

    /// The Graph API version in every URL (`meta.api_version`).
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    pub fn endpoint(&self, pixel_id: &str) -> String {
        format!("{}/{}/events", self.base, pixel_id)
    }

    /// Builds the JSON body from pre-serialized events. The token travels in the body, a
    /// documented place that keeps it out of URLs and access logs.
    pub fn body<E: AsRef<[u8]>>(
        &self,
        events: &[E],
        test_event_code: Option<&str>,
    ) -> bytes::Bytes {
        self.build_body(events, test_event_code, None)
    }

    /// [`GraphClient::body`], with each event's byte range in the body, so that a request for
    /// some of the events can be built from this body's bytes alone.
    pub fn body_with_spans<E: AsRef<[u8]>>(
        &self,
        events: &[E],
        test_event_code: Option<&str>,
    ) -> (bytes::Bytes, Vec<std::ops::Range<usize>>) {
        let mut spans = Vec::with_capacity(events.len());
        let body = self.build_body(events, test_event_code, Some(&mut spans));
        (body, spans)
    }

    fn build_body<E: AsRef<[u8]>>(
        &self,
        events: &[E],
        test_event_code: Option<&str>,
        mut spans: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> bytes::Bytes {
        let size: usize = events.iter().map(|e| e.as_ref().len() + 1).sum();
        let mut out = self.bodies.take(size + 256);
        out.extend_from_slice(b"{\"data\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let start = out.len();
            out.extend_from_slice(e.as_ref());
            if let Some(spans) = spans.as_deref_mut() {
                spans.push(start..out.len());
            }
        }
        out.push(b']');
        let mut tail = String::new();
        if let Some(code) = test_event_code {
            tail.push_str(",\"test_event_code\":");
            crate::mapping::json::write_str(&mut tail, code);
        }
        if let Some(agent) = &self.partner_agent {
            tail.push_str(",\"partner_agent\":");
            crate::mapping::json::write_str(&mut tail, agent);
        }
        tail.push_str(",\"access_token\":");
        crate::mapping::json::write_str(&mut tail, self.token.expose());
        tail.push('}');
        out.extend_from_slice(tail.as_bytes());
        bytes::Bytes::from_owner(PooledBody {
            buf: out,
            pool: self.bodies.clone(),
        })
    }

    /// One request. Success means HTTP 2xx with `{"events_received": n}`, n the batch size; an
    /// answer in neither Meta's success nor Meta's error shape is [`SinkError::NotGraph`].
    pub async fn send(
        &self,
        pixel_id: &str,
        body: bytes::Bytes,
        count: usize,
    ) -> Result<Ack, SinkError> {
        // Kept (a reference, not a copy) so an answer that echoes it is never shown.
        let sent = body.clone();
        let resp = self
            .http
            .post(self.endpoint(pixel_id))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(map_reqwest)?;
        let usage = USAGE_HEADERS
            .iter()
            .filter_map(|h| resp.headers().get(*h))
            .filter_map(|v| v.to_str().ok())
            .filter_map(usage_percent)
            .max();
        let url = resp.url().clone();
        let answer = answer::read(resp).await?;
        let asked = answer::Asked {
            url: &url,
            token: self.token.expose(),
            sent: &sent,
        };
        if !(200..300).contains(&answer.status) || answer.too_large {
            return Err(answer.failure(&asked, NotGraphKind::NoEnvelope));
        }
        let Some((received, fbtrace_id)) = answer::acknowledgement(&answer.body) else {
            // Meta's error in a 2xx is still Meta's word; anything else is not.
            return Err(answer.failure(&asked, NotGraphKind::NoAcknowledgement));
        };
        if received != count as u64 {
            return Err(SinkError::Partial {
                sent: count,
                received,
            });
        }
        Ok(Ack {
            events_received: received,
            fbtrace_id,
            usage_percent: usage,
        })
    }
}

fn map_reqwest(e: reqwest::Error) -> SinkError {
    if e.is_timeout() {
        SinkError::Timeout
    } else {
        // reqwest's Display can include the URL; ours carries no token.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        SinkError::Network(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client with token "tok" and the default settings.
    fn test_client() -> GraphClient {
        let config = crate::config::Config::from_toml_str(
            "[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\naccess_token = \"tok\"\n",
            std::path::Path::new("."),
        )
        .expect("config");
        GraphClient::new(&config.meta).expect("client")
    }

    #[test]
    fn a_body_built_in_a_recycled_buffer_holds_only_its_own_events() {
        let client = test_client();
        let long = "{\"event_name\":\"a-much-longer-event-than-the-next\"}";
        let first = client.body(&[long, long, long], Some("TEST1"));
        let first_ptr = first.as_ptr();
        drop(first);
        let second = client.body(&["{\"e\":1}"], None);
        assert_eq!(second.as_ptr(), first_ptr, "the buffer is reused");
        let v: serde_json::Value = serde_json::from_slice(&second).expect("valid JSON");
        assert_eq!(v["data"], serde_json::json!([{"e": 1}]));
        assert_eq!(v["access_token"], "tok");
        assert!(v.get("test_event_code").is_none());
        assert_eq!(v["partner_agent"], "capi-sync");
    }

    #[test]
    fn spans_locate_each_event_so_a_part_rebuilds_from_the_body() {
        let client = test_client();
        let events = ["{\"e\":1}", "{\"e\":\"two\"}", "{\"e\":[3]}"];
        let (full, spans) = client.body_with_spans(&events, Some("T1"));
        assert_eq!(spans.len(), 3);
        for (span, e) in spans.iter().zip(events) {
            assert_eq!(&full[span.clone()], e.as_bytes());
        }
        let part: Vec<&[u8]> = [2, 0].iter().map(|&i| &full[spans[i].clone()]).collect();
        let v: serde_json::Value =
            serde_json::from_slice(&client.body(&part, Some("T1"))).expect("valid JSON");
        assert_eq!(v["data"], serde_json::json!([{"e": [3]}, {"e": 1}]));
        assert_eq!(v["test_event_code"], "T1");
    }

    fn err(code: i64, sub: Option<i64>) -> GraphError {
        GraphError {
            code,
            error_subcode: sub,
            ..Default::default()
        }
    }

    #[test]
    fn usage_headers_give_their_highest_percentage() {
        assert_eq!(
            usage_percent(r#"{"call_count": 12, "total_cputime": 95, "total_time": 40}"#),
            Some(95)
        );
        assert_eq!(
            usage_percent(
                r#"{"1234": [{"type": "ads_management", "call_count": 3, "total_cputime": 7, "total_time": 91, "estimated_time_to_regain_access": 0}]}"#
            ),
            Some(91)
        );
        assert_eq!(usage_percent("not json"), None);
        assert_eq!(usage_percent("{}"), None);
    }

    #[test]
    fn classification_follows_codes_not_messages() {
        assert_eq!(classify(400, &err(100, Some(2804003))), ErrorClass::Invalid);
        assert_eq!(classify(400, &err(2635, None)), ErrorClass::RetiredVersion);
        // Whatever the status or a transient flag says, a retired version stays retired.
        let mut retired = err(2635, None);
        retired.is_transient = Some(true);
        assert_eq!(classify(500, &retired), ErrorClass::RetiredVersion);
        assert_eq!(classify(400, &err(100, Some(33))), ErrorClass::Auth);
        assert_eq!(classify(401, &err(190, None)), ErrorClass::Auth);
        assert_eq!(
            classify(400, &err(17, Some(2446079))),
            ErrorClass::Throttled
        );
        assert_eq!(classify(400, &err(80004, None)), ErrorClass::Throttled);
        assert_eq!(classify(500, &err(2, None)), ErrorClass::Transient);
        assert_eq!(classify(400, &err(1, None)), ErrorClass::Transient);
        assert_eq!(classify(200, &err(200, None)), ErrorClass::Auth);
        let mut t = err(9999, None);
        t.is_transient = Some(true);
        assert_eq!(classify(400, &t), ErrorClass::Transient);
    }

    #[test]
    fn only_code_100_with_an_event_subcode_refuses_events() {
        for sub in [2804003, 2804050, 2804036, 2804116, 2804019] {
            assert_eq!(classify(400, &err(100, Some(sub))), ErrorClass::Invalid);
        }
        // A request-level invalid parameter, another family's subcode, a code nobody knows:
        // the run stops and nothing is refused.
        assert_eq!(classify(400, &err(100, None)), ErrorClass::Unexpected);
        assert_eq!(
            classify(400, &err(100, Some(1487390))),
            ErrorClass::Unexpected
        );
        assert_eq!(classify(400, &err(12345, None)), ErrorClass::Unexpected);
        assert_eq!(classify(200, &err(12345, None)), ErrorClass::Unexpected);
        // Meta's own 5xx or 429 stay retried whatever the code.
        assert_eq!(classify(503, &err(12345, None)), ErrorClass::Transient);
        assert_eq!(classify(429, &err(12345, None)), ErrorClass::Throttled);
    }

    fn not_graph(kind: NotGraphKind, status: u16) -> SinkError {
        SinkError::NotGraph {
            kind,
            status,
            url: "https://proxy.example/v25.0/1/events".into(),
            answer: "\"<html>\"".into(),
            retry_after: None,
        }
    }

    #[test]
    fn an_answer_not_from_the_graph_api_is_retried_only_when_it_says_busy_or_down() {
        use NotGraphKind::*;
        for status in [404, 405, 413, 400, 401, 403, 407, 200] {
            assert_eq!(not_graph(NoEnvelope, status).class(), ErrorClass::NotGraph);
        }
        assert_eq!(
            not_graph(NoAcknowledgement, 200).class(),
            ErrorClass::NotGraph
        );
        assert_eq!(not_graph(Redirect, 302).class(), ErrorClass::NotGraph);
        assert_eq!(not_graph(TooLarge, 503).class(), ErrorClass::NotGraph);
        for status in [500, 502, 503, 504] {
            assert_eq!(not_graph(NoEnvelope, status).class(), ErrorClass::Transient);
        }
        assert_eq!(not_graph(NoEnvelope, 429).class(), ErrorClass::Throttled);
    }
}
