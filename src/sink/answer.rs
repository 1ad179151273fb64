//! Reading and judging an answer: only Meta's own shapes count as the Graph API's word.
//!
//! Success is HTTP 2xx with `{"events_received": n, ...}`; a failure is Meta's envelope
//! `{"error": {"message", "type", "code", "error_subcode", ...}}` (capi-reference.md §6).
//! Anything else (an HTML page from a proxy, a redirect, a 2xx without the count, a body larger
//! than any Graph answer) comes from something that is not the Graph API: it says nothing about
//! our events, so it must never refuse one. Such an error names the HTTP status, the URL
//! without user info or query, and the first bytes of the answer, never the body we sent.

use super::{map_reqwest, GraphError, SinkError};
use std::time::Duration;

/// The most of an answer we read. A Graph answer to `/events` is a few hundred bytes; a
/// larger body is not Meta's and must not fill memory.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// How many bytes of an unexpected answer an error message shows.
pub const SHOWN_ANSWER_BYTES: usize = 200;

/// Why an answer is not the Graph API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotGraphKind {
    /// 3xx: the Graph API does not redirect `/events`, and redirects are not followed (a
    /// followed POST may turn into a GET, or carry the token to another host).
    Redirect,
    /// An error status without Meta's `{"error": {...}}` envelope.
    NoEnvelope,
    /// A 2xx whose body is not `{"events_received": n, ...}` with n a number.
    NoAcknowledgement,
    /// A 2xx to the pixel probe whose body is not `{"id": "..."}`.
    NoObject,
    /// A 2xx to the Dataset Quality API whose body is not a JSON object.
    NotAnObject,
    /// A body larger than [`MAX_ANSWER_BYTES`].
    TooLarge,
}

impl std::fmt::Display for NotGraphKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotGraphKind::Redirect => write!(f, "a redirect, which the Graph API never answers"),
            NotGraphKind::NoEnvelope => write!(f, "an error without Meta's error envelope"),
            NotGraphKind::NoAcknowledgement => {
                write!(f, "a success without Meta's `events_received` count")
            }
            NotGraphKind::NoObject => write!(f, "a success without the object's `id`"),
            NotGraphKind::NotAnObject => write!(f, "a success whose body is not a JSON object"),
            NotGraphKind::TooLarge => write!(
                f,
                "an answer larger than the {} MiB limit",
                MAX_ANSWER_BYTES >> 20
            ),
        }
    }
}

/// What an answer is judged against: where it came from and what must never be shown.
pub(super) struct Asked<'a> {
    pub url: &'a reqwest::Url,
    pub token: &'a str,
    /// The body we sent (empty for a GET): an answer that repeats it is not shown.
    pub sent: &'a [u8],
}

/// An answer read up to [`MAX_ANSWER_BYTES`].
pub(super) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
    /// The body went on past the limit; `body` holds its first bytes.
    pub too_large: bool,
}

/// Reads the status, `Retry-After` and at most [`MAX_ANSWER_BYTES`] of the body, chunk by
/// chunk, so a huge or endless answer costs no more than the limit.
pub(super) async fn read(mut resp: reqwest::Response) -> Result<Answer, SinkError> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let announced = resp.content_length().unwrap_or(0) as usize;
    let mut body = Vec::with_capacity(announced.min(MAX_ANSWER_BYTES));
    let mut too_large = false;
    while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
        let room = MAX_ANSWER_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            too_large = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        retry_after,
        body,
        too_large,
    })
}

#[derive(serde::Deserialize)]
struct ErrorEnvelope {
    error: StrictGraphError,
}

/// Meta's error object: `code` and `message` are always there in Meta's answers
/// (Graph API error-handling guide; capi-reference.md §6), so an `{"error": ...}` without
/// them is some other server's.
#[derive(serde::Deserialize)]
struct StrictGraphError {
    code: i64,
    message: String,
    #[serde(flatten)]
    rest: GraphError,
}

impl StrictGraphError {
    fn into_graph_error(self) -> GraphError {
        GraphError {
            code: self.code,
            message: self.message,
            ..self.rest
        }
    }
}

/// Meta's error envelope in `body`, if it is one.
pub(super) fn graph_error(body: &[u8]) -> Option<GraphError> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|env| env.error.into_graph_error())
}

