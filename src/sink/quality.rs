//! Reading a dataset's match quality from Meta's Dataset Quality API:
//! `GET {graph_url}/{api_version}/dataset_quality?dataset_id={pixel}&fields=...&access_token=...`.
//!
//! * Web events: <https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api>
//!   (the dataset is a query parameter, not a path segment; `access_token` is a documented
//!   parameter; the response is `{"web": [...]}`, one entry per event name).
//! * Offline events (beta, enabled by a Meta representative):
//!   <https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api/offline-events>
//!   (`fields=offline{...}`, scores as `{score, recommendation}` objects).
//! * Field types: the node references `ads-pixel-capiemq`, `ads-pixel-capi-match-key`,
//!   `ads-dataset-event-coverage`, `ads-dataset-data-freshness` and `ads-dataset-capiacr` under
//!   <https://developers.facebook.com/docs/marketing-api/reference/>.
//!
//! Every member is optional: Meta returns only what it has, and `{}` (or an empty list) means it
//! has no score for the dataset yet. Only numbers, identifier names and the `upload_frequency`
//! enum are kept; Meta's `description` and `recommendation` prose is dropped. The token travels
//! in the query, as Meta documents, so an error never shows the URL with its query (see
//! [`super::answer::shown_url`]) and a network error is stripped of its URL.

use super::{map_reqwest, GraphClient, NotGraphKind, SinkError};
use serde_json::Value;
use std::collections::BTreeMap;

/// Which block of the Dataset Quality API is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QualitySource {
    /// `web{...}`: Event Match Quality and the May 2025 metrics, for website events.
    Web,
    /// `offline{...}` (beta): scores out of 10 for physical-store events.
    Offline,
}

impl QualitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            QualitySource::Web => "web",
            QualitySource::Offline => "offline",
        }
    }

    /// The `fields` parameter: only the numeric members capi-sync keeps, so Meta sends no
    /// prose it would drop anyway (Dataset Quality API field tree; `coverage` holds
    /// `percentage`, `acr` holds `percentage`).
    pub fn fields(self) -> &'static str {
        match self {
            QualitySource::Web => "web{event_name,event_match_quality{composite_score,match_key_feedback{identifier,coverage}},event_coverage{percentage,goal_percentage},data_freshness{upload_frequency},acr{percentage}}",
            QualitySource::Offline => "offline{event_name,composite,match_key,frequency,freshness}",
        }
    }
}

/// One event name's quality, as Meta reports it. Numbers only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QualityEntry {
    pub event_name: String,
    /// Web: `event_match_quality.composite_score`; offline: `composite.score`. Out of 10.
    pub composite_score: Option<f64>,
    /// Identifier → coverage in percent. Web: `match_key_feedback[].coverage.percentage`;
    /// offline: `match_key.coverage` (email, phone).
    pub match_keys: BTreeMap<String, f64>,
    pub event_coverage_pct: Option<f64>,
    pub event_coverage_goal_pct: Option<f64>,
    pub acr_pct: Option<f64>,
    /// `weekly`, `daily`, `hourly` or `real_time` (`ads-dataset-data-freshness`).
    pub upload_frequency: Option<String>,
    /// Offline only: `match_key.score`, `frequency.score`, `freshness.score`.
    pub match_key_score: Option<f64>,
    pub frequency_score: Option<f64>,
    pub freshness_score: Option<f64>,
}

/// The most identifiers kept per entry: Meta lists a dozen or so; more is not its answer.
const MAX_IDENTIFIERS: usize = 32;

impl GraphClient {
    /// The Dataset Quality API's URL without the query, for messages.
    pub fn quality_url(&self) -> String {
        format!("{}/dataset_quality", self.base)
    }

