//! The read stage: which ranges a run reads, and the rows it cannot see.

use crate::config::ModelConfig;
use crate::source::{LowerBound, ReadRange, Warehouse};
use crate::state::{CursorPosition, RunCounters};
use tracing::warn;

/// The ranges an incremental run reads: from a backfill point, or after the stored cursor,
/// plus the lookback window behind it for rows committed late with an earlier cursor value.
pub(super) fn read_ranges(
    model: &ModelConfig,
    query: &crate::source::ModelQuery,
    stored: Option<CursorPosition>,
    from: Option<String>,
) -> Result<Vec<ReadRange>, String> {
    if !model.lookback.is_zero() && !query.cursor_is_time() {
        return Err(format!(
            "model `{}` sets lookback, but its cursor `{}` is not a timestamp or date column; remove lookback or use a time cursor",
            model.name, model.cursor
        ));
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
    query.check_position(&stored).map_err(|e| e.to_string())?;
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
    query: &crate::source::ModelQuery,
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
