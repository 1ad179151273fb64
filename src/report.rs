//! What `status` shows of each model, gathered once for the `status` command and the `run`
//! service's dashboard: its schedule and next run, its last run, where its cursor stands, how
//! many rows wait and for how long, and what was refused. Keys, counts and times only, never a
//! customer value.

use crate::config::ModelConfig;
use crate::source::{ExpiryCount, Warehouse};
use crate::state::{RunRecord, StateStore};
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CursorStatus {
    pub value: String,
    pub key: Vec<String>,
    pub moved_at: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelStatus {
    pub model: String,
    pub enabled: bool,
    pub schedule: String,
    pub next_run: Option<String>,
    /// The schedule fired since the last run started and no run has started since: the
    /// service has the run waiting for a free slot (`service.max_concurrent_runs`), or no
    /// service is running. The earliest such fire time.
    pub due_since: Option<String>,
    pub last_run: Option<serde_json::Value>,
    pub last_success_at: Option<String>,
    pub cursor: Option<CursorStatus>,
    /// Rows after the cursor (None when the warehouse could not say).
    pub waiting_rows: Option<i64>,
    /// Age in seconds of the oldest waiting row's cursor value: how long the oldest change not
    /// yet sent has waited. 0 when nothing waits; None for integer cursors or on error.
    pub lag_seconds: Option<f64>,
    pub oldest_waiting: Option<String>,
    pub newest_waiting: Option<String>,
    /// Why waiting rows and lag are unknown.
    pub backlog_error: Option<String>,
    /// Waiting rows whose `event_time` leaves Meta's window (7 days; 62 for physical_store)
    /// within `expiring_within_seconds`: the next run must send them before then.
    pub rows_expiring: Option<i64>,
    /// Waiting rows already outside Meta's window: the next run refuses them
    /// (`event_time_too_old`).
    pub rows_expired_waiting: Option<i64>,
    /// The earliest time a waiting row leaves Meta's window (`event_time` + window), among
    /// those still inside it.
    pub earliest_expiry: Option<String>,
    /// The horizon of `rows_expiring` (`service.expiring_within`).
    pub expiring_within_seconds: u64,
    /// Why the rows leaving Meta's window are unknown (a text event_time, no event_time
    /// column, a failed query).
    pub expiry_error: Option<String>,
    pub refused_by_reason: BTreeMap<String, i64>,
    pub changed_since_delivery: i64,
    /// Match quality as Meta last reported it: the newest scores per event name and the last
    /// read (with its note when there was no score). None when the state has no quality tables.
    pub quality: Option<crate::state::LatestQuality>,
}

/// Everything `status` shows for one model.
pub async fn collect(
    warehouse: Option<&Warehouse>,
    state: Option<&StateStore>,
    model: &ModelConfig,
    now: DateTime<Utc>,
    expiring_within: std::time::Duration,
) -> anyhow::Result<ModelStatus> {
    let mut s = ModelStatus {
        model: model.name.clone(),
        enabled: model.enabled,
        schedule: model.schedule.expression.clone(),
        next_run: model
            .enabled
            .then(|| model.schedule.next_after(now))
            .flatten()
            .map(|t| t.to_rfc3339()),
        due_since: None,
        last_run: None,
        last_success_at: None,
        cursor: None,
        waiting_rows: None,
        lag_seconds: None,
        oldest_waiting: None,
        newest_waiting: None,
        backlog_error: None,
        rows_expiring: None,
        rows_expired_waiting: None,
        earliest_expiry: None,
        expiring_within_seconds: expiring_within.as_secs(),
        expiry_error: None,
        refused_by_reason: BTreeMap::new(),
        changed_since_delivery: 0,
        quality: None,
    };
    let mut after = None;
    if let Some(state) = state {
        let last = state.recent_runs(&model.name, 1).await?;
        s.last_run = last.first().map(run_json);
        s.due_since = last
            .first()
            .and_then(|r| due_since(model, r, now))
            .map(|t| t.to_rfc3339());
        s.last_success_at = state
            .last_success(&model.name)
            .await?
            .map(|t| t.to_rfc3339());
        if let Some(c) = state.cursor_record(&model.name).await? {
            s.cursor = Some(CursorStatus {
                value: c.position.cursor_value.clone(),
                key: c.position.row_key.clone(),
                moved_at: c.updated_at.to_rfc3339(),
            });
            after = Some(c.position);
        }
        s.refused_by_reason = state.refused_by_reason(&model.name).await?;
        s.changed_since_delivery = state.changed_since_delivery(&model.name).await?;
        // A state schema not yet migrated to the quality tables has nothing to show.
        s.quality = state.latest_quality(&model.name).await.ok();
    }
    if let Some(w) = warehouse {
        let backlog =
            crate::source::model_backlog_with_expiry(w, model, after.as_ref(), expiring_within);
        match backlog.await {
            Ok(b) => {
                match &b.expiry {
                    Some(ExpiryCount::Counted(e)) => {
                        s.rows_expiring = Some(e.expiring);
                        s.rows_expired_waiting = Some(e.expired);
                        s.earliest_expiry = e.earliest.map(|t| t.to_rfc3339());
                    }
                    Some(ExpiryCount::Unknown(why)) => s.expiry_error = Some(why.clone()),
                    None => {}
                }
                s.waiting_rows = Some(b.rows);
                s.lag_seconds = if b.rows == 0 {
                    Some(0.0)
                } else {
                    b.oldest_age_secs.map(|a| a.max(0.0))
                };
                s.oldest_waiting = b.oldest;
                s.newest_waiting = b.newest;
            }
            Err(e) => s.backlog_error = Some(e.to_string()),
        }
    }
    Ok(s)
}

/// The first fire time after `last`'s start, when it has passed and `last` is not running.
pub fn due_since(
    model: &ModelConfig,
    last: &crate::state::RunRecord,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if !model.enabled || last.status == "running" {
        return None;
    }
    model
        .schedule
        .next_after(last.started_at)
        .filter(|t| *t <= now)
}

/// One run as `status --json` and `runs --json` show it.
pub fn run_json(r: &RunRecord) -> serde_json::Value {
    json!({
        "id": r.id,
        "trigger": r.trigger,
        "status": r.status,
        "started_at": r.started_at.to_rfc3339(),
        "scheduled_for": r.scheduled_for.map(|t| t.to_rfc3339()),
        // How late a scheduled run started after its fire time (waiting for a free run slot).
        "start_delay_seconds": r.scheduled_for.map(|t| {
            ((r.started_at - t).num_milliseconds().max(0) as f64) / 1000.0
        }),
        "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
        "rows_read": r.rows_read,
        "events_sent": r.events_sent,
        "rows_refused": r.rows_refused,
        "rows_already_sent": r.rows_already_sent,
        "refused_by_reason": r.refused_by_reason,
        // Events that carried each customer identifier (em, ph, fbp, …): the match keys.
        "coverage": r.coverage,
        // Rows the keyset reader never sees; null when the run did not count them.
        "unreadable_rows": match (r.rows_null_cursor, r.rows_null_key) {
            (Some(null_cursor), Some(null_key)) => json!({
                "null_cursor": null_cursor,
                "null_key": null_key,
            }),
            _ => serde_json::Value::Null,
        },
        "error": r.error,
    })
}
