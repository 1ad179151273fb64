//! Request decoding: path, top-level parameters from the query string and the body
//! (`application/json`, `application/x-www-form-urlencoded`, `multipart/form-data`), and the
//! access token from wherever the sender put it.

use super::error::GraphError;
use super::json::{self, Jv, Object};

/// Top-level parameters of `POST /{id}/events`. Anything else is rejected as an invalid parameter.
const TOP_LEVEL_KEYS: &[&str] = &[
    "data",
    "access_token",
    // The SDKs add it; the sandbox has no app secret, so it is accepted unchecked.
    "appsecret_proof",
    "test_event_code",
    "partner_agent",
    "namespace_id",
    "upload_id",
    "upload_tag",
    "upload_source",
];

/// What the handler needs from a decoded request.
#[derive(Debug)]
pub struct Params<'b> {
    /// Every access token found (query, body, `Authorization` header). All must be valid.
    pub tokens: Vec<String>,
    pub test_event_code: Option<String>,
    /// The `data` parameter, parsed (JSON body) or still as text (query, form, multipart).
    pub data: Data<'b>,
}

#[derive(Debug)]
pub enum Data<'b> {
    Parsed(Jv<'b>),
    Text(String),
}

/// Checks the method and the path `/vNN.N/{numeric id}/events`.
pub fn check_route(method: &hyper::Method, path: &str) -> Result<(), GraphError> {
    let object = path.trim_start_matches('/');
    let mut parts = object.split('/');
    let (version, id, edge, rest) = (parts.next(), parts.next(), parts.next(), parts.next());
    let ok = matches!(version, Some(v) if is_version(v))
        && matches!(id, Some(i) if !i.is_empty() && i.len() <= 32 && i.bytes().all(|b| b.is_ascii_digit()))
        && edge == Some("events")
        && rest.is_none();
    if !ok || method != hyper::Method::POST {
        // Name the object id only when it is a plain number: nothing else of the path is echoed.
        let shown = match id {
            Some(i) if !i.is_empty() && i.len() <= 32 && i.bytes().all(|b| b.is_ascii_digit()) => i,
            _ => "",
        };
        return Err(GraphError::unsupported_request(method.as_str(), shown));
    }
    Ok(())
}

/// `GET /vNN.N/{numeric id}`: reading the pixel object (what `capi-sync check` asks to prove
/// the token works). Returns the id.
pub fn object_route<'p>(method: &hyper::Method, path: &'p str) -> Option<&'p str> {
    if method != hyper::Method::GET {
        return None;
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let (version, id, rest) = (parts.next()?, parts.next()?, parts.next());
    let numeric = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit());
    (is_version(version) && numeric && rest.is_none()).then_some(id)
}

/// `GET /vNN.N/dataset_quality`: Meta's Dataset Quality API, a top-level node whose dataset is
/// a query parameter (see `quality.rs`).
pub fn quality_route(method: &hyper::Method, path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    method == hyper::Method::GET
        && parts.next().is_some_and(is_version)
        && parts.next() == Some("dataset_quality")
        && parts.next().is_none()
}

/// The pixel id of an accepted `/vNN.N/{id}/events` path.
pub fn pixel_of(path: &str) -> Option<&str> {
    path.trim_start_matches('/').split('/').nth(1)
}

/// The `access_token` query parameter, if any.
pub fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// The oldest Graph API version the sandbox still serves. Meta's Graph API versions page
/// (https://developers.facebook.com/docs/graph-api/changelog/versions) gives v20.0 an end of
/// life of 2026-09-24 and v21.0 one of 2027-01-21: on 2026-12-06, v17.0 to v20.0 (and every
/// older version) have ended. A fixed cutoff keeps the sandbox's answers the same on every day
/// a test runs; it moves by hand when the next version ends.
pub const OLDEST_LIVE_VERSION: (u32, u32) = (21, 0);

/// The version of a request's path (`/vNN.N/...`) when it is one that has ended: the Graph API
/// then answers error 2635.
pub fn retired_version(path: &str) -> Option<&str> {
    let version = path.trim_start_matches('/').split('/').next()?;
    if !is_version(version) {
        return None;
    }
    let (major, minor) = version[1..].split_once('.')?;
    let parsed = (major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?);
    (parsed < OLDEST_LIVE_VERSION).then_some(version)
}

