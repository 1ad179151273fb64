//! `capi-sync status [--json]`: per model, its schedule and next run, its last run, where its
//! cursor stands, how many rows wait and for how long, and what was refused. The figures are
//! gathered by `crate::report`.

use crate::config::Config;
pub use crate::report::{collect, CursorStatus, ModelStatus};
use chrono::{DateTime, Utc};

pub async fn run(config: &Config, as_json: bool) -> anyhow::Result<super::Exit> {
    let state = super::read_only_state(config).await?;
    let warehouse = crate::app::connect_warehouse(config).await;
    let warehouse_error = warehouse.as_ref().err().map(crate::error_line::one_line);
    let now = Utc::now();
    let mut all = Vec::with_capacity(config.models.len());
    for model in &config.models {
        let wh = warehouse.as_ref().ok();
        let horizon = config.service.expiring_within;
        let mut s = collect(wh, state.as_ref(), model, now, horizon).await?;
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
        let due = all.iter().filter(|s| s.due_since.is_some()).count();
        if due > 0 {
            println!(
                "{due} of {} models due and not started (runs waiting; `/metrics` of the service shows capi_sync_runs_waiting)",
                all.len()
            );
        }
    }
    Ok(super::Exit::Ok)
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
    let within = super::setting_duration(s.expiring_within_seconds);
    match (s.rows_expiring, s.rows_expired_waiting) {
        (Some(n), _) if n > 0 => headline.push(format!(
            "{} leaving Meta's window within {within}",
            super::rows(n)
        )),
        (_, Some(n)) if n > 0 => headline.push(format!("{} outside Meta's window", super::rows(n))),
        _ => {}
    }
    if !s.enabled {
        headline.push("disabled".into());
    }
    if s.due_since.is_some() {
        headline.push("due, not started".into());
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
        if let Some(delay) = r["start_delay_seconds"].as_f64() {
            let due = r["scheduled_for"]
                .as_str()
                .and_then(parse)
                .map(super::utc)
                .unwrap_or_default();
            out.push_str(&format!(
                "             started {} after its fire time {due}{}\n",
                super::human_duration(delay),
                if delay >= 5.0 {
                    " (it waited for a free run slot: service.max_concurrent_runs)"
                } else {
                    ""
                }
            ));
        }
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
    if let Some(due) = s.due_since.as_deref().and_then(parse) {
        out.push_str(&format!(
            "  due:       since {} ({}), not started: waiting for a free run slot (service.max_concurrent_runs), or no `capi-sync run` is running\n",
            super::utc(due),
            ago(due, now)
        ));
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
    if s.backlog_error.is_none() {
        if let Some(line) = expiry_line(s, now) {
            out.push_str(&format!("  expiring:  {line}\n"));
        }
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
    if let Some(q) = &s.quality {
        out.push_str(&super::quality::format_status(q));
    }
    out
}

/// The rows waiting that leave Meta's window soon or have left it; None when none does.
fn expiry_line(s: &ModelStatus, now: DateTime<Utc>) -> Option<String> {
    if let Some(why) = &s.expiry_error {
        return Some(format!("unknown: {why}"));
    }
    let (expiring, expired) = (s.rows_expiring?, s.rows_expired_waiting?);
    let mut parts = Vec::new();
    if expiring > 0 {
        let first = match s.earliest_expiry.as_deref().and_then(parse) {
            Some(t) => format!(
                ", the first at {} (in {})",
                super::utc(t),
                super::human_duration((t - now).num_milliseconds() as f64 / 1000.0)
            ),
            None => String::new(),
        };
        let leave = if expiring == 1 {
            "1 row leaves".to_string()
        } else {
            format!("{} leave", super::rows(expiring))
        };
        let next = s.next_run.as_deref().and_then(parse);
        let first_at = s.earliest_expiry.as_deref().and_then(parse);
        let when = match (next, first_at) {
            (Some(n), Some(f)) if n > f => format!(
                "the next scheduled run, at {}, comes after the first leaves: run `capi-sync sync {}` before then",
                super::utc(n),
                s.model
            ),
            (None, _) if s.enabled => format!(
                "no run is scheduled: run `capi-sync sync {}` before then",
                s.model
            ),
            _ => "the next run must send them before then".into(),
        };
        parts.push(format!(
            "{leave} Meta's window within {}{first}; {when}",
            super::setting_duration(s.expiring_within_seconds)
        ));
    }
    if expired > 0 {
        parts.push(format!(
            "{} already outside Meta's window (7 days; 62 for physical_store): the next run refuses {} (event_time_too_old)",
            crate::human::rows_are(expired),
            if expired == 1 { "it" } else { "them" }
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::report::due_since;
    use std::collections::BTreeMap;

    fn at(t: &str) -> DateTime<Utc> {
        parse(t).unwrap()
    }

    fn model(schedule: &str) -> ModelConfig {
        let text = format!(
            r#"
[warehouse]
url = "postgres://localhost/w"
[meta]
access_token = "t"
[[models]]
name = "leads"
pixel_id = "123456789012345"
schedule = "{schedule}"
sql = "SELECT id, updated_at FROM crm.leads"
primary_key = "id"
cursor = "updated_at"
[models.constants]
event_name = "Lead"
action_source = "crm"
"#
        );
        Config::from_toml_str(&text, std::path::Path::new("."))
            .unwrap()
            .models
            .remove(0)
    }

    fn run(status: &str, started: &str, scheduled: Option<&str>) -> crate::state::RunRecord {
        crate::state::RunRecord {
            id: 7,
            model: "leads".into(),
            trigger: "schedule".into(),
            started_at: at(started),
            scheduled_for: scheduled.map(at),
            finished_at: None,
            status: status.into(),
            rows_read: 0,
            events_sent: 0,
            rows_refused: 0,
            rows_already_sent: 0,
            refused_by_reason: serde_json::json!({}),
            coverage: serde_json::json!({}),
            error: None,
            rows_null_cursor: None,
            rows_null_key: None,
        }
    }

    #[test]
    fn a_model_whose_schedule_fired_since_its_last_start_is_due() {
        let m = model("*/5 * * * *");
        let last = run("succeeded", "2026-03-01T12:00:03Z", None);
        assert_eq!(due_since(&m, &last, at("2026-03-01T12:04:59Z")), None);
        assert_eq!(
            due_since(&m, &last, at("2026-03-01T12:07:00Z")),
            Some(at("2026-03-01T12:05:00Z"))
        );
        let going = run("running", "2026-03-01T12:00:03Z", None);
        assert_eq!(
            due_since(&m, &going, at("2026-03-01T12:07:00Z")),
            None,
            "a running model is not waiting"
        );
    }

    #[test]
    fn status_text_shows_the_start_delay_and_a_run_waiting() {
        let m = model("* * * * *");
        let now = at("2026-03-01T12:03:30Z");
        let last = run(
            "succeeded",
            "2026-03-01T12:01:40Z",
            Some("2026-03-01T12:01:00Z"),
        );
        let s = ModelStatus {
            model: m.name.clone(),
            enabled: true,
            schedule: m.schedule.expression.clone(),
            next_run: None,
            due_since: due_since(&m, &last, now).map(|t| t.to_rfc3339()),
            last_run: Some(crate::report::run_json(&last)),
            last_success_at: None,
            cursor: None,
            waiting_rows: Some(0),
            lag_seconds: Some(0.0),
            oldest_waiting: None,
            newest_waiting: None,
            backlog_error: None,
            rows_expiring: Some(0),
            rows_expired_waiting: Some(0),
            earliest_expiry: None,
            expiring_within_seconds: 86_400,
            expiry_error: None,
            refused_by_reason: BTreeMap::new(),
            changed_since_delivery: 0,
            quality: None,
        };
        assert_eq!(s.last_run.as_ref().unwrap()["start_delay_seconds"], 40.0);
        let text = format_text(&s, now);
        assert!(text.contains("due, not started"), "{text}");
        assert!(
            text.contains("started 40s after its fire time 2026-03-01 12:01:00 UTC (it waited for a free run slot"),
            "{text}"
        );
        assert!(
            text.contains("due:       since 2026-03-01 12:02:00 UTC (1m 30s ago), not started"),
            "{text}"
        );
    }

    #[test]
    fn status_text_says_when_the_next_run_comes_after_rows_leave_metas_window() {
        let m = model("0 0 1 1 *");
        let now = at("2026-12-06T12:00:00Z");
        let s = ModelStatus {
            model: m.name.clone(),
            enabled: true,
            schedule: m.schedule.expression.clone(),
            next_run: Some("2027-01-01T00:00:00+00:00".into()),
            due_since: None,
            last_run: None,
            last_success_at: None,
            cursor: None,
            waiting_rows: Some(4),
            lag_seconds: Some(60.0),
            oldest_waiting: None,
            newest_waiting: None,
            backlog_error: None,
            rows_expiring: Some(3),
            rows_expired_waiting: Some(1),
            earliest_expiry: Some("2026-12-07T00:00:00+00:00".into()),
            expiring_within_seconds: 86_400,
            expiry_error: None,
            refused_by_reason: BTreeMap::new(),
            changed_since_delivery: 0,
            quality: None,
        };
        let text = format_text(&s, now);
        assert!(
            text.contains("leads: never run; 4 rows waiting, lag 1m 0s; 3 rows leaving Meta's window within 24h\n"),
            "{text}"
        );
        assert!(
            text.contains("  expiring:  3 rows leave Meta's window within 24h, the first at 2026-12-07 00:00:00 UTC (in 12h 0m); the next scheduled run, at 2027-01-01 00:00:00 UTC, comes after the first leaves: run `capi-sync sync leads` before then; 1 row is already outside Meta's window"),
            "{text}"
        );
    }
}
