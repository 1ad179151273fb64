//! A run's progress as it happens, for whoever watches: the progress bar or log lines of
//! `sync`, and the service's Prometheus metrics. The pipeline calls these hooks; they must be
//! cheap and must not block (they run on the pipeline's tasks).

use super::RunSummary;
use crate::sink::ErrorClass;
use crate::state::RefusedRow;
use std::time::Duration;

/// Hooks called by the pipeline during a run. Every method has a no-op default. Nothing passed
/// here carries customer data: counts, reason codes, row keys and event ids only.
pub trait RunObserver: Send + Sync + std::fmt::Debug {
    /// Rows read from the warehouse (a chunk at a time).
    fn rows_read(&self, _model: &str, _rows: u64) {}

    /// A batch is done: `events_sent` events acknowledged by Meta (or, in a dry run, that
    /// would have been sent), and the rows refused alongside them.
    fn batch_done(&self, _model: &str, _events_sent: u64, _refused: &[RefusedRow]) {}

    /// How long a batch took to deliver, retries and splits included.
    fn batch_latency(&self, _model: &str, _elapsed: Duration) {}

    /// A request is about to be retried after an error of this class.
    fn retry(&self, _model: &str, _class: ErrorClass) {}

    /// The run ended (in any status).
    fn run_finished(&self, _summary: &RunSummary) {}

    /// The service started a scheduled run `delay` after the schedule's fire time it was due
    /// at (waiting for a free run slot, or the timer's own lateness).
    fn run_started(&self, _model: &str, _delay: Duration) {}

    /// The service's queue changed: `waiting` runs are due and wait for a free slot,
    /// `running` runs are going.
    fn run_queue(&self, _waiting: usize, _running: usize) {}

    /// The requests the pixel may have in flight now (its adaptive limit), after a batch.
    fn requests_in_flight_limit(&self, _pixel_id: &str, _limit: usize) {}
}