/// `vNN.N`: a `v`, digits, a dot, digits.
fn is_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let Some((major, minor)) = rest.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor)
}

/// Token from `Authorization: Bearer T` (or Graph's `OAuth T`).
pub fn bearer_token(headers: &hyper::HeaderMap) -> Option<String> {
    let raw = headers
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = raw.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then(|| token.trim().to_owned())
}

/// The body encodings the endpoint understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    Multipart,
    /// No body at all: every parameter must be in the query string.
    Empty,
}

/// Picks the decoder from `Content-Type` (and the body's emptiness).
pub fn body_kind(
    content_type: Option<&str>,
    body_is_empty: bool,
) -> Result<(BodyKind, Option<String>), GraphError> {
    let Some(ct) = content_type else {
        if body_is_empty {
            return Ok((BodyKind::Empty, None));
        }
        return Err(GraphError::invalid_parameter(
            "Missing Content-Type for a request body",
        ));
    };
    let mut it = ct.split(';');
    let mime = it.next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok((BodyKind::Json, None)),
        "application/x-www-form-urlencoded" => Ok((BodyKind::Form, None)),
        "multipart/form-data" => {
            let boundary = it
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .filter(|b| !b.is_empty() && b.len() <= 200)
                .ok_or_else(|| GraphError::invalid_parameter("multipart/form-data without a boundary"))?;
            Ok((BodyKind::Multipart, Some(boundary)))
        }
        _ if body_is_empty => Ok((BodyKind::Empty, None)),
        _ => Err(GraphError::invalid_parameter(
            "Unsupported Content-Type: use application/json, application/x-www-form-urlencoded or multipart/form-data",
        )),
    }
}

/// Collects parameters from string pairs (query string, form or multipart fields) and from a
/// JSON body.
#[derive(Default)]
struct Collector<'b> {
    seen: Vec<&'static str>,
    tokens: Vec<String>,
    test_event_code: Option<String>,
    data: Option<Data<'b>>,
}

