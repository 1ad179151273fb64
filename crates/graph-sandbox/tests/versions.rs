//! The sandbox's Graph API versions: an ended version is refused with Meta's code 2635, the
//! newest one is served.

mod common;

use common::{sandbox, TOKEN};
use serde_json::{json, Value};

fn body() -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    json!({
        "data": [{
            "event_name": "Lead",
            "event_time": now - 60,
            "event_id": "e1",
            "action_source": "email",
            // sha256("john_smith@gmail.com")
            "user_data": {"em": ["62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"]},
        }],
        "access_token": TOKEN,
    })
}

#[tokio::test]
async fn a_version_that_has_ended_is_refused_with_code_2635_and_nothing_is_accepted() {
    let sb = sandbox().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v20.0/123456789012345/events", sb.base_url()))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["error"]["code"], 2635);
    assert_eq!(answer["error"]["type"], "OAuthException");
    assert!(answer["error"].get("error_subcode").is_none(), "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("(#2635) You are calling a deprecated version of the Ads API"));
    assert_eq!(sb.stats().events_accepted, 0);
    // The pixel probe of an ended version gets the same answer.
    let probe = reqwest::Client::new()
        .get(format!("{}/v19.0/123456789012345?fields=id", sb.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status().as_u16(), 400);
    let answer: Value = probe.json().await.unwrap();
    assert_eq!(answer["error"]["code"], 2635);
}

#[tokio::test]
async fn the_newest_version_is_served() {
    let sb = sandbox().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v27.0/123456789012345/events", sb.base_url()))
        .json(&body())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
    assert_eq!(sb.stats().events_accepted, 1);
}
