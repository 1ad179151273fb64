//! What the pages show, built from what `status --json` shows: each row of the overview is a
//! [`ModelView`] made from the model's [`ModelStatus`] (gathered by `crate::report::collect`),
//! so the page and `status --json` cannot disagree. The pages render views only; a figure
//! that `ModelStatus` gains becomes a field here and a column there.

use crate::report::ModelStatus;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;

/// What a model is doing, as the overview's first column says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// A run of it is going in this service.
    Running,
    /// Waiting for its next fire time; its last run (if any) did not fail.
    Idle,
    /// Its last run failed.
    Failing,
    /// `enabled = false`: never scheduled.
    Disabled,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Running => "running",
            ModelState::Idle => "idle",
            ModelState::Failing => "failing",
            ModelState::Disabled => "disabled",
        }
    }
}

/// One run, as the pages show it (from `report::run_json`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub id: i64,
    pub trigger: String,
    pub status: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rows_read: i64,
    pub events_sent: i64,
    pub rows_refused: i64,
    pub refused_by_reason: BTreeMap<String, i64>,
    /// Events that carried each identifier.
    pub coverage: BTreeMap<String, i64>,
    pub error: Option<String>,
}

impl RunView {
    /// Reads one run of `run_json`'s shape; absent figures are zero.
    pub fn from_json(run: &Value) -> RunView {
        let int = |k: &str| run[k].as_i64().unwrap_or(0);
        let text = |k: &str| run[k].as_str().map(str::to_string);
        let time = |k: &str| {
            run[k]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let counts = |k: &str| -> BTreeMap<String, i64> {
            run[k]
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| v.as_i64().map(|n| (k.clone(), n)))
                        .collect()
                })
                .unwrap_or_default()
        };
        RunView {
            id: int("id"),
            trigger: text("trigger").unwrap_or_default(),
            status: text("status").unwrap_or_default(),
            started_at: time("started_at"),
            finished_at: time("finished_at"),
            rows_read: int("rows_read"),
            events_sent: int("events_sent"),
            rows_refused: int("rows_refused"),
            refused_by_reason: counts("refused_by_reason"),
            coverage: counts("coverage"),
            error: text("error"),
        }
    }

    /// The share of the run's sent events that carried each identifier, 0 to 1, most
    /// common first.
    pub fn coverage_shares(&self) -> Vec<(String, f64)> {
        if self.events_sent <= 0 {
            return Vec::new();
        }
        let mut shares: Vec<(String, f64)> = self
            .coverage
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    (*n as f64 / self.events_sent as f64).clamp(0.0, 1.0),
                )
            })
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        shares
    }
}

/// Rows waiting that are about to leave Meta's window (7 days; 62 for physical_store), and
/// those already outside it. None when the warehouse could not count them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiryView {
    pub rows_expiring: i64,
    pub rows_expired_waiting: i64,
    pub earliest_expiry: Option<DateTime<Utc>>,
}

/// Meta's own judgement of how well the events match (event match quality), once read.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityView {
    /// Meta's score, as Meta gives it.
    pub score: String,
    pub measured_at: Option<DateTime<Utc>>,
}

impl QualityView {
    /// Meta's composite score per event name ("Lead 6.2/10"), or the last read's note when
    /// Meta gave no score; None when quality was never read.
    fn new(q: &crate::state::LatestQuality) -> Option<QualityView> {
        let scored: Vec<String> = q
            .scores
            .iter()
            .filter_map(|s| {
                s.composite_score
                    .map(|c| format!("{} {:.1}/10", s.event_name, c))
            })
            .collect();
        if !scored.is_empty() {
            let measured_at = q.scores.iter().filter_map(|s| s.fetched_at).max();
            return Some(QualityView {
                score: scored.join(", "),
                measured_at,
            });
        }
        q.last_fetch.as_ref().map(|f| QualityView {
            score: match f.status.as_str() {
                "unavailable" => "unavailable".to_string(),
                _ => "no score yet".to_string(),
            },
            measured_at: Some(f.fetched_at),
        })
    }
}

/// One row of the overview.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    pub name: String,
    pub state: ModelState,
    pub schedule: String,
    pub next_run: Option<DateTime<Utc>>,
    pub due_since: Option<DateTime<Utc>>,
    pub last_run: Option<RunView>,
    pub waiting_rows: Option<i64>,
    pub lag_seconds: Option<f64>,
    pub backlog_error: Option<String>,
    /// Refused rows on record (what `capi-sync retry` would read), by reason.
    pub refused_by_reason: BTreeMap<String, i64>,
    pub changed_since_delivery: i64,
    pub cursor: Option<crate::report::CursorStatus>,
    pub expiry: Option<ExpiryView>,
    pub quality: Option<QualityView>,
}

