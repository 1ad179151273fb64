//! Acknowledged events go into the delivery ledger as soon as Meta answers, before the cursor
//! moves past them (see [`StateStore::record_acknowledged`]).
//!
//! A batch does not write its own rows. It queues them for the run's ledger writer, which
//! takes every batch queued since its last write into one transaction and one `COPY`. With
//! several batches in flight, acknowledgements arrive faster than one batch's write takes,
//! so writes group themselves, and more so the busier the database: PostgreSQL's fixed cost
//! per `COPY` (the statement, the transaction, and one tuple slot per row of a 1000-row insert
//! buffer) is then paid once for several batches. A million ledger rows written 1000 per
//! transaction took 4.2-5.0 s of server time here, 4000 per transaction 3.2-3.7 s, and one
//! `COPY` of all of them 2.8-3.2 s. In a million-row backfill with eight batches in flight,
//! one writer wrote about 370 transactions (two writers: about 740, and more server time).
//!
//! The writer is the one owner of a run's ledger writes: [`LedgerWriter::record_or_defer`]
//! writes a batch's acknowledged events now, and if that fails hands them back to go into the
//! settler's transaction with the cursor (the fallback, not a second writer: the settler
//! writes only what this gives back).
//!
//! Each batch still waits for its own rows to be written before it settles, so the queue
//! never holds more than the run's unsettled batches (those in flight and as many again
//! answered). A failed write gives every batch in it its rows back; the cursor's transaction
//! then writes them, as before.

use super::error::RunError;
use crate::state::{Delivered, MayBeRefused, StateStore};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Where a batch's acknowledged events went.
pub(super) struct Acknowledged {
    /// Row keys of the events written to the ledger.
    pub(super) recorded: Vec<Vec<String>>,
    /// Events not written: the settler writes them with the cursor.
    pub(super) with_the_cursor: Vec<Delivered>,
}

/// The writer stops taking queued batches once it holds this many events.
const GROUP_EVENTS: usize = 8000;

/// The ledger writer of one run.
#[derive(Clone)]
pub struct LedgerWriter {
    queue: mpsc::Sender<Job>,
    /// Which delivered rows may have a refusal to clear (see [`MayBeRefused`]).
    refusals: Arc<MayBeRefused>,
    /// Ledger transactions tried so far, failed ones included.
    writes: Arc<AtomicU64>,
    /// The writer task, aborted with the last handle: a run stopped at its deadline does not
    /// leave a write waiting on a database that stopped answering.
    _writer: Arc<super::deadline::AbortOnDrop<()>>,
}

struct Job {
    rows: Vec<Delivered>,
    done: oneshot::Sender<(Vec<Delivered>, Result<(), RunError>)>,
}

impl LedgerWriter {
    /// Starts the writer task; it ends when the last clone of the handle is dropped (every
    /// write asked for has then been answered: each caller holds a clone while it waits).
    pub fn start(
        state: StateStore,
        model: String,
        run_id: i64,
        refusals: Arc<MayBeRefused>,
    ) -> LedgerWriter {
        let (queue, rx) = mpsc::channel::<Job>(64);
        let writes = Arc::new(AtomicU64::new(0));
        let writer = super::deadline::AbortOnDrop::spawn(write_loop(
            rx,
            state,
            model,
            run_id,
            refusals.clone(),
            writes.clone(),
        ));
        LedgerWriter {
            queue,
            refusals,
            writes,
            _writer: Arc::new(writer),
        }
    }

    /// Writes one batch's acknowledged events and gives them back with the outcome: on an
    /// error the caller hands them to the cursor's transaction.
    pub async fn record(&self, rows: Vec<Delivered>) -> (Vec<Delivered>, Result<(), RunError>) {
        let (done, answer) = oneshot::channel();
        let job = Job { rows, done };
        if let Err(mpsc::error::SendError(job)) = self.queue.send(job).await {
            return (job.rows, Err(RunError::LedgerWriterStopped));
        }
        match answer.await {
            Ok(outcome) => outcome,
            // The writer answers every job it takes, even when a write panics; a job goes
            // unanswered only when the runtime drops the writer task at shutdown, and then
            // this batch's task goes with it before any cursor moves.
            Err(_) => (Vec::new(), Err(RunError::LedgerWriterStopped)),
        }
    }

    /// A batch of this run refused these rows: later writes also clear their refusals when
    /// they deliver them. Told from one place, a batch's result (its own refusals and Meta's).
    pub(super) fn note_refusals<'a>(&self, keys: impl Iterator<Item = &'a [String]>) {
        self.refusals.note(keys);
    }

    /// Writes one batch's acknowledged events now; the ones that could not be written are
    /// given back for the cursor's transaction (which then writes them, as before).
    pub(super) async fn record_or_defer(&self, rows: Vec<Delivered>) -> Acknowledged {
        match self.record(rows).await {
            (rows, Ok(())) => Acknowledged {
                recorded: rows.into_iter().map(|d| d.row_key).collect(),
                with_the_cursor: Vec::new(),
            },
            (rows, Err(e)) => {
                warn!(
                    error = %e,
                    "could not record acknowledged events yet; they are recorded with the cursor"
                );
                Acknowledged {
                    recorded: Vec::new(),
                    with_the_cursor: rows,
                }
            }
        }
    }

    /// Ledger transactions tried so far (each holds one or more batches), failed ones included.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Job>,
    state: StateStore,
    model: String,
    run_id: i64,
    refusals: Arc<MayBeRefused>,
    writes: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut events = first.rows.len();
        let mut jobs = vec![first];
        while events < GROUP_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.rows.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let parts: Vec<&[Delivered]> = jobs.iter().map(|j| j.rows.as_slice()).collect();
        let write = state.record_acknowledged(&model, run_id, &parts, &refusals);
        let outcome = match AssertUnwindSafe(write).catch_unwind().await {
            Ok(written) => written.map_err(|e| RunError::LedgerWrite(Arc::new(e))),
            Err(_) => Err(RunError::LedgerWritePanicked),
        };
        writes.fetch_add(1, Ordering::Relaxed);
        for job in jobs {
            let _ = job.done.send((job.rows, outcome.clone()));
        }
    }
}
