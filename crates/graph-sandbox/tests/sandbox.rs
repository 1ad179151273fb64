//! Integration tests of the sandbox Graph `/events` endpoint, over real HTTP.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use graph_sandbox::{start, Faults, SandboxConfig};
use serde_json::{json, Value};

#[tokio::test]
async fn accepts_a_valid_json_batch_and_records_it_in_file_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("events.jsonl");
    let sb = sandbox_with(Faults::default(), Some(record.clone())).await;
    let events = vec![event("e1"), event("e2"), event("e3")];

    let (status, body) = post_json(
        &sb,
        json!({"data": events, "test_event_code": "TEST123", "partner_agent": "capi-sync"}),
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events_received"], 3);
    assert_eq!(body["messages"], json!([]));
    assert!(body["fbtrace_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(sb.events(), events);
    let lines: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, events);
    let stats = sb.stats();
    assert_eq!(
        (
            stats.requests,
            stats.accepted_requests,
            stats.events_accepted
        ),
        (1, 1, 3)
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn accepts_form_body_with_data_as_json_string_and_per_event_json_strings() {
    let sb = sandbox().await;
    let as_array = serde_json::to_string(&vec![event("f1")]).unwrap();
    let as_strings =
        serde_json::to_string(&vec![event("f2").to_string(), event("f3").to_string()]).unwrap();
    for (data, n) in [(as_array, 1), (as_strings, 2)] {
        let resp = reqwest::Client::new()
            .post(url(&sb))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("data", &data)
                    .append_pair("access_token", TOKEN)
                    .finish(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["events_received"], n);
    }
    let ids: Vec<Value> = sb.events().iter().map(|e| e["event_id"].clone()).collect();
    assert_eq!(ids, vec![json!("f1"), json!("f2"), json!("f3")]);
    assert!(sb.events().iter().all(Value::is_object));
}

#[tokio::test]
async fn accepts_multipart_body_like_curl_dash_f() {
    let sb = sandbox().await;
    let data = serde_json::to_string(&vec![event("m1")]).unwrap();
    let body = format!(
        "--BOUNDARY\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n{data}\r\n\
         --BOUNDARY\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\n{TOKEN}\r\n--BOUNDARY--\r\n"
    );
    let resp = reqwest::Client::new()
        .post(url(&sb))
        .header("content-type", "multipart/form-data; boundary=BOUNDARY")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sb.events().len(), 1);
}

#[tokio::test]
async fn rejects_missing_or_wrong_token_with_401_and_code_190() {
    let sb = sandbox().await;
    let client = reqwest::Client::new();
    let body = json!({"data": [event("t1")]});
    for req in [
        client.post(url(&sb)).json(&body),
        client
            .post(url(&sb))
            .query(&[("access_token", "wrong")])
            .json(&body),
        client.post(url(&sb)).bearer_auth("wrong").json(&body),
        client
            .post(url(&sb))
            .json(&json!({"data": [event("t1")], "access_token": "wrong"})),
        // A valid token does not excuse an invalid second one.
        client
            .post(url(&sb))
            .query(&[("access_token", TOKEN)])
            .bearer_auth("wrong")
            .json(&body),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let text = resp.text().await.unwrap();
        assert!(!text.contains("wrong"), "token echoed: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], 190);
        assert_eq!(v["error"]["type"], "OAuthException");
        assert_eq!(
            v["error"]["message"],
            "Invalid OAuth access token - Cannot parse access token"
        );
    }
    assert!(sb.events().is_empty());
    assert_eq!(sb.stats().rejected_by_code.get(&190), Some(&5));
}

#[tokio::test]
async fn accepts_token_via_bearer_header_query_and_json_body() {
    let sb = sandbox().await;
    let client = reqwest::Client::new();
    let bearer = client
        .post(url(&sb))
        .bearer_auth(TOKEN)
        .json(&json!({"data": [event("b1")]}));
    let query = client
        .post(url(&sb))
        .query(&[("access_token", TOKEN)])
        .json(&json!({"data": [event("b2")]}));
    let in_body = client
        .post(url(&sb))
        .json(&json!({"data": [event("b3")], "access_token": TOKEN}));
    for req in [bearer, query, in_body] {
        assert_eq!(req.send().await.unwrap().status(), 200);
    }
    assert_eq!(sb.events().len(), 3);
}

#[tokio::test]
async fn accepts_any_non_empty_token_when_none_is_configured() {
    let sb = start(
        local(),
        SandboxConfig {
            keep_in_memory: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let ok = client
        .post(url(&sb))
        .bearer_auth("anything")
        .json(&json!({"data": [event("a")]}));
    assert_eq!(ok.send().await.unwrap().status(), 200);
    let empty = client
        .post(url(&sb))
        .query(&[("access_token", "")])
        .json(&json!({"data": [event("b")]}));
    assert_eq!(empty.send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn rejects_unknown_path_method_and_version_with_code_100_subcode_33() {
    let sb = sandbox().await;
    let client = reqwest::Client::new();
    for path in [
        "/v25.0/123/event",
        "/25.0/123/events",
        "/vlatest/123/events",
        "/v25.0/me/events",
        "/events",
    ] {
        let resp = client
            .post(format!("{}{path}", sb.base_url()))
            .bearer_auth(TOKEN)
            .json(&json!({"data": [event("p")]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (v["error"]["code"].as_i64(), subcode(&v)),
            (Some(100), 33),
            "{path}"
        );
    }
    let get = client
        .get(url(&sb))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 400);
}

#[tokio::test]
async fn rejects_bad_json_and_unknown_top_level_keys_with_code_100() {
    let sb = sandbox().await;
    let client = reqwest::Client::new();
    let bad = client
        .post(url(&sb))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"data\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["code"], 100);

    let (status, body) = post_json(&sb, json!({"data": [event("k")], "dataa": 1})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], 100);
    assert!(sb.events().is_empty());
}

#[tokio::test]
async fn rejects_1001_events_and_accepts_1000() {
    let sb = sandbox().await;
    let (status, body) =
        post_events(&sb, (0..1001).map(|i| event(&format!("n{i}"))).collect()).await;
    assert_rejected(status, &body, 2804001);
    let (status, body) = post_events(&sb, vec![]).await;
    assert_rejected(status, &body, 2804001);
    let (status, body) =
        post_events(&sb, (0..1000).map(|i| event(&format!("n{i}"))).collect()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events_received"], 1000);
}

#[tokio::test]
async fn rejects_unhashed_email_whole_request_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("events.jsonl");
    let sb = sandbox_with(Faults::default(), Some(record.clone())).await;
    let mut bad = event("u2");
    bad["user_data"]["em"] = json!(["john.smith@example.com"]);
    let mut upper = event("u3");
    upper["user_data"]["em"] = json!(EM.to_uppercase());

    for bad in [bad, upper] {
        let (status, body) = post_events(&sb, vec![event("u1"), bad, event("u4")]).await;
        assert_rejected(status, &body, 2804048);
        let msg = body["error"]["error_user_msg"].as_str().unwrap();
        assert!(msg.contains("data[1]") && msg.contains("em"), "{msg}");
        assert!(
            !body.to_string().contains("john.smith")
                && !body.to_string().contains(&EM.to_uppercase())
        );
    }
    assert!(sb.events().is_empty());
    assert_eq!(std::fs::read_to_string(&record).unwrap_or_default(), "");
}

#[tokio::test]
async fn rejects_event_older_than_7_days_with_2804003() {
    let sb = sandbox().await;
    let mut old = event("o1");
    old["event_time"] = json!(now() - 8 * 86_400);
    let (status, body) = post_events(&sb, vec![event("o0"), old]).await;
    assert_rejected(status, &body, 2804003);
    assert!(sb.events().is_empty());
}

#[tokio::test]
async fn accepts_physical_store_event_30_days_old() {
    let sb = sandbox().await;
    let mut ev = event("ps1");
    ev["action_source"] = json!("physical_store");
    ev["event_time"] = json!(now() - 30 * 86_400);
    let (status, body) = post_events(&sb, vec![ev]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn rejects_event_time_given_as_float_or_string() {
    let sb = sandbox().await;
    for t in [json!(now() as f64), json!(now().to_string())] {
        let mut ev = event("ft");
        ev["event_time"] = t;
        let (status, body) = post_events(&sb, vec![ev]).await;
        assert_rejected(status, &body, 2804016);
    }
}

#[tokio::test]
async fn rejects_website_event_without_event_source_url() {
    let sb = sandbox().await;
    let mut ev = event("w1");
    ev.as_object_mut().unwrap().remove("event_source_url");
    let (status, body) = post_events(&sb, vec![ev]).await;
    assert_rejected(status, &body, 2804007);
    assert!(body["error"]["error_user_msg"]
        .as_str()
        .unwrap()
        .contains("event_source_url"));
}

#[tokio::test]
async fn rejects_too_broad_identifier_set_fn_ge_with_2804050() {
    let sb = sandbox().await;
    let mut ev = event("tb");
    ev["action_source"] = json!("email");
    ev["user_data"] = json!({"fn": H2, "ge": H2});
    let (status, body) = post_events(&sb, vec![ev]).await;
    assert_rejected(status, &body, 2804050);
}

#[tokio::test]
async fn rejects_purchase_without_currency() {
    let sb = sandbox().await;
    let mut ev = event("p1");
    ev["event_name"] = json!("Purchase");
    ev["custom_data"] = json!({"value": 12.5});
    let (status, body) = post_events(&sb, vec![ev.clone()]).await;
    assert_rejected(status, &body, 2804019);
    ev["custom_data"]["currency"] = json!("usd");
    let (status, body) = post_events(&sb, vec![ev]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn accepts_17_digit_lead_id_exactly_and_rejects_12_digits() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("events.jsonl");
    let sb = sandbox_with(Faults::default(), Some(record.clone())).await;
    let client = reqwest::Client::new();
    let t = now() - 60;
    let body = |lead: &str| {
        format!(
            r#"{{"data":[{{"event_name":"Qualified","event_time":{t},"action_source":"system_generated",
               "user_data":{{"lead_id":{lead}}},
               "custom_data":{{"event_source":"crm","lead_event_source":"Salesforce"}}}}]}}"#
        )
    };
    let send = |b: String| {
        client
            .post(url(&sb))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    let ok = send(body("98765432109876543")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(std::fs::read_to_string(&record)
        .unwrap()
        .contains("\"lead_id\":98765432109876543"));

    let short = send(body("123456789012")).await.unwrap();
    assert_eq!(short.status(), 400);
    let v: Value = short.json().await.unwrap();
    assert_eq!(subcode(&v), 2804036);
    assert_eq!(sb.events().len(), 1);
}

#[tokio::test]
async fn fail_next_gives_500_transient_then_recovers() {
    let sb = sandbox().await;
    sb.fail_next(2);
    for _ in 0..2 {
        let (status, body) = post_events(&sb, vec![event("fn1")]).await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], 2);
        assert_eq!(body["error"]["is_transient"], true);
    }
    let (status, _) = post_events(&sb, vec![event("fn1")]).await;
    assert_eq!(status, 200);
    let stats = sb.stats();
    assert_eq!(
        (stats.failed, stats.accepted_requests, stats.events_accepted),
        (2, 1, 1)
    );
    assert_eq!(sb.events().len(), 1);
}

#[tokio::test]
async fn fail_after_fails_every_request_until_cleared() {
    let sb = sandbox().await;
    sb.fail_after(1);
    assert_eq!(post_events(&sb, vec![event("a1")]).await.0, 200);
    assert_eq!(post_events(&sb, vec![event("a2")]).await.0, 500);
    assert_eq!(post_events(&sb, vec![event("a3")]).await.0, 500);
    sb.fail_after(u64::MAX);
    assert_eq!(post_events(&sb, vec![event("a4")]).await.0, 200);
    assert_eq!(sb.events().len(), 2);
}

#[tokio::test]
async fn throttle_answers_code_17_with_retry_after() {
    let sb = sandbox_with(
        Faults {
            throttle_rate: 1.0,
            ..Faults::default()
        },
        None,
    )
    .await;
    let resp = reqwest::Client::new()
        .post(url(&sb))
        .bearer_auth(TOKEN)
        .json(&json!({"data": [event("th")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], 17);
    assert_eq!(v["error"]["is_transient"], true);
    assert!(sb.events().is_empty());
    assert_eq!(sb.stats().throttled, 1);
}

#[tokio::test]
async fn drop_records_the_events_but_the_client_sees_a_connection_error() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("events.jsonl");
    let sb = sandbox_with(
        Faults {
            drop_rate: 1.0,
            ..Faults::default()
        },
        Some(record.clone()),
    )
    .await;
    let result = reqwest::Client::new()
        .post(url(&sb))
        .bearer_auth(TOKEN)
        .json(&json!({"data": [event("d1"), event("d2")]}))
        .send()
        .await;
    let err = result.expect_err("no response expected");
    assert!(!err.is_status(), "{err:?}");
    assert_eq!(sb.events().len(), 2);
    assert_eq!(std::fs::read_to_string(&record).unwrap().lines().count(), 2);
    let stats = sb.stats();
    assert_eq!(
        (
            stats.dropped,
            stats.accepted_requests,
            stats.events_accepted
        ),
        (1, 1, 2)
    );

    // The server keeps serving after a drop.
    sb.set_faults(Faults::default());
    assert_eq!(post_events(&sb, vec![event("d3")]).await.0, 200);
}

#[tokio::test]
async fn reject_event_ids_rejects_the_request_holding_the_id_and_accepts_the_rest_alone() {
    let faults = Faults {
        reject_event_ids: HashSet::from(["poison".to_owned()]),
        ..Faults::default()
    };
    let sb = sandbox_with(faults, None).await;
    let (status, body) = post_events(&sb, vec![event("ok1"), event("poison"), event("ok2")]).await;
    assert_rejected(status, &body, 2804016);
    assert!(body["error"]["error_user_msg"]
        .as_str()
        .unwrap()
        .contains("data[1]"));
    assert!(sb.events().is_empty());
    let (status, _) = post_events(&sb, vec![event("ok1"), event("ok2")]).await;
    assert_eq!(status, 200);
    assert_eq!(sb.events().len(), 2);
}

#[tokio::test]
async fn reject_rate_always_rejects_the_same_events() {
    let sb = sandbox_with(
        Faults {
            reject_rate: 0.5,
            ..Faults::default()
        },
        None,
    )
    .await;
    let mut outcomes = Vec::new();
    for round in 0..2 {
        let mut this_round = Vec::new();
        for i in 0..20 {
            let (status, _) = post_events(&sb, vec![event(&format!("rr-{i}"))]).await;
            this_round.push(status);
        }
        if round == 1 {
            assert_eq!(outcomes, this_round);
        }
        outcomes = this_round;
    }
    assert!(
        outcomes.contains(&200) && outcomes.contains(&400),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn slow_ms_delays_answers_without_serializing_requests() {
    let sb = sandbox_with(
        Faults {
            slow_ms: 400,
            ..Faults::default()
        },
        None,
    )
    .await;
    let started = Instant::now();
    let (a, b) = tokio::join!(
        post_events(&sb, vec![event("s1")]),
        post_events(&sb, vec![event("s2")])
    );
    let elapsed = started.elapsed();
    assert_eq!((a.0, b.0), (200, 200));
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(780),
        "requests were serialized: {elapsed:?}"
    );
}

#[tokio::test]
async fn shutdown_flushes_the_record_file_and_stops_listening() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("events.jsonl");
    let sb = sandbox_with(Faults::default(), Some(record.clone())).await;
    let base = sb.base_url();
    assert_eq!(
        post_events(&sb, vec![event("sd1"), event("sd2")]).await.0,
        200
    );
    sb.shutdown().await;
    assert_eq!(std::fs::read_to_string(&record).unwrap().lines().count(), 2);
    let after = reqwest::Client::new()
        .post(format!("{base}{PATH}"))
        .send()
        .await;
    assert!(after.is_err());
}

#[test]
fn sandbox_config_debug_redacts_the_token() {
    let cfg = SandboxConfig {
        token: Some("very-secret-token".into()),
        ..Default::default()
    };
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("very-secret-token"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
}

#[tokio::test]
async fn get_of_the_pixel_with_a_valid_token_answers_its_id_and_records_nothing() {
    let sb = sandbox().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v25.0/123456789012345?fields=id", sb.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"id": "123456789012345"}));
    assert_eq!(sb.stats().events_accepted, 0);
}

#[tokio::test]
async fn get_of_the_pixel_with_a_wrong_token_is_refused_with_code_190() {
    let sb = sandbox().await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v25.0/123456789012345?fields=id", sb.base_url()))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], 190);
}

#[tokio::test]
async fn count_only_accepts_unvalidated_events_by_count_but_still_checks_the_token() {
    let sb = start(
        local(),
        SandboxConfig {
            token: Some(TOKEN.into()),
            keep_in_memory: true,
            count_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    // An unhashed email would be refused by the full validation; counted, it is accepted.
    let unhashed = json!({"event_name": "Lead", "user_data": {"em": ["a@b.c"]}});
    let resp = client
        .post(url(&sb))
        .json(&json!({"data": [unhashed, event("b"), event("c")], "access_token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["events_received"], 3);
    let wrong = client
        .post(url(&sb))
        .json(&json!({"data": [event("d")], "access_token": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let empty = client
        .post(url(&sb))
        .bearer_auth(TOKEN)
        .json(&json!({"data": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
    let stats = sb.stats();
    assert_eq!((stats.accepted_requests, stats.events_accepted), (1, 3));
    // Counted events are not kept: the mode is for benchmarks, not for checking what was sent.
    assert!(sb.events().is_empty());
}
