//! The sandbox's Dataset Quality API over real HTTP: coverage and scores derived from the
//! events received, the token required, and a dataset whose permission is denied.

mod common;

use common::*;
use graph_sandbox::SandboxHandle;
use serde_json::Value;

async fn dataset_quality(sb: &SandboxHandle, query: &[(&str, &str)]) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v25.0/dataset_quality", sb.base_url()))
        .query(query)
        .send()
        .await
        .expect("response");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

#[tokio::test]
async fn dataset_quality_reports_the_coverage_of_the_events_received() {
    let sb = sandbox().await;
    let mut without_email = event("q2");
    without_email["user_data"]
        .as_object_mut()
        .unwrap()
        .remove("em");
    let (status, _) = post_events(&sb, vec![event("q1"), without_email]).await;
    assert_eq!(status, 200);
    let fields = "web{event_name,event_match_quality{composite_score,match_key_feedback}}";
    let (status, body) = dataset_quality(
        &sb,
        &[
            ("dataset_id", "123456789012345"),
            ("fields", fields),
            ("access_token", TOKEN),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let emq = &body["web"][0]["event_match_quality"];
    let email = emq["match_key_feedback"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["identifier"] == "email")
        .unwrap();
    assert_eq!(email["coverage"]["percentage"], 50.0);
    assert_eq!(
        emq["composite_score"],
        graph_sandbox::composite_score([
            ("email", 50.0),
            ("ip_address", 100.0),
            ("user_agent", 100.0)
        ])
    );

    let (status, body) = dataset_quality(
        &sb,
        &[("dataset_id", "123456789012345"), ("fields", fields)],
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_i64()), (401, Some(190)));
    sb.deny_quality("123456789012345");
    let (_, body) = dataset_quality(
        &sb,
        &[
            ("dataset_id", "123456789012345"),
            ("fields", fields),
            ("access_token", TOKEN),
        ],
    )
    .await;
    assert_eq!(body["error"]["code"], 10, "{body}");
}