#[derive(serde::Deserialize)]
struct Acknowledgement {
    events_received: u64,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

/// `events_received` and the trace id of a success body, if it is Meta's.
pub(super) fn acknowledgement(body: &[u8]) -> Option<(u64, Option<String>)> {
    serde_json::from_slice::<Acknowledgement>(body)
        .ok()
        .map(|a| (a.events_received, a.fbtrace_id))
}

impl Answer {
    /// The error for an answer that is not the Graph API's, or Meta's error when it is one.
    pub(super) fn failure(&self, asked: &Asked<'_>, not_graph: NotGraphKind) -> SinkError {
        if !self.too_large && !(300..400).contains(&self.status) {
            if let Some(error) = graph_error(&self.body) {
                return SinkError::Api {
                    status: self.status,
                    url: shown_url(asked.url),
                    error: Box::new(error),
                    retry_after: self.retry_after,
                };
            }
        }
        let kind = if self.too_large {
            NotGraphKind::TooLarge
        } else if (300..400).contains(&self.status) {
            NotGraphKind::Redirect
        } else {
            not_graph
        };
        SinkError::NotGraph {
            kind,
            status: self.status,
            url: shown_url(asked.url),
            answer: shown_answer(&self.body, self.too_large, asked),
            retry_after: self.retry_after,
        }
    }
}

/// `scheme://host[:port]/path`: no user info (a password in `graph_url`) and no query.
pub fn shown_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// The first [`SHOWN_ANSWER_BYTES`] of an answer, control characters escaped; nothing when the
/// answer holds the token or repeats the request (an echoing proxy would otherwise put hashed
/// customer data and the token into logs and the runs table).
pub(super) fn shown_answer(body: &[u8], more: bool, asked: &Asked<'_>) -> String {
    if body.is_empty() {
        return "(empty)".into();
    }
    if !asked.token.is_empty() && contains(body, asked.token.as_bytes()) {
        return "(not shown: it contains the access token)".into();
    }
    let probe = &asked.sent[..asked.sent.len().min(64)];
    if probe.len() >= 16 && contains(body, probe) {
        return "(not shown: it repeats the request we sent)".into();
    }
    let cut = body.len().min(SHOWN_ANSWER_BYTES);
    let text = String::from_utf8_lossy(&body[..cut]);
    let mut out = String::with_capacity(cut + 8);
    out.push('"');
    for c in text.chars() {
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('"');
    if more || body.len() > cut {
        out.push('…');
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked<'a>(url: &'a reqwest::Url, sent: &'a [u8]) -> Asked<'a> {
        Asked {
            url,
            token: "tok-secret-123",
            sent,
        }
    }

    fn answer(status: u16, body: &[u8]) -> Answer {
        Answer {
            status,
            retry_after: None,
            body: body.to_vec(),
            too_large: false,
        }
    }

    fn url() -> reqwest::Url {
        reqwest::Url::parse("https://user:pw@proxy.example:8443/v25.0/123/events?x=1").unwrap()
    }

    #[test]
    fn a_shown_url_has_no_user_info_and_no_query() {
        assert_eq!(
            shown_url(&url()),
            "https://proxy.example:8443/v25.0/123/events"
        );
    }

    #[test]
    fn an_html_page_is_not_graph_and_its_first_bytes_are_shown_escaped() {
        let u = url();
        let page = format!(
            "<html>\n<title>404 Not Found</title>{}</html>",
            "x".repeat(500)
        );
        let err = answer(404, page.as_bytes()).failure(&asked(&u, b""), NotGraphKind::NoEnvelope);
        let SinkError::NotGraph {
            kind,
            status,
            answer,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!((*kind, *status), (NotGraphKind::NoEnvelope, 404));
        assert!(
            answer.starts_with("\"<html>\\n<title>404 Not Found</title>xx"),
            "{answer}"
        );
        assert!(answer.ends_with('…'));
        assert!(answer.len() < SHOWN_ANSWER_BYTES + 16, "{}", answer.len());
        let text = err.to_string();
        assert!(
            text.contains("HTTP 404") && text.contains("/v25.0/123/events"),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");
    }

    #[test]
    fn an_answer_holding_the_token_or_our_request_is_not_shown() {
        let u = url();
        let sent = br#"{"data":[{"event_name":"Lead","user_data":{"em":["abc"]}}],"access_token":"tok-secret-123"}"#;
        let echo = answer(400, sent).failure(&asked(&u, sent), NotGraphKind::NoEnvelope);
        assert!(!echo.to_string().contains("tok-secret-123"), "{echo}");
        assert!(!echo.to_string().contains("event_name"), "{echo}");
        let mut start_only = sent[..70].to_vec();
        start_only.extend_from_slice(b"...");
        let echo = answer(502, &start_only).failure(&asked(&u, sent), NotGraphKind::NoEnvelope);
        assert!(echo.to_string().contains("repeats the request"), "{echo}");
    }

    #[test]
    fn only_metas_envelope_with_a_code_and_message_is_a_graph_error() {
        let u = url();
        let meta = br#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804003,"fbtrace_id":"A"}}"#;
        let err = answer(400, meta).failure(&asked(&u, b""), NotGraphKind::NoEnvelope);
        let g = err.graph_error().expect("Meta's error");
        assert_eq!((g.code, g.error_subcode), (100, Some(2804003)));
        for other in [
            &br#"{"error":"Not Found"}"#[..],
            br#"{"error":{}}"#,
            br#"{"error":{"code":404}}"#,
            br#"{"message":"Not Found"}"#,
            b"",
        ] {
            let err = answer(404, other).failure(&asked(&u, b""), NotGraphKind::NoEnvelope);
            assert!(
                matches!(
                    err,
                    SinkError::NotGraph {
                        kind: NotGraphKind::NoEnvelope,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_redirect_is_not_graph_even_with_a_json_body() {
        let u = url();
        let meta = br#"{"error":{"message":"x","code":100}}"#;
        let err = answer(302, meta).failure(&asked(&u, b""), NotGraphKind::NoEnvelope);
        assert!(
            matches!(
                err,
                SinkError::NotGraph {
                    kind: NotGraphKind::Redirect,
                    status: 302,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn an_acknowledgement_needs_a_numeric_events_received() {
        assert_eq!(
            acknowledgement(br#"{"events_received":3,"messages":[],"fbtrace_id":"T"}"#),
            Some((3, Some("T".into())))
        );
        for junk in [
            &br#"{"events_received":"3"}"#[..],
            br#"{"events_received":null}"#,
            br#"{"success":true}"#,
            br#"[]"#,
            b"OK",
            b"",
        ] {
            assert_eq!(
                acknowledgement(junk),
                None,
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    /// A client of the sandbox at `base` with token "tok-secret-123".
    fn client_of(base: &str) -> super::super::GraphClient {
        let config = crate::config::Config::from_toml_str(
            &format!(
                "[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\ngraph_url = \"{base}\"\naccess_token = \"tok-secret-123\"\n"
            ),
            std::path::Path::new("."),
        )
        .expect("config");
        super::super::GraphClient::new(&config.meta).expect("client")
    }

    #[tokio::test]
    async fn every_misanswer_is_an_error_that_refuses_no_event() {
        use crate::sandbox::{self, Misanswer, SandboxConfig};
        use crate::sink::ErrorClass;
        let sb = sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
            .await
            .expect("sandbox");
        let client = client_of(&sb.base_url());
        let event = br#"{"event_name":"Lead","event_time":1,"action_source":"system_generated","user_data":{"em":["ab"]}}"#;
        for (answer, class) in [
            (Misanswer::Html404, ErrorClass::NotGraph),
            (Misanswer::MethodNotAllowed, ErrorClass::NotGraph),
            (Misanswer::PayloadTooLarge, ErrorClass::NotGraph),
            (Misanswer::Redirect, ErrorClass::NotGraph),
            (Misanswer::JunkOk, ErrorClass::NotGraph),
            (Misanswer::OkWithoutCount, ErrorClass::NotGraph),
            (Misanswer::Oversized, ErrorClass::NotGraph),
            (Misanswer::BadGatewayHtml, ErrorClass::Transient),
            (Misanswer::UnknownCode, ErrorClass::Unexpected),
            (Misanswer::BareInvalidParameter, ErrorClass::Unexpected),
        ] {
            sb.misanswer(answer, 0, 1);
            let body = client.body(&[&event[..]], None);
            let err = client
                .send("123", body, 1)
                .await
                .expect_err("a misanswer is no acknowledgement");
            assert_eq!(err.class(), class, "{answer:?}: {err}");
            let text = err.to_string();
            let status = err.status().expect("an HTTP answer");
            assert!(text.contains(&format!("HTTP {status}")), "{text}");
            assert!(text.contains("/v27.0/123/events"), "{text}");
            assert!(!text.contains("tok-secret-123"), "{text}");
            assert!(!text.contains("event_name"), "{text}");
            assert!(text.len() < 700, "{answer:?}: {} bytes", text.len());
        }
        assert_eq!(sb.stats().misanswered, 10);
        assert_eq!(sb.stats().events_accepted, 0);
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_is_an_error_naming_the_limit() {
        use crate::sandbox::{self, Misanswer, SandboxConfig};
        let sb = sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
            .await
            .expect("sandbox");
        let client = client_of(&sb.base_url());
        sb.misanswer(Misanswer::Oversized, 0, 1);
        let err = client
            .send("123", client.body(&["{}"], None), 1)
            .await
            .expect_err("too large");
        assert!(
            matches!(
                err,
                SinkError::NotGraph {
                    kind: NotGraphKind::TooLarge,
                    status: 200,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("1 MiB"), "{err}");
    }

    #[tokio::test]
    async fn the_pixel_probe_tells_an_html_page_from_the_graph_api() {
        use crate::sandbox::{self, Misanswer, SandboxConfig};
        let sb = sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
            .await
            .expect("sandbox");
        let client = client_of(&sb.base_url());
        client
            .check_pixel("123")
            .await
            .expect("the sandbox is the Graph API");
        sb.misanswer(Misanswer::Html404, 0, 1);
        let err = client.check_pixel("123").await.expect_err("an HTML page");
        assert_eq!(err.class(), crate::sink::ErrorClass::NotGraph, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("HTTP 404") && text.contains("/v27.0/123"),
            "{text}"
        );
        assert!(text.contains("404 Not Found"), "{text}");
        sb.misanswer(Misanswer::OkWithoutCount, 0, 1);
        client.check_pixel("123").await.expect("`id` is there");
        sb.misanswer(Misanswer::JunkOk, 0, 1);
        let err = client.check_pixel("123").await.expect_err("no object");
        assert!(
            matches!(
                err,
                SinkError::NotGraph {
                    kind: NotGraphKind::NoObject,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
