//! The read stage: describing the model, which ranges a run reads, the reader task, and the
//! rows it cannot see.

use super::deadline::{passed_deadline, AbortOnDrop};
use super::error::RunError;
use super::{RunMode, RunOptions, SyncContext};
use crate::config::ModelConfig;
use crate::mapping::ModelPlan;
use crate::source::{LowerBound, ModelQuery, ReadRange, SourceError, SourceRow, Warehouse};
use crate::state::{CursorPosition, RunCounters};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::warn;

/// The ranges an incremental run reads: from a backfill point, or after the stored cursor,
/// plus the lookback window behind it for rows committed late with an earlier cursor value.
pub(super) fn read_ranges(
    model: &ModelConfig,
    query: &ModelQuery,
    stored: Option<CursorPosition>,
    from: Option<String>,
) -> Result<Vec<ReadRange>, RunError> {
    if !model.lookback.is_zero() && !query.cursor_is_time() {
        return Err(RunError::LookbackNeedsTimeCursor {
            model: model.name.clone(),
            cursor: model.cursor.clone(),
        });
    }
    if let Some(v) = from {
        return Ok(vec![ReadRange {
            lower: LowerBound::CursorAtLeast(v),
            upper: None,
            reread: false,
        }]);
    }
    let Some(stored) = stored else {
        return Ok(vec![ReadRange {
            lower: LowerBound::Beginning,
            upper: None,
            reread: false,
        }]);
    };
    query
        .check_position(&stored)
        .map_err(|e| RunError::Cursor(Arc::new(e)))?;
    let mut ranges = Vec::new();
    if !model.lookback.is_zero() {
        ranges.push(ReadRange {
            lower: LowerBound::CursorWithin {
                cursor_value: stored.cursor_value.clone(),
                lookback: model.lookback,
            },
            upper: Some(stored.clone()),
            reread: true,
        });
    }
    ranges.push(ReadRange {
        lower: LowerBound::After(stored),
        upper: None,
        reread: false,
    });
    Ok(ranges)
}

/// Records how many rows the reader could not see (a count that fails leaves them unknown:
/// it says nothing about the rows the run did read).
pub(super) async fn count_unreadable(
    warehouse: &Warehouse,
    model: &ModelConfig,
    query: &ModelQuery,
    c: &mut RunCounters,
) {
    match warehouse.unreadable_rows(model, query).await {
        Ok(rows) => {
            if rows.total() > 0 {
                warn!(
                    model = %model.name,
                    null_cursor = rows.null_cursor,
                    null_key = rows.null_key,
                    "rows with a NULL cursor or primary key are never read; fix the model's SQL"
                );
            }
            c.rows_null_cursor = Some(rows.null_cursor);
            c.rows_null_key = Some(rows.null_key);
        }
        Err(e) => {
            warn!(model = %model.name, error = %e, "cannot count the rows with a NULL cursor or key")
        }
    }
}

/// Describes the model's query and decides once which column feeds which parameter.
pub(super) async fn describe(
    ctx: &SyncContext,
    model: &ModelConfig,
    deadline: tokio::time::Instant,
) -> Result<(ModelQuery, Arc<ModelPlan>), RunError> {
    let run_deadline = ctx.config.service.run_deadline;
    let (query, columns) = tokio::time::timeout_at(deadline, ctx.warehouse.describe(model))
        .await
        .map_err(|_| {
            RunError::Deadline(passed_deadline(
                run_deadline,
                "while describing the model's query",
            ))
        })?
        .map_err(|e| RunError::Describe {
            source: Arc::new(e),
            sql_origin: model.sql_origin.clone(),
            model: model.name.clone(),
        })?;
    let plan =
        Arc::new(
            ModelPlan::new(model, &columns).map_err(|problems| RunError::ModelColumns {
                problems: problems.iter().map(|p| p.to_string()).collect(),
                model: model.name.clone(),
            })?,
        );
    Ok((query, plan))
}

/// The reader task, and the chunks of `chunk` rows it sends.
pub(super) type Reader = (
    AbortOnDrop<Result<u64, SourceError>>,
    mpsc::Receiver<Vec<SourceRow>>,
);

/// Why the reader failed, once it has ended.
pub(super) fn reader_failure(
    model: &ModelConfig,
    ended: Result<Result<u64, SourceError>, tokio::task::JoinError>,
) -> Option<RunError> {
    match ended {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(RunError::WarehouseRead {
            source: Arc::new(e),
            sql_origin: model.sql_origin.clone(),
        }),
        Err(e) => Some(RunError::ReaderStopped(e.to_string())),
    }
}

/// Starts the reader: rows after the cursor, or the refused rows by key (`retry`).
pub(super) async fn start_reader(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
    query: &ModelQuery,
    chunk: usize,
    counters: &mut RunCounters,
) -> Result<Reader, RunError> {
    let (tx_rows, rx_rows) = mpsc::channel::<Vec<SourceRow>>(2);
    let warehouse = ctx.warehouse.clone();
    let reader_query = query.clone();
    let reader = match opts.mode {
        RunMode::Incremental => {
            let stored = ctx
                .state
                .cursor(&model.name)
                .await
                .map_err(RunError::state_read("the model's cursor"))?;
            let ranges = read_ranges(model, query, stored, opts.from.clone())?;
            AbortOnDrop::spawn(async move {
                warehouse
                    .stream_rows(&reader_query, ranges, tx_rows, chunk)
                    .await
            })
        }
        RunMode::RetryRefused => {
            let keys = ctx.state.refused_keys(&model.name).await?;
            counters.rows_requested = keys.len() as i64;
            AbortOnDrop::spawn(async move {
                let mut total = 0u64;
                for part in keys.chunks(chunk) {
                    let mut rows = warehouse.rows_by_key(&reader_query, part).await?;
                    for r in &mut rows {
                        r.reread = true;
                    }
                    total += rows.len() as u64;
                    if tx_rows.send(rows).await.is_err() {
                        break;
                    }
                }
                Ok(total)
            })
        }
    };
    Ok((reader, rx_rows))
}
