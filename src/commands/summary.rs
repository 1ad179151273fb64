//! The summary of a run as `sync`, `retry` and `demo` print it: one line per model, plus
//! detail lines for refusals, unreadable rows, dropped values and match-key coverage.

use crate::pipeline::{RunStatus, RunSummary};

/// One summary line per model, plus detail lines for refusals, drops and coverage.
pub fn format_summary(s: &RunSummary, dry_run: bool) -> String {
    let c = &s.counters;
    let sent_word = if dry_run {
        "events would be sent"
    } else {
        "events sent"
    };
    let mut out = format!(
        "{}: {} — {} rows read, {} {sent_word}, {} refused, {} already sent ({:.1}s)",
        s.model,
        s.status.as_str(),
        c.rows_read,
        c.events_sent,
        c.rows_refused,
        c.rows_already_sent,
        s.elapsed.as_secs_f64()
    );
    if !c.refused_by_reason.is_empty() {
        let parts: Vec<String> = c
            .refused_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("\n  refused: {}", parts.join(", ")));
    }
    if let (Some(cursor), Some(key)) = (c.rows_null_cursor, c.rows_null_key) {
        if cursor + key > 0 {
            out.push_str(&format!(
                "\n  unreadable: {cursor} rows with a NULL cursor, {key} with a NULL in the primary key; never read or sent (`capi-sync check {}` counts them)",
                s.model
            ));
        }
    }
    if !c.dropped_by_field.is_empty() {
        let parts: Vec<String> = c
            .dropped_by_field
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!(
            "\n  values dropped (field:reason): {}",
            parts.join(", ")
        ));
    }
    if c.events_sent > 0 && !c.coverage.is_empty() {
        let parts: Vec<String> = crate::mapping::event::IDENTIFIER_NAMES
            .iter()
            .filter_map(|k| {
                c.coverage
                    .get(*k)
                    .map(|v| format!("{k} {:.0}%", 100.0 * *v as f64 / c.events_sent as f64))
            })
            .collect();
        out.push_str(&format!(
            "\n  match keys (share of events): {}",
            parts.join(", ")
        ));
    }
    if let Some(e) = &s.error {
        if s.status != RunStatus::Succeeded {
            out.push_str(&format!("\n  error: {e}"));
        }
    }
    if dry_run {
        out.push_str("\n  dry run: nothing was sent, no cursor moved, no run was recorded");
    }
    out
}
