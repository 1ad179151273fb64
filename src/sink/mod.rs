//! The Graph API side: one request per batch, the answer classified by Meta's error code
//! (never by message text), and the retry policy.

mod probe;
pub mod retry;

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

#[derive(serde::Deserialize)]
struct ErrorEnvelope {
    error: GraphError,
}

#[derive(serde::Deserialize)]
struct SuccessBody {
    events_received: Option<u64>,
    #[serde(default)]
    fbtrace_id: Option<String>,
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
    /// A payload Meta refused (code 100): split the batch to isolate the bad events.
    Invalid,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Meta answered HTTP {status} with error code {code}{sub}: {msg}", code = .error.code,
        sub = .error.error_subcode.map(|s| format!("/{s}")).unwrap_or_default(),
        msg = .error.error_user_title.clone().unwrap_or_else(|| .error.message.clone()))]
    Api {
        status: u16,
        error: Box<GraphError>,
        retry_after: Option<Duration>,
    },
    #[error("Meta answered HTTP {status} without a Graph error body")]
    Http {
        status: u16,
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
            SinkError::Http { status, .. } => match status {
                429 => ErrorClass::Throttled,
                401 | 403 => ErrorClass::Auth,
                500..=599 => ErrorClass::Transient,
                _ => ErrorClass::Invalid,
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
            SinkError::Api { retry_after, .. } | SinkError::Http { retry_after, .. } => {
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
}

/// Classifies by `error.code`/`error_subcode`/`is_transient` and the HTTP status
/// (capi-reference.md §6; Graph API error-handling guide).
pub fn classify(status: u16, e: &GraphError) -> ErrorClass {
    match e.code {
        4 | 17 | 32 | 341 | 613 | 80000..=80014 => ErrorClass::Throttled,
        190 | 102 | 10 | 3 | 200..=299 => ErrorClass::Auth,
        // 100/33: the pixel does not exist or the token cannot see it.
        100 if e.error_subcode == Some(33) => ErrorClass::Auth,
        100 => ErrorClass::Invalid,
        1 | 2 | 368 => ErrorClass::Transient,
        _ if e.is_transient == Some(true) => ErrorClass::Transient,
        _ if status == 429 => ErrorClass::Throttled,
        _ if status >= 500 => ErrorClass::Transient,
        _ if status == 401 || status == 403 => ErrorClass::Auth,
        _ => ErrorClass::Invalid,
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
            .build()
            .map_err(|e| SinkError::Network(e.to_string()))?;
        Ok(GraphClient {
            http,
            base: format!("{}/{}", meta.graph_url, meta.api_version),
            token: meta.access_token.clone(),
            partner_agent: meta.partner_agent.clone(),
            bodies: BodyPool::default(),
        })
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

    /// One request. Success means HTTP 2xx and `events_received` equal to the batch size.
    pub async fn send(
        &self,
        pixel_id: &str,
        body: bytes::Bytes,
        count: usize,
    ) -> Result<Ack, SinkError> {
        let resp = self
            .http
            .post(self.endpoint(pixel_id))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(map_reqwest)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let usage = USAGE_HEADERS
            .iter()
            .filter_map(|h| resp.headers().get(*h))
            .filter_map(|v| v.to_str().ok())
            .filter_map(usage_percent)
            .max();
        let bytes = resp.bytes().await.map_err(map_reqwest)?;
        if (200..300).contains(&status) {
            let ok: SuccessBody = serde_json::from_slice(&bytes).map_err(|_| SinkError::Http {
                status,
                retry_after,
            })?;
            let received = ok.events_received.unwrap_or(0);
            if received != count as u64 {
                return Err(SinkError::Partial {
                    sent: count,
                    received,
                });
            }
            return Ok(Ack {
                events_received: received,
                fbtrace_id: ok.fbtrace_id,
                usage_percent: usage,
            });
        }
        match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(env) => Err(SinkError::Api {
                status,
                error: Box::new(env.error),
                retry_after,
            }),
            Err(_) => Err(SinkError::Http {
                status,
                retry_after,
            }),
        }
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
}
