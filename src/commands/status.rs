//! `capi-sync status [--json]`: per model, its schedule and next run, its last run, where its
//! cursor stands, how many rows wait and for how long, and what was refused.

use crate::config::{Config, ModelConfig};
use crate::source::Warehouse;
use crate::state::StateStore;
use chrono::{DateTime, Utc};
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
    pub refused_by_reason: BTreeMap<String, i64>,
    pub changed_since_delivery: i64,
}

pub async fn run(config: &Config, as_json: bool) -> anyhow::Result<super::Exit> {
    let state = super::read_only_state(config).await?;
    let warehouse = crate::app::connect_warehouse(config).await;
    let warehouse_error = warehouse.as_ref().err().map(crate::error_line::one_line);
    let now = Utc::now();
    let mut all = Vec::with_capacity(config.models.len());
    for model in &config.models {
        let wh = warehouse.as_ref().ok();
        let mut s = collect(wh, state.as_ref(), model, now).await?;
        if let (None, Some(e)) = (&s.backlog_error, &warehouse_error) {
            s.backlog_error = Some(e.clone());
        }
        all.push(s);
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "models": all }))?
        );
    } else {
        if state.is_none() {
            println!(
                "capi-sync has not run here yet: schema `{}` has no capi-sync tables",
                config.state.schema
            );
        }
        for s in &all {
            print!("{}", format_text(s, now));
        }
    }
    Ok(super::Exit::Ok)
}

/// Everything `status` shows for one model.
pub async fn collect(
    warehouse: Option<&Warehouse>,
    state: Option<&StateStore>,
    model: &ModelConfig,
    now: DateTime<Utc>,
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
        last_run: None,
        last_success_at: None,
        cursor: None,
        waiting_rows: None,
        lag_seconds: None,
        oldest_waiting: None,
        newest_waiting: None,
        backlog_error: None,
        refused_by_reason: BTreeMap::new(),
        changed_since_delivery: 0,
    };
    let mut after = None;
    if let Some(state) = state {
        s.last_run = state
            .recent_runs(&model.name, 1)
            .await?
            .first()
            .map(super::history::run_json);
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
    }
    if let Some(w) = warehouse {
        match super::model_backlog(w, model, after.as_ref()).await {
            Ok(b) => {
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

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ago",
        super::human_duration((now - t).num_milliseconds() as f64 / 1000.0)
    )
}

/// One summary line per model, then detail lines.
pub fn format_text(s: &ModelStatus, now: DateTime<Utc>) -> String {
    let mut headline = Vec::new();
    match &s.last_run {
        Some(r) => {
            let when = r["started_at"]
                .as_str()
                .and_then(parse)
                .map(|t| ago(t, now))
                .unwrap_or_default();
            headline.push(format!(
                "last run {} {when}",
                r["status"].as_str().unwrap_or("?")
            ));
        }
        None => headline.push("never run".into()),
    }
    match (s.waiting_rows, s.lag_seconds) {
        (Some(0), _) => headline.push("up to date".into()),
        (Some(n), Some(lag)) => headline.push(format!(
            "{} waiting, lag {}",
            super::rows(n),
            super::human_duration(lag)
        )),
        (Some(n), None) => headline.push(format!("{} waiting", super::rows(n))),
        (None, _) => headline.push("waiting rows unknown".into()),
    }
    if !s.enabled {
        headline.push("disabled".into());
    }
    let mut out = format!("{}: {}\n", s.model, headline.join("; "));
    let next = match (&s.next_run, s.enabled) {
        (_, false) => "not scheduled (enabled = false)".to_string(),
        (Some(n), true) => match parse(n) {
            Some(t) => format!(
                "next {} (in {})",
                super::utc(t),
                super::human_duration((t - now).num_milliseconds() as f64 / 1000.0)
            ),
            None => n.clone(),
        },
        (None, true) => "the schedule has no future fire time".into(),
    };
    out.push_str(&format!("  schedule:  {}, {next}\n", s.schedule));
    if let Some(r) = &s.last_run {
        let started = r["started_at"]
            .as_str()
            .and_then(parse)
            .map(super::utc)
            .unwrap_or_default();
        out.push_str(&format!(
            "  last run:  #{} {} at {started} ({}): {} read, {} events sent, {} refused, {} already sent\n",
            r["id"],
            r["status"].as_str().unwrap_or("?"),
            r["trigger"].as_str().unwrap_or("?"),
            super::rows(r["rows_read"].as_i64().unwrap_or(0)),
            super::group_digits(r["events_sent"].as_i64().unwrap_or(0)),
            super::group_digits(r["rows_refused"].as_i64().unwrap_or(0)),
            super::group_digits(r["rows_already_sent"].as_i64().unwrap_or(0)),
        ));
        if let Some(e) = r["error"].as_str().filter(|_| r["status"] != "succeeded") {
            out.push_str(&format!("             error: {e}\n"));
        }
        if r["status"] != "succeeded" {
            if let Some(ok) = s.last_success_at.as_deref().and_then(parse) {
                out.push_str(&format!(
                    "             last success {} ({})\n",
                    super::utc(ok),
                    ago(ok, now)
                ));
            }
        }
    }
    match &s.cursor {
        Some(c) => out.push_str(&format!(
            "  cursor:    {} / key {} (moved {})\n",
            c.value,
            c.key.join(", "),
            parse(&c.moved_at).map(|t| ago(t, now)).unwrap_or_default()
        )),
        None => out.push_str("  cursor:    none; the next run reads from the first row\n"),
    }
    match (&s.backlog_error, s.waiting_rows) {
        (Some(e), _) => out.push_str(&format!("  waiting:   unknown: {e}\n")),
        (None, Some(0)) => out.push_str("  waiting:   no rows after the cursor\n"),
        (None, Some(n)) => {
            let lag = match s.lag_seconds {
                Some(l) => format!(", the oldest for {}", super::human_duration(l)),
                None => " (the cursor is not a time, so there is no lag to show)".into(),
            };
            out.push_str(&format!(
                "  waiting:   {} after the cursor{lag} (cursor values {} to {})\n",
                super::rows(n),
                s.oldest_waiting.as_deref().unwrap_or("?"),
                s.newest_waiting.as_deref().unwrap_or("?")
            ));
        }
        (None, None) => {}
    }
    if let Some(u) = s.last_run.as_ref().map(|r| &r["unreadable_rows"]) {
        let (cursor, key) = (
            u["null_cursor"].as_i64().unwrap_or(0),
            u["null_key"].as_i64().unwrap_or(0),
        );
        if cursor + key > 0 {
            out.push_str(&format!(
                "  unreadable: {} with a NULL cursor, {} with a NULL in the primary key, counted by the last run; never read or sent (fix the model's SQL)\n",
                super::rows(cursor),
                super::group_digits(key)
            ));
        }
    }
    if !s.refused_by_reason.is_empty() {
        let parts: Vec<String> = s
            .refused_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {}", super::group_digits(*v)))
            .collect();
        out.push_str(&format!(
            "  refused:   {} (`capi-sync refused {}` lists them)\n",
            parts.join(", "),
            s.model
        ));
    }
    if s.changed_since_delivery > 0 {
        out.push_str(&format!(
            "  changed:   {} delivered events whose row changed since; not re-sent (Meta cannot update an event)\n",
            super::group_digits(s.changed_since_delivery)
        ));
    }
    out
}
