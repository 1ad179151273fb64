//! Match quality as Meta reports it: reads each model's pixel through the Dataset Quality API
//! (`src/sink/quality.rs`), gives each model the entries of the event names it sends, and
//! records the outcome (`src/state/quality.rs`). Used by `capi-sync quality`, `check
//! --min-quality`, `demo` and, every `meta.quality_interval`, by the `run` service.
//!
//! Which block a model reads: `offline{...}` when its `action_source` constant is
//! `physical_store`, else `web{...}` (Meta computes Event Match Quality for website events
//! only: <https://developers.facebook.com/documentation/ads-commerce/conversions-api/dataset-quality-api>).
//! Models sharing a pixel and a block share one request.
//!
//! Which entries belong to a model: Meta reports per dataset and event name, and several models
//! may send to one pixel. A model gets the entries whose event name is its `event_name`
//! constant or one it has delivered (the event names of its events in the delivery ledger,
//! within `state.ledger_retention`). Two models sending the same event name to one pixel both
//! get that entry: Meta cannot tell their events apart.
//!
//! Reading quality never fails a sync or the service: a refusal or an unreachable Meta is an
//! outcome with a note (`unavailable`), recorded like a score.

use crate::config::{Config, ModelConfig};
use crate::params::{Target, TopField};
use crate::sink::quality::{unavailable, QualityEntry, QualitySource};
use crate::sink::GraphClient;
use crate::state::{QualityFetch, QualityScore, StateStore};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long after the service starts it first reads quality: after the first runs began, so
/// Meta is asked once the service is known to work.
pub const FIRST_FETCH_AFTER: Duration = Duration::from_secs(5);

/// How long reads and their snapshots are kept: a year and a month, so a score can be
/// compared with the same season a year before. The service prunes older ones.
pub const KEEP_READS_FOR: Duration = Duration::from_secs(400 * 86_400);

/// When a read failed for a passing reason (network, 5xx, throttle), the next comes this soon
/// (or at `meta.quality_interval`, when that is sooner).
pub const RETRY_AFTER_TRANSIENT: Duration = Duration::from_secs(600);

/// The outcome of one read of one model's quality.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelQuality {
    pub model: String,
    pub pixel_id: String,
    pub source: QualitySource,
    pub fetched_at: DateTime<Utc>,
    /// The event names the model's entries were chosen by.
    pub event_names: Vec<String>,
    /// `scored`, `no_score` or `unavailable`.
    pub status: &'static str,
    /// Why there is no score, and what to do.
    pub note: Option<String>,
    pub meta_code: Option<i64>,
    pub scores: Vec<QualityScore>,
    /// Worth trying again soon (a network error, a 5xx, a throttle).
    #[serde(skip)]
    pub transient: bool,
}

/// The block a model's quality is read from.
pub fn source_of(model: &ModelConfig) -> QualitySource {
    let store = model.constants.iter().any(|(t, v)| {
        *t == Target::Top(TopField::ActionSource) && v.as_str() == Some("physical_store")
    });
    if store {
        QualitySource::Offline
    } else {
        QualitySource::Web
    }
}

fn constant(model: &ModelConfig, field: TopField) -> Option<&str> {
    model
        .constants
        .iter()
        .find(|(t, _)| *t == Target::Top(field))
        .and_then(|(_, v)| v.as_str())
}