    /// Asks Meta for `pixel_id`'s quality. `Ok(vec![])` means Meta has no score yet.
    pub async fn dataset_quality(
        &self,
        pixel_id: &str,
        source: QualitySource,
    ) -> Result<Vec<QualityEntry>, SinkError> {
        // No `agent_name`: it would count only events sent with our `partner_agent`, and the
        // score of the whole dataset is what the ads are matched with (Dataset Quality API,
        // parameters: "omitted, all events count").
        let query = [
            ("dataset_id", pixel_id),
            ("fields", source.fields()),
            ("access_token", self.token.expose()),
        ];
        let resp = self
            .http
            .get(self.quality_url())
            .query(&query)
            .send()
            .await
            .map_err(|e| map_reqwest(e.without_url()))?;
        self.read_object(
            resp,
            NotGraphKind::NotAnObject,
            |body| match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(doc)) if !doc.contains_key("error") => {
                    Some(parse_entries(doc.get(source.as_str()), source))
                }
                _ => None,
            },
        )
        .await
    }
}

/// The entries of a `web` or `offline` list; anything else is no entry.
pub fn parse_entries(list: Option<&Value>, source: QualitySource) -> Vec<QualityEntry> {
    let Some(Value::Array(items)) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match source {
            QualitySource::Web => web_entry(item),
            QualitySource::Offline => offline_entry(item),
        })
        .collect()
}

/// A number, or the `score` of a `{score, recommendation}` object (the offline page types some
/// scores as integers and returns objects in every example).
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
        Value::Object(o) => number(o.get("score")),
        _ => None,
    }
}

fn event_name(item: &Value) -> Option<String> {
    let name = item.get("event_name")?.as_str()?;
    // Event names are short identifiers; anything else is not kept.
    (!name.is_empty() && name.len() <= 100 && !name.chars().any(char::is_control))
        .then(|| name.to_string())
}

