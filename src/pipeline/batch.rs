//! Batches: the events to send and the rows settled alongside them.

use super::counts::Coverage;
use crate::config::ModelConfig;
use crate::mapping::{MappedEvent, Refusal};
use crate::sink::SinkError;
use crate::state::{CursorPosition, Delivered, RefusedRow};

/// A row on its way: an event to send or a refusal to record.
#[derive(Debug)]
pub(super) struct PendingEvent {
    pub(super) event: MappedEvent,
    pub(super) key: Vec<String>,
    pub(super) cursor_text: String,
}

/// A batch: the events to send plus every row settled alongside them (refused rows, rows
/// already in the ledger), and the position of the last row it covers.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) seq: u64,
    pub(super) events: Vec<PendingEvent>,
    pub(super) refused: Vec<RefusedRow>,
    pub(super) changed: Vec<String>,
    /// Row keys of rows whose event the ledger already held.
    pub(super) already_sent: Vec<Vec<String>>,
    pub(super) last: Option<CursorPosition>,
}

impl Batch {
    pub(super) fn for_events(capacity: usize) -> Batch {
        Batch {
            events: Vec::with_capacity(capacity),
            ..Batch::default()
        }
    }
}

pub(super) struct BatchResult {
    pub(super) batch: Batch,
    pub(super) delivered: Vec<Delivered>,
    /// Row keys of delivered events already written to the ledger by the batch itself.
    pub(super) recorded: Vec<Vec<String>>,
    pub(super) meta_refused: Vec<RefusedRow>,
    /// Identifiers of the delivered events.
    pub(super) coverage: Coverage,
    pub(super) requests: i64,
    pub(super) retries: i64,
    pub(super) error: Option<SinkError>,
    /// `error` is the answer the batch was waiting to retry when shutdown came.
    pub(super) stopped_by_shutdown: bool,
}

pub(super) fn refused_row(key: &[String], cursor: &str, r: Refusal) -> RefusedRow {
    RefusedRow {
        row_key: key.to_vec(),
        event_id: r.event_id,
        reason: r.reason.to_string(),
        detail: r.detail,
        meta_code: None,
        meta_subcode: None,
        cursor_value: Some(cursor.to_string()),
    }
}

/// Why a row repeating the previous row's (cursor, primary key) is not sent: keyset paging
/// cannot tell the two apart, and under one key they would share one event id.
pub(super) fn duplicate_key_refusal(model: &ModelConfig) -> Refusal {
    Refusal::new(
        "duplicate_primary_key",
        format!(
            "another row of the model's output has the same primary_key ({}) and cursor ({}); the first row read was handled, this one is not sent; make the key unique in the model's SQL",
            model.primary_key.join(", "),
            model.cursor
        ),
    )
}
