//! `capi-sync preview MODEL [--limit N] [--json]`: the next N rows a run would read, mapped
//! exactly as they would be sent (customer fields hashed), or why each would be refused.
//! Nothing is sent and nothing is written.

use crate::config::{Config, ModelConfig};
use crate::mapping::ModelPlan;
use crate::source::{LowerBound, ReadRange, SourceRow, Warehouse};
use crate::state::{CursorPosition, StateStore};
use anyhow::Context;
use std::collections::{HashMap, HashSet};
use tokio::sync::mpsc;

/// What the next run would do with one row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RowPreview {
    /// Sent as this event.
    Send {
        key: Vec<String>,
        cursor: String,
        event_id: String,
        event: serde_json::Value,
        /// The event exactly as it goes in the request body.
        #[serde(skip)]
        raw: String,
        dropped: Vec<String>,
    },
    /// Already in the delivery ledger: not sent again.
    AlreadySent {
        key: Vec<String>,
        cursor: String,
        event_id: String,
        changed: bool,
    },
    Refused {
        key: Vec<String>,
        cursor: String,
        event_id: Option<String>,
        reason: String,
        detail: String,
        dropped: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Preview {
    pub model: String,
    /// The cursor the rows come after (None: from the first row).
    pub after: Option<String>,
    pub rows: Vec<RowPreview>,
}

pub async fn run(
    config: &Config,
    model: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<super::Exit> {
    let model = super::model_named(config, model)?;
    let warehouse = crate::app::connect_warehouse(config).await?;
    let state = super::read_only_state(config).await?;
    let preview = match build(&warehouse, state.as_ref(), model, limit).await? {
        Ok(p) => p,
        Err(problems) => {
            eprintln!(
                "capi-sync: model `{}` cannot be previewed until its columns map to events:",
                model.name
            );
            for p in problems {
                eprintln!("  {p}");
            }
            eprintln!("run `capi-sync check {}` for every finding", model.name);
            return Ok(super::Exit::BadConfig);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&preview)?);
    } else {
        print!("{}", format_text(&preview, limit));
    }
    Ok(super::Exit::Ok)
}

/// Reads up to `limit` rows after the model's cursor and maps them. The outer error is a
/// failure to read; the inner one lists the model's column problems.
pub async fn build(
    warehouse: &Warehouse,
    state: Option<&StateStore>,
    model: &ModelConfig,
    limit: usize,
) -> anyhow::Result<Result<Preview, Vec<String>>> {
    let limit = limit.clamp(1, 10_000);
    // Pages of `limit` rows: the first page is all a preview needs.
    let mut paged = model.clone();
    paged.page_size = limit as u32;
    let (query, columns) = warehouse
        .describe(&paged)
        .await
        .with_context(|| format!("check the model's SQL ({})", model.sql_origin))?;
    let plan = match ModelPlan::new(model, &columns) {
        Ok(p) => p,
        Err(problems) => return Ok(Err(problems.iter().map(|p| p.to_string()).collect())),
    };
    let after: Option<CursorPosition> = match state {
        Some(s) => s.cursor(&model.name).await?,
        None => None,
    };

    let (tx, mut rx) = mpsc::channel::<Vec<SourceRow>>(1);
    let reader_wh = warehouse.clone();
    let reader_query = query.clone();
    let reader_after = after.clone();
    let range = ReadRange {
        lower: match reader_after {
            Some(p) => LowerBound::After(p),
            None => LowerBound::Beginning,
        },
        upper: None,
        reread: false,
    };
    let reader = tokio::spawn(async move {
        reader_wh
            .stream_rows(&reader_query, vec![range], tx, limit)
            .await
    });
    let mut rows: Vec<SourceRow> = Vec::with_capacity(limit);
    while rows.len() < limit {
        match rx.recv().await {
            Some(chunk) => rows.extend(chunk),
            None => break,
        }
    }
    rows.truncate(limit);
    drop(rx);
    match reader.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(e).with_context(|| format!("check the model's SQL ({})", model.sql_origin))
        }
        Err(e) => anyhow::bail!("the warehouse reader stopped: {e}"),
    }

    let now = chrono::Utc::now().timestamp();
    let outcomes: Vec<_> = rows
        .iter()
        .map(|r| plan.map_row(&r.values, &r.key, now))
        .collect();
    let ids: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok().map(|e| e.event_id.clone()))
        .collect();
    let ledger: HashMap<String, String> = match state {
        Some(s) => s.delivered_fingerprints(&model.name, &ids).await?,
        None => HashMap::new(),
    };
    let mut seen: HashSet<String> = HashSet::new();
    let mut previews = Vec::with_capacity(rows.len());
    for (row, out) in rows.into_iter().zip(outcomes) {
        let dropped: Vec<String> = out
            .dropped
            .iter()
            .map(|d| format!("{}:{}", d.field, d.reason))
            .collect();
        let (key, cursor) = (row.key, row.cursor_text);
        previews.push(match out.result {
            Err(r) => RowPreview::Refused {
                key,
                cursor,
                event_id: r.event_id,
                reason: r.reason.to_string(),
                detail: r.detail,
                dropped,
            },
            Ok(event) => {
                if let Some(fp) = ledger.get(&event.event_id) {
                    RowPreview::AlreadySent {
                        key,
                        cursor,
                        changed: *fp != event.fingerprint(),
                        event_id: event.event_id,
                    }
                } else if !seen.insert(event.event_id.clone()) {
                    RowPreview::Refused {
                        key,
                        cursor,
                        event_id: Some(event.event_id),
                        reason: crate::mapping::RefusalReason::DuplicateEventId.to_string(),
                        detail: "another row maps to the same event_id; Meta would count only one"
                            .into(),
                        dropped,
                    }
                } else {
                    RowPreview::Send {
                        key,
                        cursor,
                        event: serde_json::from_str(&event.json)
                            .unwrap_or(serde_json::Value::String(event.json.clone())),
                        raw: event.json,
                        event_id: event.event_id,
                        dropped,
                    }
                }
            }
        });
    }
    Ok(Ok(Preview {
        model: model.name.clone(),
        after: after.as_ref().map(super::position_text),
        rows: previews,
    }))
}