/// The event names a model sends: its constant, and those in the delivery ledger.
pub async fn event_names(state: Option<&StateStore>, model: &ModelConfig) -> Vec<String> {
    let mut names: Vec<String> = constant(model, TopField::EventName)
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(state) = state {
        match state.delivered_event_names(&model.name).await {
            Ok(delivered) => names.extend(delivered),
            Err(e) => {
                warn!(model = %model.name, error = %e, "cannot read the event names the model delivered")
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn score_of(e: &QualityEntry, source: QualitySource, at: DateTime<Utc>) -> QualityScore {
    QualityScore {
        event_name: e.event_name.clone(),
        source: source.as_str().to_string(),
        fetched_at: Some(at),
        composite_score: e.composite_score,
        match_keys: e.match_keys.clone(),
        event_coverage_pct: e.event_coverage_pct,
        event_coverage_goal_pct: e.event_coverage_goal_pct,
        acr_pct: e.acr_pct,
        upload_frequency: e.upload_frequency.clone(),
        match_key_score: e.match_key_score,
        frequency_score: e.frequency_score,
        freshness_score: e.freshness_score,
    }
}

/// Why a model has no score although Meta answered.
fn no_score_note(model: &ModelConfig, names: &[String], answered: bool) -> String {
    let mut note = if names.is_empty() {
        "no score: the model has delivered no event yet, so no event name to look for".to_string()
    } else if answered {
        format!(
            "no score: Meta has no score yet for {} on dataset {}",
            names.join(", "),
            model.pixel_id
        )
    } else {
        format!(
            "no score: Meta has no score for dataset {} yet",
            model.pixel_id
        )
    };
    match constant(model, TopField::ActionSource) {
        Some(s) if s != "website" && s != "physical_store" => note.push_str(&format!(
            " (Meta reports Event Match Quality for website events only, and offline scores for physical_store; this model's action_source is {s})"
        )),
        _ => {}
    }
    note
}

/// Reads the quality of `models` now, one request per pixel and block, and records each
/// model's outcome when `record` is given. Never fails: errors become notes.
pub async fn fetch(
    graph: &GraphClient,
    state: Option<&StateStore>,
    record: bool,
    models: &[&ModelConfig],
) -> Vec<ModelQuality> {
    let mut answers: BTreeMap<(String, QualitySource), Result<Vec<QualityEntry>, _>> =
        BTreeMap::new();
    let mut out = Vec::with_capacity(models.len());
    for model in models {
        let source = source_of(model);
        let key = (model.pixel_id.clone(), source);
        if !answers.contains_key(&key) {
            let answer = graph.dataset_quality(&model.pixel_id, source).await;
            answers.insert(key.clone(), answer);
        }
        let fetched_at = Utc::now();
        let names = event_names(state, model).await;
        let mut q = ModelQuality {
            model: model.name.clone(),
            pixel_id: model.pixel_id.clone(),
            source,
            fetched_at,
            event_names: names.clone(),
            status: "no_score",
            note: None,
            meta_code: None,
            scores: Vec::new(),
            transient: false,
        };
        match &answers[&key] {
            Ok(entries) => {
                q.scores = entries
                    .iter()
                    .filter(|e| names.contains(&e.event_name))
                    .map(|e| score_of(e, source, fetched_at))
                    .collect();
                if q.scores.is_empty() {
                    q.note = Some(no_score_note(model, &names, !entries.is_empty()));
                } else {
                    q.status = "scored";
                }
            }
            Err(e) => {
                let u = unavailable(e, &model.pixel_id, source);
                q.status = "unavailable";
                q.note = Some(u.note);
                q.meta_code = u.meta_code;
                q.transient = u.transient;
            }
        }
        if let (true, Some(state)) = (record, state) {
            let fetch = QualityFetch {
                fetched_at,
                pixel_id: q.pixel_id.clone(),
                source: source.as_str().to_string(),
                status: q.status.to_string(),
                note: q.note.clone(),
                meta_code: q.meta_code,
            };
            if let Err(e) = state.record_quality(&model.name, &fetch, &q.scores).await {
                warn!(model = %model.name, error = %e, "cannot record the match quality read");
            }
        }
        out.push(q);
    }
    out
}

/// The `run` service's reads: every enabled model, [`FIRST_FETCH_AFTER`] after start and then
/// every `meta.quality_interval`, until `stop`; `on_fetch` gets each round's outcomes (the
/// metrics). Nothing when the interval is off.
pub async fn fetch_periodically(
    config: &Config,
    graph: &GraphClient,
    state: &StateStore,
    stop: CancellationToken,
    on_fetch: impl Fn(&[ModelQuality]),
) {
    let Some(interval) = config.meta.quality_interval else {
        return;
    };
    let models: Vec<&ModelConfig> = config.models.iter().filter(|m| m.enabled).collect();
    let mut wait = FIRST_FETCH_AFTER;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let round = tokio::select! {
            r = fetch(graph, Some(state), true, &models) => r,
            _ = stop.cancelled() => return,
        };
        for q in &round {
            match q.status {
                "unavailable" => {
                    warn!(model = %q.model, note = q.note.as_deref().unwrap_or(""), "match quality not read")
                }
                _ => {
                    info!(model = %q.model, status = q.status, scores = q.scores.len(), "match quality read")
                }
            }
        }
        on_fetch(&round);
        if let Err(e) = state.prune_quality(KEEP_READS_FOR).await {
            warn!(error = %e, "cannot remove old match quality reads");
        }
        wait = next_wait(&round, interval);
    }
}

/// How long until the next read: sooner when a read failed for a passing reason.
fn next_wait(round: &[ModelQuality], interval: Duration) -> Duration {
    if round.iter().any(|q| q.transient) {
        interval.min(RETRY_AFTER_TRANSIENT)
    } else {
        interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(constants: &str) -> ModelConfig {
        let text = format!(
            "[warehouse]\nurl = \"postgres://localhost/x\"\n[meta]\naccess_token = \"t\"\n[[models]]\nname = \"m\"\npixel_id = \"1\"\nschedule = \"@hourly\"\nsql = \"SELECT 1\"\nprimary_key = \"id\"\ncursor = \"updated_at\"\n[models.constants]\n{constants}\n"
        );
        Config::from_toml_str(&text, std::path::Path::new("."))
            .unwrap()
            .models
            .remove(0)
    }

    #[test]
    fn store_models_read_the_offline_block_and_others_the_web_block() {
        let store = model("action_source = \"physical_store\"\nevent_name = \"Purchase\"");
        assert_eq!(source_of(&store), QualitySource::Offline);
        assert_eq!(
            source_of(&model("action_source = \"website\"")),
            QualitySource::Web
        );
        assert_eq!(source_of(&model("")), QualitySource::Web);
    }

    #[test]
    fn a_read_that_failed_for_a_passing_reason_is_tried_again_sooner() {
        let read = |transient| ModelQuality {
            model: "m".into(),
            pixel_id: "1".into(),
            source: QualitySource::Web,
            fetched_at: Utc::now(),
            event_names: vec![],
            status: "unavailable",
            note: None,
            meta_code: None,
            scores: vec![],
            transient,
        };
        let six_hours = Duration::from_secs(6 * 3600);
        assert_eq!(next_wait(&[read(false)], six_hours), six_hours);
        assert_eq!(
            next_wait(&[read(false), read(true)], six_hours),
            RETRY_AFTER_TRANSIENT
        );
        let minute = Duration::from_secs(60);
        assert_eq!(next_wait(&[read(true)], minute), minute);
    }

    #[test]
    fn a_crm_model_without_a_score_is_told_why() {
        let crm = model("action_source = \"crm\"");
        let note = no_score_note(&crm, &["Lead".into()], false);
        assert!(note.contains("website events only"), "{note}");
        assert!(note.contains("dataset 1"), "{note}");
    }
}
