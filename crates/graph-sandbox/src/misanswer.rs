//! Answers the Graph API never gives: what a sender sees when `graph_url` leads somewhere else
//! (a typo, a corporate proxy, a load balancer), plus Graph envelopes no sender can act on.
//! Turned on for a window of requests with [`super::SandboxHandle::misanswer`].

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::{Response, StatusCode};

/// The body of [`Misanswer::Oversized`]: larger than any Graph answer (2 MiB).
pub const OVERSIZED_BYTES: usize = 2 << 20;

/// One kind of answer that is not the Graph API's (or is Graph's but says nothing about events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misanswer {
    /// HTTP 404 with a web server's HTML page (a wrong host or path).
    Html404,
    /// HTTP 405 with an HTML page and `Allow: GET, HEAD` (a static site or a health endpoint).
    MethodNotAllowed,
    /// HTTP 413 with an HTML page (a proxy's request-body limit).
    PayloadTooLarge,
    /// HTTP 302 to a login page (a proxy wanting a browser session).
    Redirect,
    /// HTTP 502 with a load balancer's HTML page (no upstream).
    BadGatewayHtml,
    /// HTTP 200 with `OK` in plain text.
    JunkOk,
    /// HTTP 200 with JSON that has no `events_received`.
    OkWithoutCount,
    /// HTTP 200 with JSON holding `events_received` and 2 MiB of padding.
    Oversized,
    /// HTTP 400 with a well-formed Graph error envelope whose code (12345) no sender knows.
    UnknownCode,
    /// HTTP 400 with a Graph code 100 without a subcode: a request-level invalid parameter.
    BareInvalidParameter,
}

/// The code of [`Misanswer::UnknownCode`].
pub const UNKNOWN_CODE: i64 = 12345;

impl Misanswer {
    pub(super) fn response(self) -> Response<Full<Bytes>> {
        let html = |title: &str| {
            format!(
                "<!DOCTYPE html>\r\n<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx — proxy</center>\r\n</body>\r\n</html>\r\n"
            )
        };
        let (status, content_type, body): (u16, &str, Vec<u8>) = match self {
            Misanswer::Html404 => (404, "text/html", html("404 Not Found").into_bytes()),
            Misanswer::MethodNotAllowed => (405, "text/html", html("405 Not Allowed").into_bytes()),
            Misanswer::PayloadTooLarge => (
                413,
                "text/html",
                html("413 Request Entity Too Large").into_bytes(),
            ),
            Misanswer::Redirect => (302, "text/html", html("302 Found").into_bytes()),
            Misanswer::BadGatewayHtml => (502, "text/html", html("502 Bad Gateway").into_bytes()),
            Misanswer::JunkOk => (200, "text/plain", b"OK".to_vec()),
            Misanswer::OkWithoutCount => (
                200,
                "application/json",
                br#"{"success":true,"id":"1"}"#.to_vec(),
            ),
            Misanswer::Oversized => {
                let mut body = br#"{"events_received":1,"padding":""#.to_vec();
                body.resize(body.len() + OVERSIZED_BYTES, b'x');
                body.extend_from_slice(br#""}"#);
                (200, "application/json", body)
            }
            Misanswer::UnknownCode => (
                400,
                "application/json",
                serde_json::to_vec(&serde_json::json!({"error": {
                    "message": "An error no sender has seen before",
                    "type": "OAuthException",
                    "code": UNKNOWN_CODE,
                    "is_transient": false,
                    "fbtrace_id": "AUnknownCode",
                }}))
                .unwrap_or_default(),
            ),
            Misanswer::BareInvalidParameter => (
                400,
                "application/json",
                serde_json::to_vec(&serde_json::json!({"error": {
                    "message": "(#100) The parameter data is required",
                    "type": "OAuthException",
                    "code": 100,
                    "is_transient": false,
                    "fbtrace_id": "ABareInvalid",
                }}))
                .unwrap_or_default(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        match self {
            Misanswer::Redirect => {
                h.insert(
                    LOCATION,
                    HeaderValue::from_static("https://login.proxy.invalid/sso?next=%2F"),
                );
            }
            Misanswer::MethodNotAllowed => {
                h.insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        resp
    }
}

/// Which requests get a misanswer: counted from when it was set, those numbered
/// `skip..skip + count` (0-based).
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    pub answer: Misanswer,
    pub skip: u64,
    pub count: u64,
    pub seen: u64,
}

impl Window {
    /// Counts one request; the misanswer it gets, if any.
    pub fn next(&mut self) -> Option<Misanswer> {
        let n = self.seen;
        self.seen += 1;
        (n >= self.skip && n - self.skip < self.count).then_some(self.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_skips_then_misanswers_count_requests_then_answers_normally() {
        let mut w = Window {
            answer: Misanswer::Html404,
            skip: 2,
            count: 3,
            seen: 0,
        };
        let got: Vec<bool> = (0..7).map(|_| w.next().is_some()).collect();
        assert_eq!(got, [false, false, true, true, true, false, false]);
        let mut always = Window {
            answer: Misanswer::JunkOk,
            skip: 0,
            count: u64::MAX,
            seen: 0,
        };
        assert!((0..100).all(|_| always.next() == Some(Misanswer::JunkOk)));
    }
}