impl<'b> Collector<'b> {
    fn key(&mut self, key: &str) -> Result<&'static str, GraphError> {
        let Some(k) = TOP_LEVEL_KEYS.iter().copied().find(|k| *k == key) else {
            return Err(GraphError::invalid_parameter(format!(
                "Unknown top-level parameter '{}'",
                printable_key(key)
            )));
        };
        if k != "access_token" {
            if self.seen.contains(&k) {
                return Err(GraphError::invalid_parameter(format!(
                    "Parameter '{k}' is given more than once"
                )));
            }
            self.seen.push(k);
        }
        Ok(k)
    }

    fn string_pair(&mut self, key: &str, value: String) -> Result<(), GraphError> {
        match self.key(key)? {
            "access_token" => self.tokens.push(value),
            "data" => self.data = Some(Data::Text(value)),
            "test_event_code" => self.test_event_code = Some(value),
            _ => {}
        }
        Ok(())
    }

    fn json_object(&mut self, obj: Object<'b>) -> Result<(), GraphError> {
        for (key, value) in obj.0 {
            let k = self.key(&key)?;
            let must_be_string =
                || GraphError::invalid_parameter(format!("Parameter '{k}' must be a string"));
            match k {
                "data" => self.data = Some(Data::Parsed(value)),
                "access_token" => match value {
                    Jv::Str(s) => self.tokens.push(s.into_owned()),
                    _ => return Err(must_be_string()),
                },
                "test_event_code" => match value {
                    Jv::Str(s) => self.test_event_code = Some(s.into_owned()),
                    _ => return Err(must_be_string()),
                },
                // Ids: a JSON integer is tolerated as well.
                "namespace_id" | "upload_id" => {
                    if !(value.is_string() || value.is_integer()) {
                        return Err(must_be_string());
                    }
                }
                _ => {
                    if !value.is_string() {
                        return Err(must_be_string());
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Params<'b>, GraphError> {
        let data = self
            .data
            .ok_or_else(|| GraphError::invalid_parameter("The parameter data is required"))?;
        Ok(Params {
            tokens: self.tokens,
            test_event_code: self.test_event_code,
            data,
        })
    }
}

/// Parses `data` given as text (query, form or multipart field).
pub fn parse_data_text(text: &str) -> Result<Jv<'_>, GraphError> {
    json::parse_str(text).map_err(|e| {
        GraphError::invalid_parameter(format!(
            "Param data must be a JSON-encoded array: syntax error at line {} column {}",
            e.line(),
            e.column()
        ))
    })
}

/// `data` must be an array whose elements are objects or JSON strings holding an object.
pub fn events_from_data(data: Jv<'_>) -> Result<Vec<Jv<'_>>, GraphError> {
    let Jv::Arr(mut items) = data else {
        return Err(GraphError::invalid_parameter("Param data must be an array"));
    };
    for (i, item) in items.iter_mut().enumerate() {
        if let Jv::Str(s) = item {
            let parsed = json::parse_str(s)
                .map(Jv::into_owned)
                .map_err(|e| {
                    GraphError::invalid_parameter(format!(
                        "data[{i}] is a string but not a JSON-encoded object (syntax error at column {})",
                        e.column()
                    ))
                })?;
            *item = parsed;
        }
        if !item.is_object() {
            return Err(GraphError::invalid_parameter(format!(
                "data[{i}] must be an object"
            )));
        }
    }
    Ok(items)
}

/// Keys are shown in messages only if short and plain: never echo arbitrary input.
fn printable_key(key: &str) -> String {
    if key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        key.to_owned()
    } else {
        "(unprintable)".to_owned()
    }
}

/// Decodes the query string and the body into [`Params`].
pub fn decode<'b>(
    query: Option<&str>,
    kind: BodyKind,
    boundary: Option<&str>,
    body: &'b [u8],
    bearer: Option<String>,
) -> Result<Params<'b>, GraphError> {
    let mut c = Collector::default();
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            c.string_pair(&k, v.into_owned())?;
        }
    }
    match kind {
        BodyKind::Empty => {}
        BodyKind::Json => {
            // One UTF-8 check of the whole body is cheaper than serde_json's check of each
            // string of a byte slice; a body that is not UTF-8 is parsed as bytes, so the
            // error still names where it breaks.
            let parsed = match std::str::from_utf8(body) {
                Ok(text) => json::parse_str(text),
                Err(_) => json::parse(body),
            };
            let v = parsed.map_err(|e| {
                GraphError::invalid_parameter(format!(
                    "Request body is not valid JSON: syntax error at line {} column {}",
                    e.line(),
                    e.column()
                ))
            })?;
            let Jv::Obj(obj) = v else {
                return Err(GraphError::invalid_parameter(
                    "Request body must be a JSON object",
                ));
            };
            c.json_object(obj)?;
        }
        BodyKind::Form => {
            for (k, v) in url::form_urlencoded::parse(body) {
                c.string_pair(&k, v.into_owned())?;
            }
        }
        BodyKind::Multipart => {
            let boundary = boundary.unwrap_or_default();
            for (name, value) in multipart_fields(body, boundary)? {
                c.string_pair(&name, value)?;
            }
        }
    }
    if let Some(t) = bearer {
        c.tokens.push(t);
    }
    c.finish()
}