/// One header line, then per row a line saying what happens and, for events, the event as
/// sent (compact JSON, exactly the bytes that go in `data`).
pub fn format_text(p: &Preview, limit: usize) -> String {
    let mut out = String::new();
    if p.rows.is_empty() {
        return match &p.after {
            Some(pos) => format!(
                "{}: no rows wait after the cursor ({pos}); the next run has nothing to send\n",
                p.model
            ),
            None => format!("{}: the model's query returns no rows\n", p.model),
        };
    }
    let from = match &p.after {
        Some(pos) => format!("after the cursor ({pos})"),
        None => "from the first row (no cursor yet)".into(),
    };
    out.push_str(&format!(
        "{}: the next {} {from}, as the next run would send them; nothing is sent\n",
        p.model,
        if p.rows.len() < limit {
            super::rows(p.rows.len() as i64)
        } else {
            super::rows(limit as i64)
        }
    ));
    for r in &p.rows {
        match r {
            RowPreview::Send {
                key,
                cursor,
                event_id,
                raw,
                dropped,
                ..
            } => {
                out.push_str(&format!(
                    "row {} ({cursor}): send, event_id {event_id}\n  {raw}\n",
                    key.join(", "),
                ));
                if !dropped.is_empty() {
                    out.push_str(&format!("  values dropped: {}\n", dropped.join(", ")));
                }
            }
            RowPreview::AlreadySent {
                key,
                cursor,
                event_id,
                changed,
            } => out.push_str(&format!(
                "row {} ({cursor}): already sent as event_id {event_id}; not sent again{}\n",
                key.join(", "),
                if *changed {
                    " (the row changed since; see README, Changed rows)"
                } else {
                    ""
                }
            )),
            RowPreview::Refused {
                key,
                cursor,
                reason,
                detail,
                dropped,
                ..
            } => {
                out.push_str(&format!(
                    "row {} ({cursor}): refused, {reason}: {detail}\n",
                    key.join(", ")
                ));
                if !dropped.is_empty() {
                    out.push_str(&format!("  values dropped: {}\n", dropped.join(", ")));
                }
            }
        }
    }
    out
}
