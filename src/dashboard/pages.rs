//! The pages as HTML: the layout, the overview (one row per model), a model's page and the
//! error pages. maud escapes every value it inserts. Pages show keys, ids, counts, reasons and
//! times only: never a row's values (a refused row is shown by its key, event id and reason,
//! without the detail text).

use super::chart::{lag_chart, runs_chart, share_bar};
use super::view::{ModelView, RunView};
use crate::state::RefusedRow;
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

const STYLE: &str = include_str!("dashboard.css");
const SCRIPT: &str = include_str!("dashboard.js");

/// Seconds between the script's refreshes of `<main>`.
pub const REFRESH_SECS: u32 = 5;

/// A whole page: `main` is what the script swaps on each refresh.
pub fn layout(title: &str, nonce: &str, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · capi-sync" }
                style nonce=(nonce) { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a class="brand" href="/" { "capi-sync" }
                    span class="sub" { "warehouse → Meta Conversions API" }
                }
                (main)
                footer {
                    "Refreshes every " (REFRESH_SECS) " s when JavaScript is on. "
                    "Same figures as " code { "capi-sync status --json" } "."
                }
                script nonce=(nonce) data-refresh=(REFRESH_SECS) { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// A time as `<time datetime=…>`, shown in UTC, with how long ago or ahead it is.
fn time(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    let secs = (now - t).num_milliseconds() as f64 / 1000.0;
    let rel = if secs >= 0.0 {
        format!("{} ago", crate::human::human_duration(secs))
    } else {
        format!("in {}", crate::human::human_duration(-secs))
    };
    html! {
        time datetime=(t.to_rfc3339()) title=(crate::human::utc(t)) { (rel) }
    }
}

fn updated(now: DateTime<Utc>) -> Markup {
    html! {
        p class="updated" { "As of " time datetime=(now.to_rfc3339()) { (crate::human::utc(now)) } }
    }
}

/// Counts by reason as a list, each with its reason code and count in attributes.
fn reasons(by_reason: &std::collections::BTreeMap<String, i64>) -> Markup {
    html! {
        @if by_reason.is_empty() {
            span class="none" { "none" }
        } @else {
            ul class="reasons" {
                @for (reason, n) in by_reason {
                    li data-reason=(reason) data-count=(n) { code { (reason) } " " data value=(n) { (n) } }
                }
            }
        }
    }
}

fn state_badge(v: &ModelView) -> Markup {
    html! { span class=(format!("state state-{}", v.state.as_str())) data-field="state" { (v.state.as_str()) } }
}

fn last_run_cell(r: &RunView, now: DateTime<Utc>) -> Markup {
    html! {
        div { span class=(format!("status status-{}", r.status)) { (r.status) } " "
              @if let Some(t) = r.started_at { (time(t, now)) } }
        div class="small" {
            data data-field="rows_read" value=(r.rows_read) { (r.rows_read) } " read · "
            data data-field="events_sent" value=(r.events_sent) { (r.events_sent) } " sent · "
            data data-field="rows_refused" value=(r.rows_refused) { (r.rows_refused) } " refused"
        }
        @if !r.refused_by_reason.is_empty() {
            div class="small" data-field="last_refused" { (reasons(&r.refused_by_reason)) }
        }
        @if let Some(e) = &r.error { div class="error small" { (e) } }
    }
}

fn coverage_cell(r: Option<&RunView>) -> Markup {
    let shares = r.map(RunView::coverage_shares).unwrap_or_default();
    html! {
        @if shares.is_empty() { span class="none" { "–" } }
        @for (key, share) in &shares { (share_bar(key, *share)) }
    }
}

fn lag(v: &ModelView) -> Markup {
    html! {
        @match v.lag_seconds {
            Some(s) => span data-field="lag_seconds" data-value=(s) { (crate::human::human_duration(s)) },
            None => span class="none" { "–" },
        }
    }
}

fn waiting(v: &ModelView) -> Markup {
    html! {
        @match v.waiting_rows {
            Some(n) => data data-field="waiting_rows" value=(n) { (n) },
            None => span class="none" title=[v.backlog_error.as_deref()] { "unknown" },
        }
    }
}

/// The overview: one row per model. The optional columns (rows about to expire, Meta's
/// match quality) appear only when some model has their figures.
pub fn overview(models: &[ModelView], now: DateTime<Utc>) -> Markup {
    let show_expiry = models.iter().any(|m| m.expiry.is_some());
    let show_quality = models.iter().any(|m| m.quality.is_some());
    html! {
        main id="main" {
            h1 { "Models" }
            (updated(now))
            div class="scroll" {
                table class="models" {
                    caption { (models.len()) @if models.len() == 1 { " model" } @else { " models" } }
                    thead { tr {
                        th scope="col" { "Model" }
                        th scope="col" { "State" }
                        th scope="col" { "Schedule" }
                        th scope="col" { "Last run" }
                        th scope="col" { "Waiting" }
                        th scope="col" { "Lag" }
                        th scope="col" { "Refused on record" }
                        th scope="col" { "Match keys (last run)" }
                        @if show_expiry { th scope="col" { "About to expire" } }
                        @if show_quality { th scope="col" { "Match quality" } }
                    } }
                    tbody {
                        @for m in models {
                            tr data-model=(m.name) {
                                th scope="row" { a href=(format!("/models/{}", m.name)) { (m.name) } }
                                td { (state_badge(m)) }
                                td {
                                    code { (m.schedule) }
                                    @if let Some(t) = m.next_run { div class="small" { "next " (time(t, now)) } }
                                    @if let Some(t) = m.due_since { div class="small warn" { "due since " (time(t, now)) } }
                                }
                                td { @match &m.last_run { Some(r) => (last_run_cell(r, now)), None => span class="none" { "never run" } } }
                                td class="num" { (waiting(m)) }
                                td class="num" { (lag(m)) }
                                td data-field="refused_by_reason" { (reasons(&m.refused_by_reason)) }
                                td { (coverage_cell(m.last_run.as_ref())) }
                                @if show_expiry { td { @if let Some(e) = &m.expiry {
                                    data data-field="rows_expiring" value=(e.rows_expiring) { (e.rows_expiring) } @if e.rows_expiring == 1 { " row" } @else { " rows" }
                                    @if e.rows_expired_waiting > 0 { div class="small warn" { data data-field="rows_expired_waiting" value=(e.rows_expired_waiting) { (e.rows_expired_waiting) } " already too old" } }
                                    @else { data data-field="rows_expired_waiting" value="0" hidden {} }
                                    @if let Some(t) = e.earliest_expiry { div class="small" { "first " (time(t, now)) } }
                                } } }
                                @if show_quality { td { @if let Some(q) = &m.quality {
                                    (q.score) @if let Some(t) = q.measured_at { div class="small" { (time(t, now)) } }
                                } } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What a model's page shows besides its status.
pub struct ModelPage<'a> {
    pub view: &'a ModelView,
    /// Newest first.
    pub runs: &'a [RunView],
    pub refused: &'a [(RefusedRow, DateTime<Utc>)],
    pub ledger_events: i64,
    pub ledger_last: Option<DateTime<Utc>>,
    /// The lag as this service measured it, oldest first.
    pub lag: Vec<(DateTime<Utc>, f64)>,
    /// Whether the actions are on (`service.admin_token` is set).
    pub actions: bool,
}

pub fn model(p: &ModelPage<'_>, now: DateTime<Utc>) -> Markup {
    let v = p.view;
    html! {
        main id="main" {
            nav class="crumbs" { a href="/" { "Models" } " / " }
            h1 { (v.name) " " (state_badge(v)) }
            (updated(now))
            @if p.actions {
                section class="actions" aria-label="Actions" {
                    button type="button" data-action=(format!("/models/{}/run", v.name)) { "Run now" }
                    button type="button" data-action=(format!("/models/{}/retry", v.name)) { "Retry refused rows" }
                    output class="small" id="action-result" {}
                }
            }
            section {
                h2 { "Now" }
                dl class="facts" {
                    dt { "Schedule" } dd { code { (v.schedule) } @if let Some(t) = v.next_run { ", next " (time(t, now)) } }
                    dt { "Rows waiting" } dd { (waiting(v)) }
                    dt { "Lag" } dd { (lag(v)) }
                    dt { "Cursor" } dd {
                        @match &v.cursor {
                            Some(c) => { code data-field="cursor" { (c.value) } " at key " code { (c.key.join(", ")) }
                                @if let Ok(t) = DateTime::parse_from_rfc3339(&c.moved_at) { ", moved " (time(t.with_timezone(&Utc), now)) } }
                            None => span class="none" { "not set: the next run reads from the start" },
                        }
                    }
                    dt { "Delivery ledger" } dd {
                        data data-field="ledger_events" value=(p.ledger_events) { (p.ledger_events) } " events"
                        @if let Some(t) = p.ledger_last { ", last " (time(t, now)) }
                        @if v.changed_since_delivery > 0 { ", " (v.changed_since_delivery) " changed since delivery" }
                    }
                    dt { "Refused on record" } dd data-field="refused_by_reason" { (reasons(&v.refused_by_reason)) }
                }
            }
            section {
                h2 { "Runs" }
                @if p.runs.is_empty() {
                    p class="none" { "No runs yet." }
                } @else {
                    figure {
                        (runs_chart(p.runs))
                        figcaption class="small" {
                            span class="key key-sent" {} " events sent  "
                            span class="key key-refused" {} " rows refused  · a dot marks a failed run"
                        }
                    }
                    div class="scroll" {
                        table {
                            caption { @if p.runs.len() == 1 { "The last run" } @else { "The last " (p.runs.len()) " runs" } }
                            thead { tr {
                                th scope="col" { "Run" } th scope="col" { "Started" } th scope="col" { "Trigger" }
                                th scope="col" { "Status" } th scope="col" { "Read" } th scope="col" { "Sent" }
                                th scope="col" { "Refused" } th scope="col" { "Error" }
                            } }
                            tbody {
                                @for r in p.runs.iter().take(20) {
                                    tr data-run=(r.id) {
                                        th scope="row" { (r.id) }
                                        td { @if let Some(t) = r.started_at { (time(t, now)) } }
                                        td { (r.trigger) }
                                        td { span class=(format!("status status-{}", r.status)) { (r.status) } }
                                        td class="num" { (r.rows_read) }
                                        td class="num" { (r.events_sent) }
                                        td class="num" { (r.rows_refused) }
                                        td class="small" { @if let Some(e) = &r.error { (e) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Lag" }
                @if p.lag.len() < 2 {
                    p class="none" { "This service measures the lag after each run and every minute; the line appears after two measurements." }
                } @else {
                    figure {
                        (lag_chart(&p.lag))
                        figcaption class="small" { "Age of the oldest row waiting, as this service measured it since it started." }
                    }
                }
            }
            section {
                h2 { "Latest refused rows" }
                @if p.refused.is_empty() {
                    p class="none" { "No refused rows on record." }
                } @else {
                    div class="scroll" {
                        table class="refused" {
                            caption { "The " (p.refused.len()) " most recent; " code { "capi-sync refused " (v.name) } " lists them all" }
                            thead { tr {
                                th scope="col" { "Row key" } th scope="col" { "Event id" }
                                th scope="col" { "Reason" } th scope="col" { "Refused" }
                            } }
                            tbody {
                                @for (row, at) in p.refused {
                                    tr data-row-key=(row.row_key.join(",")) {
                                        th scope="row" { code { (row.row_key.join(", ")) } }
                                        td { code { (row.event_id.as_deref().unwrap_or("–")) } }
                                        td { code { (row.reason) } }
                                        td { (time(*at, now)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A page for a status other than 200 (404: no such model or page).
pub fn problem(heading: &str, text: &str) -> Markup {
    html! {
        main id="main" {
            h1 { (heading) }
            p { (text) }
            p { a href="/" { "All models" } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::view::ModelState;
    use std::collections::BTreeMap;

    fn view(error: &str) -> ModelView {
        ModelView {
            name: "leads".into(),
            state: ModelState::Failing,
            schedule: "*/5 * * * *".into(),
            next_run: None,
            due_since: None,
            last_run: Some(RunView {
                id: 1,
                trigger: "schedule".into(),
                status: "failed".into(),
                started_at: None,
                finished_at: None,
                rows_read: 0,
                events_sent: 0,
                rows_refused: 0,
                refused_by_reason: BTreeMap::new(),
                coverage: BTreeMap::new(),
                error: Some(error.into()),
            }),
            waiting_rows: None,
            lag_seconds: None,
            backlog_error: None,
            refused_by_reason: BTreeMap::new(),
            changed_since_delivery: 0,
            cursor: None,
            expiry: None,
            quality: None,
        }
    }

    #[test]
    fn text_from_the_tables_is_escaped() {
        let html = overview(&[view("<img src=x onerror=alert(1)>")], Utc::now()).into_string();
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("<img"), "{html}");
    }

    #[test]
    fn the_expiry_and_quality_columns_show_only_with_their_figures() {
        let plain = overview(&[view("x")], Utc::now()).into_string();
        assert!(!plain.contains("About to expire") && !plain.contains("Match quality"));
        let mut v = view("x");
        v.expiry = Some(crate::dashboard::view::ExpiryView {
            rows_expiring: 4,
            rows_expired_waiting: 0,
            earliest_expiry: None,
        });
        let with = overview(&[v], Utc::now()).into_string();
        assert!(with.contains("About to expire"), "{with}");
        assert!(
            with.contains("<data data-field=\"rows_expiring\" value=\"4\">4</data> rows"),
            "{with}"
        );
    }
}