/// Minimal `multipart/form-data` reader: text fields only (what `curl -F name=value` sends).
fn multipart_fields(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, GraphError> {
    let bad = || GraphError::invalid_parameter("Malformed multipart/form-data body");
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut fields = Vec::new();
    let mut pos = find(body, delim, 0).ok_or_else(bad)? + delim.len();
    loop {
        // After a delimiter: "--" ends the body, otherwise CRLF then a part.
        if body[pos..].starts_with(b"--") {
            return Ok(fields);
        }
        pos = skip_crlf(body, pos).ok_or_else(bad)?;
        let headers_end = find(body, b"\r\n\r\n", pos).ok_or_else(bad)?;
        let headers = std::str::from_utf8(&body[pos..headers_end]).map_err(|_| bad())?;
        let name = headers
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .and_then(|l| {
                l.split(';').find_map(|p| {
                    let p = p.trim();
                    p.strip_prefix("name=")
                        .map(|n| n.trim_matches('"').to_owned())
                })
            })
            .ok_or_else(bad)?;
        let value_start = headers_end + 4;
        let mut close = Vec::with_capacity(delim.len() + 2);
        close.extend_from_slice(b"\r\n");
        close.extend_from_slice(delim);
        let value_end = find(body, &close, value_start).ok_or_else(bad)?;
        let value = std::str::from_utf8(&body[value_start..value_end]).map_err(|_| bad())?;
        fields.push((name, value.to_owned()));
        pos = value_end + close.len();
    }
}

fn skip_crlf(body: &[u8], pos: usize) -> Option<usize> {
    body[pos..].starts_with(b"\r\n").then_some(pos + 2)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(off) => {
                i += off;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_accepts_only_versioned_numeric_events_edge() {
        let post = hyper::Method::POST;
        assert!(check_route(&post, "/v25.0/123456789012345/events").is_ok());
        assert!(check_route(&post, "/v9.1/1/events").is_ok());
        for bad in [
            "/25.0/1/events",
            "/v25/1/events",
            "/vx.0/1/events",
            "/v25.0/abc/events",
            "/v25.0/1/event",
            "/v25.0/1/events/",
            "/v25.0//events",
            "/v25.0/1",
            "/",
        ] {
            let e = check_route(&post, bad).unwrap_err();
            assert_eq!((e.code, e.subcode), (100, Some(33)), "{bad}");
        }
        assert!(check_route(&hyper::Method::GET, "/v25.0/1/events").is_err());
    }

    #[test]
    fn versions_before_v21_have_ended() {
        assert_eq!(retired_version("/v20.0/1/events"), Some("v20.0"));
        assert_eq!(retired_version("/v17.0/1"), Some("v17.0"));
        assert_eq!(retired_version("/v9.0/1/events"), Some("v9.0"));
        assert_eq!(retired_version("/v21.0/1/events"), None);
        assert_eq!(retired_version("/v27.0/1/events"), None);
        assert_eq!(retired_version("/events"), None);
    }

    #[test]
    fn multipart_text_fields_are_read() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n[{\"a\":1}]\r\n--XyZ\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\ntok\r\n--XyZ--\r\n";
        let f = multipart_fields(body, "XyZ").unwrap();
        assert_eq!(
            f,
            vec![
                ("data".into(), "[{\"a\":1}]".into()),
                ("access_token".into(), "tok".into())
            ]
        );
    }

    #[test]
    fn json_body_rejects_unknown_top_level_key() {
        let e = decode(None, BodyKind::Json, None, br#"{"data":[],"foo":1}"#, None).unwrap_err();
        assert_eq!(e.code, 100);
        assert!(e.user_msg.contains("foo"));
    }

    #[test]
    fn a_json_body_that_is_not_valid_json_or_not_utf8_is_refused_with_its_position() {
        let broken = decode(None, BodyKind::Json, None, b"{\"data\":[}", None).unwrap_err();
        assert_eq!(broken.code, 100);
        assert!(
            broken.message.contains("line 1 column 10"),
            "{}",
            broken.message
        );
        // A byte that cannot start a UTF-8 character, inside a string.
        let not_utf8 =
            decode(None, BodyKind::Json, None, b"{\"data\":[\"\xff\"]}", None).unwrap_err();
        assert_eq!(not_utf8.code, 100);
        assert!(
            not_utf8.message.contains("not valid JSON") && not_utf8.message.contains("column"),
            "{}",
            not_utf8.message
        );
        // Valid UTF-8 beyond ASCII parses.
        let ok = decode(
            None,
            BodyKind::Json,
            None,
            "{\"data\":[{\"event_name\":\"Caf\u{e9}\"}]}".as_bytes(),
            None,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn stringified_events_are_parsed() {
        let p = decode(
            None,
            BodyKind::Json,
            None,
            br#"{"data":["{\"event_name\":\"X\"}"]}"#,
            None,
        )
        .unwrap();
        let Data::Parsed(data) = p.data else {
            panic!("JSON body data is parsed")
        };
        let events = events_from_data(data).unwrap();
        assert_eq!(
            events[0]
                .as_object()
                .unwrap()
                .get("event_name")
                .unwrap()
                .as_str(),
            Some("X")
        );
    }
}
