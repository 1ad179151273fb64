//! `check`'s questions about a model's rows, each one aggregate query in a read-only
//! transaction: rows that keyset paging cannot reach, primary keys on more than one row, and
//! rows waiting whose `event_time` is leaving Meta's window.

use super::{Level, Report};
use crate::config::ModelConfig;
use crate::source::{ExpiryCount, Warehouse};
use crate::state::StateStore;

/// Rows waiting after the cursor (all rows before a first run) whose `event_time` leaves
/// Meta's window within `horizon` (`service.expiring_within`), or has left it: one aggregate
/// query. A warning, since a run sent in time saves them.
pub(super) async fn check_expiring(
    warehouse: &Warehouse,
    state: Option<&StateStore>,
    model: &ModelConfig,
    horizon: std::time::Duration,
    report: &mut Report,
) {
    let name = model.name.as_str();
    let after = match state {
        Some(s) => match s.cursor(name).await {
            Ok(c) => c,
            Err(e) => {
                let message =
                    format!("cannot read the cursor to count rows leaving Meta's window: {e}");
                report.push(name, Some("expiry"), Level::Warning, message);
                return;
            }
        },
        None => None,
    };
    let within = crate::commands::setting_duration(horizon.as_secs());
    let backlog =
        crate::source::model_backlog_with_expiry(warehouse, model, after.as_ref(), horizon).await;
    let (level, message) = match backlog.map(|b| b.expiry) {
        Ok(Some(ExpiryCount::Counted(e))) if e.expiring == 0 && e.expired == 0 => (
            Level::Ok,
            format!("no row waiting after the cursor leaves Meta's window within {within}"),
        ),
        Ok(Some(ExpiryCount::Counted(e))) => {
            let first = e
                .earliest
                .filter(|_| e.expiring > 0)
                .map(|t| format!(" (the first at {})", crate::commands::utc(t)))
                .unwrap_or_default();
            let verb = |n: i64, one: &str, many: &str| {
                let n_text = crate::commands::group_digits(n);
                if n == 1 {
                    format!("{n_text} {one}")
                } else {
                    format!("{n_text} {many}")
                }
            };
            (
                Level::Warning,
                format!(
                    "rows waiting after the cursor: {} Meta's window within {within}{first}, {} already outside it (refused as event_time_too_old when read); run `capi-sync sync {name}` before then, or schedule the model more often",
                    verb(e.expiring, "leaves", "leave"),
                    verb(e.expired, "is", "are")
                ),
            )
        }
        Ok(Some(ExpiryCount::Unknown(why))) => (
            Level::Ok,
            format!("rows leaving Meta's window are not counted: {why}"),
        ),
        Ok(None) => return,
        Err(e) => (
            Level::Warning,
            format!("cannot count the rows leaving Meta's window: {e}"),
        ),
    };
    report.push(name, Some("expiry"), level, message);
}

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