fn parse_time(t: &Option<String>) -> Option<DateTime<Utc>> {
    t.as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl ModelView {
    /// The view of a model's status; `running` when this service has a run of it going.
    pub fn new(status: &ModelStatus, running: bool) -> ModelView {
        let last_run = status.last_run.as_ref().map(RunView::from_json);
        let state = if !status.enabled {
            ModelState::Disabled
        } else if running || last_run.as_ref().is_some_and(|r| r.status == "running") {
            ModelState::Running
        } else if last_run.as_ref().is_some_and(|r| r.status == "failed") {
            ModelState::Failing
        } else {
            ModelState::Idle
        };
        ModelView {
            name: status.model.clone(),
            state,
            schedule: status.schedule.clone(),
            next_run: parse_time(&status.next_run),
            due_since: parse_time(&status.due_since),
            last_run,
            waiting_rows: status.waiting_rows,
            lag_seconds: status.lag_seconds,
            backlog_error: status.backlog_error.clone(),
            refused_by_reason: status.refused_by_reason.clone(),
            changed_since_delivery: status.changed_since_delivery,
            cursor: status.cursor.clone(),
            expiry: match (status.rows_expiring, status.rows_expired_waiting) {
                (Some(rows_expiring), Some(rows_expired_waiting)) => Some(ExpiryView {
                    rows_expiring,
                    rows_expired_waiting,
                    earliest_expiry: parse_time(&status.earliest_expiry),
                }),
                _ => None,
            },
            quality: status.quality.as_ref().and_then(QualityView::new),
        }
    }

    pub fn refused_total(&self) -> i64 {
        self.refused_by_reason.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(enabled: bool, last: Option<Value>) -> ModelStatus {
        ModelStatus {
            model: "leads".into(),
            enabled,
            schedule: "*/5 * * * *".into(),
            next_run: Some("2026-03-01T12:05:00+00:00".into()),
            due_since: None,
            last_run: last,
            last_success_at: None,
            cursor: None,
            waiting_rows: Some(3),
            lag_seconds: Some(12.0),
            oldest_waiting: None,
            newest_waiting: None,
            backlog_error: None,
            rows_expiring: None,
            rows_expired_waiting: None,
            earliest_expiry: None,
            expiring_within_seconds: 86_400,
            expiry_error: None,
            refused_by_reason: BTreeMap::from([("event_time_too_old".into(), 2)]),
            changed_since_delivery: 0,
            quality: None,
        }
    }

    fn run(status: &str) -> Value {
        json!({"id": 7, "trigger": "schedule", "status": status,
               "started_at": "2026-03-01T12:00:00+00:00", "finished_at": null,
               "rows_read": 10, "events_sent": 8, "rows_refused": 2,
               "refused_by_reason": {"event_time_too_old": 2},
               "coverage": {"em": 8, "ph": 2}, "error": null})
    }

    #[test]
    fn the_state_follows_enabled_the_running_runs_and_the_last_run() {
        assert_eq!(
            ModelView::new(&status(false, None), false).state,
            ModelState::Disabled
        );
        assert_eq!(
            ModelView::new(&status(true, None), false).state,
            ModelState::Idle
        );
        assert_eq!(
            ModelView::new(&status(true, Some(run("failed"))), false).state,
            ModelState::Failing
        );
        assert_eq!(
            ModelView::new(&status(true, Some(run("failed"))), true).state,
            ModelState::Running
        );
        assert_eq!(
            ModelView::new(&status(true, Some(run("succeeded"))), false).state,
            ModelState::Idle
        );
    }

    #[test]
    fn coverage_is_the_share_of_sent_events_most_common_first() {
        let v = ModelView::new(&status(true, Some(run("succeeded"))), false);
        let shares = v.last_run.unwrap().coverage_shares();
        assert_eq!(shares, vec![("em".into(), 1.0), ("ph".into(), 0.25)]);
    }

    #[test]
    fn the_figures_are_those_of_the_status() {
        let v = ModelView::new(&status(true, Some(run("succeeded"))), false);
        assert_eq!(v.waiting_rows, Some(3));
        assert_eq!(v.refused_total(), 2);
        let last = v.last_run.unwrap();
        assert_eq!(
            (last.rows_read, last.events_sent, last.rows_refused),
            (10, 8, 2)
        );
        assert_eq!(v.expiry, None);
        assert_eq!(v.quality, None);
        let mut s = status(true, None);
        s.rows_expiring = Some(3);
        s.rows_expired_waiting = Some(1);
        s.earliest_expiry = Some("2026-03-02T12:00:00+00:00".into());
        let e = ModelView::new(&s, false).expiry.unwrap();
        assert_eq!((e.rows_expiring, e.rows_expired_waiting), (3, 1));
        assert_eq!(
            e.earliest_expiry.map(|t| t.to_rfc3339()),
            Some("2026-03-02T12:00:00+00:00".into())
        );
    }

    #[test]
    fn meta_scores_show_per_event_name_and_a_read_without_one_says_so() {
        use crate::state::{LatestQuality, QualityFetch, QualityScore};
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let fetch = |status: &str| QualityFetch {
            fetched_at: at("2026-03-01T12:00:00Z"),
            pixel_id: "1".into(),
            source: "web".into(),
            status: status.into(),
            note: Some("why".into()),
            meta_code: None,
        };
        let score = |name: &str, c: f64| QualityScore {
            event_name: name.into(),
            source: "web".into(),
            fetched_at: Some(at("2026-03-01T11:00:00Z")),
            composite_score: Some(c),
            match_keys: BTreeMap::new(),
            event_coverage_pct: None,
            event_coverage_goal_pct: None,
            acr_pct: None,
            upload_frequency: None,
            match_key_score: None,
            frequency_score: None,
            freshness_score: None,
        };
        let mut s = status(true, None);
        s.quality = Some(LatestQuality {
            last_fetch: Some(fetch("scored")),
            scores: vec![score("Lead", 6.25), score("Purchase", 8.0)],
        });
        let q = ModelView::new(&s, false).quality.unwrap();
        assert_eq!(q.score, "Lead 6.2/10, Purchase 8.0/10");
        assert_eq!(q.measured_at, Some(at("2026-03-01T11:00:00Z")));
        s.quality = Some(LatestQuality {
            last_fetch: Some(fetch("unavailable")),
            scores: vec![],
        });
        assert_eq!(
            ModelView::new(&s, false).quality.unwrap().score,
            "unavailable"
        );
        s.quality = Some(LatestQuality::default());
        assert_eq!(ModelView::new(&s, false).quality, None);
    }
}