/// An identifier name as a label and a JSON key: short, letters, digits and `_`.
fn identifier(name: &str) -> Option<String> {
    (!name.is_empty()
        && name.len() <= 40
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then(|| name.to_ascii_lowercase())
}

fn web_entry(item: &Value) -> Option<QualityEntry> {
    let emq = item.get("event_match_quality");
    let mut match_keys = BTreeMap::new();
    for key in emq
        .and_then(|e| e.get("match_key_feedback"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .take(MAX_IDENTIFIERS)
    {
        let id = key
            .get("identifier")
            .and_then(Value::as_str)
            .and_then(identifier);
        let pct = number(key.get("coverage").and_then(|c| c.get("percentage")));
        if let (Some(id), Some(pct)) = (id, pct) {
            match_keys.insert(id, pct);
        }
    }
    let coverage = item.get("event_coverage");
    let frequency = item
        .get("data_freshness")
        .and_then(|f| f.get("upload_frequency"))
        .and_then(Value::as_str)
        .filter(|f| matches!(*f, "weekly" | "daily" | "hourly" | "real_time"))
        .map(str::to_string);
    Some(QualityEntry {
        event_name: event_name(item)?,
        composite_score: number(emq.and_then(|e| e.get("composite_score"))),
        match_keys,
        event_coverage_pct: number(coverage.and_then(|c| c.get("percentage"))),
        event_coverage_goal_pct: number(coverage.and_then(|c| c.get("goal_percentage"))),
        acr_pct: number(item.get("acr").and_then(|a| a.get("percentage"))),
        upload_frequency: frequency,
        ..Default::default()
    })
}

fn offline_entry(item: &Value) -> Option<QualityEntry> {
    let match_key = item.get("match_key");
    let mut match_keys = BTreeMap::new();
    // Where the coverage sits is ambiguous in the offline page's (malformed) example; the
    // likely reading is `match_key.coverage = {email, phone}` in percent.
    if let Some(Value::Object(cov)) = match_key.and_then(|m| m.get("coverage")) {
        for (k, v) in cov.iter().take(MAX_IDENTIFIERS) {
            if let (Some(id), Some(pct)) = (identifier(k), number(Some(v))) {
                match_keys.insert(id, pct);
            }
        }
    }
    Some(QualityEntry {
        event_name: event_name(item)?,
        composite_score: number(item.get("composite")),
        match_keys,
        match_key_score: number(match_key),
        frequency_score: number(item.get("frequency")),
        freshness_score: number(item.get("freshness")),
        ..Default::default()
    })
}

/// Why quality could not be read, and whether the next interval may do better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// One actionable line, without the token or the query.
    pub note: String,
    pub meta_code: Option<i64>,
    /// A network error, a timeout, a 5xx or a throttle: worth trying again later.
    pub transient: bool,
}

/// What an error of the Dataset Quality API means for the operator. The permissions are those
/// the web page lists ("Partial access → Use events dataset" on the dataset; `ads_read` plus
/// `ads_management` or `business_management`); codes 10 and 2044055 come from the offline page's
/// error table, 190 is the Graph API's invalid token.
pub fn unavailable(err: &SinkError, pixel_id: &str, source: QualitySource) -> Unavailable {
    use super::ErrorClass;
    let code = err.graph_error().map(|e| e.code);
    let note = match code {
        Some(c @ (10 | 200..=299)) => format!(
            "Meta refused permission to read dataset {pixel_id}'s quality (code {c}): give the token's (system) user at least \"Partial access → Use events dataset\" on the dataset, and the app `ads_read` plus `ads_management` or `business_management`; a \"client system user access token\" cannot read quality"
        ),
        Some(2_044_055) => format!(
            "Meta knows no dataset {pixel_id} (code 2044055): check the model's pixel_id"
        ),
        Some(c @ (190 | 102)) => format!(
            "the access token is invalid or expired (code {c}): set a valid meta.access_token"
        ),
        Some(100) if source == QualitySource::Offline => format!(
            "Meta refused the offline quality fields for dataset {pixel_id} (code 100): the Dataset Quality API for offline events is a beta that a Meta representative enables"
        ),
        Some(c) if err.class() != ErrorClass::Transient && err.class() != ErrorClass::Throttled => {
            format!("Meta refused the request for dataset {pixel_id}'s quality (code {c})")
        }
        _ => format!("{err}; tried again at the next interval"),
    };
    Unavailable {
        note: format!("quality unavailable: {note}"),
        meta_code: code,
        transient: matches!(err.class(), ErrorClass::Transient | ErrorClass::Throttled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn web_entries_keep_numbers_and_drop_prose() {
        let doc = json!({"web": [{
            "event_name": "Purchase",
            "event_match_quality": {
                "composite_score": 7.4,
                "match_key_feedback": [
                    {"identifier": "email", "coverage": {"percentage": 99.9},
                     "potential_aly_acr_increase": {"percentage": 3, "description": "prose"}},
                    {"identifier": "bad id!", "coverage": {"percentage": 1}},
                    {"identifier": "ip_address"}
                ]
            },
            "event_coverage": {"percentage": 80, "goal_percentage": 75, "description": "prose"},
            "data_freshness": {"upload_frequency": "real_time", "description": "prose"},
            "acr": {"percentage": 12.5, "description": "prose"}
        }]});
        let e = parse_entries(doc.get("web"), QualitySource::Web);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].composite_score, Some(7.4));
        assert_eq!(
            e[0].match_keys,
            BTreeMap::from([("email".to_string(), 99.9)])
        );
        assert_eq!(e[0].event_coverage_pct, Some(80.0));
        assert_eq!(e[0].event_coverage_goal_pct, Some(75.0));
        assert_eq!(e[0].acr_pct, Some(12.5));
        assert_eq!(e[0].upload_frequency.as_deref(), Some("real_time"));
        assert!(!format!("{e:?}").contains("prose"));
    }

    #[test]
    fn every_member_is_optional_and_empty_means_no_score() {
        assert!(parse_entries(None, QualitySource::Web).is_empty());
        assert!(parse_entries(Some(&json!([])), QualitySource::Web).is_empty());
        let e = parse_entries(
            Some(&json!([{"event_name": "Lead"}, {}])),
            QualitySource::Web,
        );
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].composite_score, None);
        assert!(e[0].match_keys.is_empty());
    }

    #[test]
    fn offline_scores_are_read_from_score_objects_or_numbers() {
        let list = json!([{
            "event_name": "Purchase",
            "composite": {"score": 6.6, "recommendation": "prose"},
            "match_key": {"score": 5.6, "recommendation": "prose", "coverage": {"email": 80, "phone": 40.5}},
            "frequency": 4,
            "freshness": {"score": 2.2}
        }]);
        let e = &parse_entries(Some(&list), QualitySource::Offline)[0];
        assert_eq!(e.composite_score, Some(6.6));
        assert_eq!(e.match_key_score, Some(5.6));
        assert_eq!(e.frequency_score, Some(4.0));
        assert_eq!(e.freshness_score, Some(2.2));
        assert_eq!(e.match_keys["phone"], 40.5);
    }

    fn api(code: i64) -> SinkError {
        SinkError::Api {
            status: 400,
            url: "https://graph.facebook.com/v25.0/dataset_quality".into(),
            error: Box::new(super::super::GraphError {
                code,
                message: "m".into(),
                ..Default::default()
            }),
            retry_after: None,
        }
    }

    /// A client of `base` with token "tok-secret-quality".
    fn client_of(base: &str) -> GraphClient {
        let config = crate::config::Config::from_toml_str(
            &format!(
                "[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\ngraph_url = \"{base}\"\naccess_token = \"tok-secret-quality\"\nrequest_timeout = \"5s\"\n"
            ),
            std::path::Path::new("."),
        )
        .expect("config");
        GraphClient::new(&config.meta).expect("client")
    }

    #[tokio::test]
    async fn answers_not_from_the_graph_api_are_notes_without_the_token() {
        use crate::sandbox::{self, Misanswer, SandboxConfig};
        let sb = sandbox::start("127.0.0.1:0".parse().unwrap(), SandboxConfig::default())
            .await
            .expect("sandbox");
        let client = client_of(&sb.base_url());
        for (answer, transient) in [
            (Misanswer::Html404, false),
            (Misanswer::JunkOk, false),
            (Misanswer::Redirect, false),
            (Misanswer::Oversized, false),
            (Misanswer::BadGatewayHtml, true),
        ] {
            sb.misanswer(answer, 0, 1);
            let err = client
                .dataset_quality("123", QualitySource::Web)
                .await
                .expect_err("not the Graph API");
            let text = err.to_string();
            assert!(text.contains("/v27.0/dataset_quality"), "{text}");
            assert!(!text.contains("tok-secret-quality"), "{answer:?}: {text}");
            assert!(!text.contains("access_token"), "{answer:?}: {text}");
            let u = unavailable(&err, "123", QualitySource::Web);
            assert_eq!(u.transient, transient, "{answer:?}: {}", u.note);
        }
    }

    #[tokio::test]
    async fn a_network_error_never_shows_the_token() {
        // Nothing listens on port 1.
        let client = client_of("http://127.0.0.1:1");
        let err = client
            .dataset_quality("123", QualitySource::Web)
            .await
            .expect_err("nothing listens");
        let u = unavailable(&err, "123", QualitySource::Web);
        assert!(u.transient, "{}", u.note);
        assert!(!u.note.contains("tok-secret-quality"), "{}", u.note);
        assert!(
            !format!("{err:?}").contains("tok-secret-quality"),
            "{err:?}"
        );
    }

    #[test]
    fn permission_and_unknown_dataset_errors_say_what_to_do() {
        let n = unavailable(&api(10), "123", QualitySource::Web);
        assert!(n.note.contains("Use events dataset"), "{}", n.note);
        assert!(n.note.contains("ads_read"), "{}", n.note);
        assert!(!n.transient);
        assert!(unavailable(&api(200), "123", QualitySource::Web)
            .note
            .contains("permission"));
        assert!(unavailable(&api(2044055), "123", QualitySource::Web)
            .note
            .contains("pixel_id"));
        assert!(unavailable(&api(190), "123", QualitySource::Web)
            .note
            .contains("access token"));
        assert!(unavailable(&api(100), "123", QualitySource::Offline)
            .note
            .contains("beta"));
        let t = unavailable(&SinkError::Timeout, "123", QualitySource::Web);
        assert!(t.transient);
        assert!(t.note.starts_with("quality unavailable: "), "{}", t.note);
    }
}
