//! `capi-sync runs MODEL` and `capi-sync refused MODEL`: recent run history and the rows we
//! did not send. Row keys, event ids, counts, reasons and details only — never a customer value.

use crate::config::Config;
use crate::report::run_json;
use crate::state::{RefusedRow, RunRecord};
use serde_json::json;

pub async fn runs(
    config: &Config,
    model: &str,
    limit: i64,
    as_json: bool,
) -> anyhow::Result<super::Exit> {
    let model = super::model_named(config, model)?;
    let records = match super::read_only_state(config).await? {
        Some(state) => state.recent_runs(&model.name, limit.max(1)).await?,
        None => Vec::new(),
    };
    if as_json {
        let list: Vec<serde_json::Value> = records.iter().map(run_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "model": model.name, "runs": list }))?
        );
    } else {
        print!("{}", format_runs(&model.name, &records));
    }
    Ok(super::Exit::Ok)
}

/// A table, newest run first, with the refusals and error of each run below it.
pub fn format_runs(model: &str, records: &[RunRecord]) -> String {
    if records.is_empty() {
        return format!("{model}: no runs yet (`capi-sync sync {model}` runs it now)\n");
    }
    let header = [
        "RUN", "STARTED", "TOOK", "STATUS", "TRIGGER", "ROWS", "EVENTS", "REFUSED", "ALREADY",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                super::utc(r.started_at),
                r.finished_at
                    .map(|f| took((f - r.started_at).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_else(|| "running".into()),
                r.status.clone(),
                r.trigger.clone(),
                super::group_digits(r.rows_read),
                super::group_digits(r.events_sent),
                super::group_digits(r.rows_refused),
                super::group_digits(r.rows_already_sent),
            ]
        })
        .collect();
    let mut out = format!(
        "{model}: the last {}\n",
        super::rows(records.len() as i64).replace("row", "run")
    );
    let widths = widths(&header, &rows);
    out.push_str(&line(&header.map(String::from), &widths));
    for (r, cells) in records.iter().zip(&rows) {
        out.push_str(&line(cells, &widths));
        if let Some(obj) = r.refused_by_reason.as_object().filter(|o| !o.is_empty()) {
            let parts: Vec<String> = obj.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("    refused: {}\n", parts.join(", ")));
        }
        if let Some(e) = r.error.as_deref().filter(|_| r.status != "succeeded") {
            out.push_str(&format!("    error: {e}\n"));
        }
    }
    out
}

pub async fn refused(
    config: &Config,
    model: &str,
    limit: i64,
    as_json: bool,
) -> anyhow::Result<super::Exit> {
    let model = super::model_named(config, model)?;
    let (rows, by_reason) = match super::read_only_state(config).await? {
        Some(state) => (
            state.refused_rows(&model.name, limit.max(1)).await?,
            state.refused_by_reason(&model.name).await?,
        ),
        None => Default::default(),
    };
    if as_json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, at)| {
                json!({
                    "key": r.row_key,
                    "event_id": r.event_id,
                    "reason": r.reason,
                    "detail": r.detail,
                    "meta_code": r.meta_code,
                    "meta_subcode": r.meta_subcode,
                    "cursor": r.cursor_value,
                    "refused_at": at.to_rfc3339(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": model.name,
                "total_by_reason": by_reason,
                "rows": list,
            }))?
        );
    } else {
        print!("{}", format_refused(&model.name, &rows, &by_reason));
    }
    Ok(super::Exit::Ok)
}

pub fn format_refused(
    model: &str,
    rows: &[(RefusedRow, chrono::DateTime<chrono::Utc>)],
    by_reason: &std::collections::BTreeMap<String, i64>,
) -> String {
    let total: i64 = by_reason.values().sum();
    if total == 0 {
        return format!("{model}: no refused rows on record\n");
    }
    let reasons: Vec<String> = by_reason
        .iter()
        .map(|(k, v)| format!("{k} {}", super::group_digits(*v)))
        .collect();
    let mut out = format!(
        "{model}: {} refused on record ({}); the latest {}:\n",
        super::rows(total),
        reasons.join(", "),
        rows.len()
    );
    let header = ["KEY", "EVENT ID", "REASON", "REFUSED AT", "DETAIL"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(r, at)| {
            vec![
                r.row_key.join(", "),
                r.event_id.clone().unwrap_or_else(|| "-".into()),
                r.reason.clone(),
                super::utc(*at),
                r.detail.clone(),
            ]
        })
        .collect();
    let widths = widths(&header, &cells);
    out.push_str(&line(&header.map(String::from), &widths));
    for c in &cells {
        out.push_str(&line(c, &widths));
    }
    out
}

/// "0.4s" for short runs, "3m 10s" for longer ones.
fn took(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        super::human_duration(secs)
    }
}

fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(h.len()))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Cells padded to their column's width; the last cell is not padded.
fn line(cells: &[String], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i + 1 == cells.len() {
            out.push_str(c);
        } else {
            out.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
    }
    out.push('\n');
    out
}
