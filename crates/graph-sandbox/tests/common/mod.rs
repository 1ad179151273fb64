//! What the sandbox's HTTP tests share: a sandbox on a free port with a known token, a valid
//! event, and posting to `/events`. Each test file uses the part it needs.
#![allow(dead_code)]

use graph_sandbox::{start, Faults, SandboxConfig, SandboxHandle};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

pub const TOKEN: &str = "sandbox-test-token";
pub const PATH: &str = "/v25.0/123456789012345/events";
/// sha256("john_smith@gmail.com")
pub const EM: &str = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f";
/// Any lowercase 64-hex value stands in for other hashed fields.
pub const H2: &str = "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176";

pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn event(id: &str) -> Value {
    json!({
        "event_name": "Lead",
        "event_time": now() - 60,
        "event_id": id,
        "action_source": "website",
        "event_source_url": "https://shop.example.com/checkout",
        "user_data": {"em": [EM], "client_user_agent": "Mozilla/5.0", "client_ip_address": "203.0.113.7"},
    })
}

pub async fn sandbox_with(faults: Faults, record: Option<PathBuf>) -> SandboxHandle {
    start(
        local(),
        SandboxConfig {
            token: Some(TOKEN.into()),
            record,
            faults,
            keep_in_memory: true,
            count_only: false,
        },
    )
    .await
    .expect("sandbox starts")
}

pub async fn sandbox() -> SandboxHandle {
    sandbox_with(Faults::default(), None).await
}

pub fn url(sb: &SandboxHandle) -> String {
    format!("{}{PATH}", sb.base_url())
}

pub async fn post_json(sb: &SandboxHandle, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url(sb))
        .query(&[("access_token", TOKEN)])
        .json(&body)
        .send()
        .await
        .expect("response");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

pub async fn post_events(sb: &SandboxHandle, events: Vec<Value>) -> (u16, Value) {
    post_json(sb, json!({ "data": events })).await
}

pub fn subcode(body: &Value) -> i64 {
    body["error"]["error_subcode"].as_i64().unwrap_or(-1)
}

pub fn assert_rejected(status: u16, body: &Value, sub: i64) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], 100, "{body}");
    assert_eq!(body["error"]["type"], "OAuthException", "{body}");
    assert_eq!(body["error"]["is_transient"], false, "{body}");
    assert_eq!(subcode(body), sub, "{body}");
    assert!(
        body["error"]["fbtrace_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{body}"
    );
}
