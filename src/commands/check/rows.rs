//! `check`'s questions about a model's rows, each one aggregate query in a read-only
//! transaction: rows that keyset paging cannot reach, primary keys on more than one row, and
//! rows waiting whose `event_time` is leaving Meta's window.

use super::{Level, Report};
use crate::config::ModelConfig;
use crate::source::Warehouse;

/// Rows keyset paging cannot handle: counted with aggregate queries (no row is read), each
/// in a read-only transaction under the statement timeout.
pub(super) async fn check_unreadable_rows(
    warehouse: &Warehouse,
    model: &ModelConfig,
    query: &crate::source::ModelQuery,
    report: &mut Report,
) {
    let name = model.name.as_str();
    let key = model.primary_key.join(", ");
    match warehouse.unreadable_rows(model, query).await {
        Ok(u) if u.total() == 0 => report.push(
            name,
            Some("rows"),
            Level::Ok,
            format!("no row has a NULL cursor ({}) or primary key ({key})", model.cursor),
        ),
        Ok(u) => report.push(
            name,
            Some("rows"),
            Level::Warning,
            format!(
                "{} with a NULL cursor ({}) and {} with a NULL in the primary key ({key}): paging on (cursor, key) cannot reach them, so they are never sent; every run counts them (capi_sync_rows_unreadable)",
                crate::commands::rows(u.null_cursor),
                model.cursor,
                crate::commands::group_digits(u.null_key)
            ),
        ),
        Err(e) => report.push(
            name,
            Some("rows"),
            Level::Warning,
            format!("cannot count the rows with a NULL cursor or key: {e}"),
        ),
    }
    match warehouse.duplicate_keys(model, query).await {
        Ok(d) if d.keys == 0 => report.push(
            name,
            Some("rows"),
            Level::Ok,
            format!("each primary key ({key}) is on one row"),
        ),
        Ok(d) => report.push(
            name,
            Some("rows"),
            Level::Warning,
            format!(
                "{} primary key value(s) ({key}) are on more than one row; {} of them also share the cursor value: a run sends the first such row and refuses the others as duplicate_primary_key. Rows of one key with different cursor values are read as one row that changed: one event per key and event name",
                crate::commands::group_digits(d.keys),
                crate::commands::group_digits(d.keys_with_same_cursor)
            ),
        ),
        Err(e) => report.push(
            name,
            Some("rows"),
            Level::Warning,
            format!("cannot count the primary keys on more than one row: {e}"),
        ),
    }
}
