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
use crate::state::{Delivered, StateStore};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Indexes in `rows` of the rows whose refusals the write clears.
    clear: Vec<usize>,
    done: oneshot::Sender<(Vec<Delivered>, Result<(), RunError>)>,
}

/// The rows of a run that may have a refusal in `refused_rows`: every row, when the model had
/// refusals as the run started; otherwise only the rows this run refused, remembered in a
/// Bloom filter of their keys (no false negatives; a false positive only deletes nothing).
///
/// Clearing refusals is a lookup per row key, and a run that refused any row used to clear
/// them for every row it delivered after: in a 5M-row backfill refusing 2% of its rows, those
/// deletes took more of the database's time than the ledger rows themselves.
pub(super) struct MayBeRefused {
    every_row: bool,
    refused_keys: Mutex<Option<Vec<u64>>>,
}

/// 4 Mi bits (512 KiB, allocated at the run's first refusal): under 1% false positives up to
/// about 400 000 refused rows with [`KEY_PROBES`] probes.
const KEY_FILTER_BITS: usize = 1 << 22;
const KEY_PROBES: u32 = 7;

impl MayBeRefused {
    pub(super) fn new(every_row: bool) -> MayBeRefused {
        MayBeRefused {
            every_row,
            refused_keys: Mutex::new(None),
        }
    }

    fn bits(key: &[String]) -> impl Iterator<Item = usize> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in key {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let h = h.digest128();
        let (a, b) = (h as u64, (h >> 64) as u64 | 1);
        (0..u64::from(KEY_PROBES))
            .map(move |i| (a.wrapping_add(i.wrapping_mul(b)) % KEY_FILTER_BITS as u64) as usize)
    }

    /// Remembers the keys of rows this run refused.
    pub(super) fn note<'a>(&self, keys: impl Iterator<Item = &'a [String]>) {
        if self.every_row {
            return;
        }
        let mut filter = self.refused_keys.lock().unwrap_or_else(|p| p.into_inner());
        let filter = filter.get_or_insert_with(|| vec![0u64; KEY_FILTER_BITS / 64]);
        for key in keys {
            for bit in Self::bits(key) {
                filter[bit / 64] |= 1 << (bit % 64);
            }
        }
    }

    /// Indexes of the rows among `rows` that may have a refusal.
    pub(super) fn among(&self, rows: &[Delivered]) -> Vec<usize> {
        if self.every_row {
            return (0..rows.len()).collect();
        }
        let filter = self.refused_keys.lock().unwrap_or_else(|p| p.into_inner());
        let Some(filter) = filter.as_ref() else {
            return Vec::new();
        };
        (0..rows.len())
            .filter(|&i| {
                Self::bits(&rows[i].row_key).all(|bit| filter[bit / 64] & (1 << (bit % 64)) != 0)
            })
            .collect()
    }
}

impl LedgerWriter {
    /// Starts the writer task; it ends when the last clone of the handle is dropped (every
    /// write asked for has then been answered: each caller holds a clone while it waits).
    pub fn start(state: StateStore, model: String, run_id: i64, refusals: bool) -> LedgerWriter {
        let (queue, rx) = mpsc::channel::<Job>(64);
        let writes = Arc::new(AtomicU64::new(0));
        let writer = super::deadline::AbortOnDrop::spawn(write_loop(
            rx,
            state,
            model,
            run_id,
            writes.clone(),
        ));
        LedgerWriter {
            queue,
            refusals: Arc::new(MayBeRefused::new(refusals)),
            writes,
            _writer: Arc::new(writer),
        }
    }

    /// Writes one batch's acknowledged events and gives them back with the outcome: on an
    /// error the caller hands them to the cursor's transaction.
    pub async fn record(&self, rows: Vec<Delivered>) -> (Vec<Delivered>, Result<(), RunError>) {
        let clear = self.refusals.among(&rows);
        let (done, answer) = oneshot::channel();
        let job = Job { rows, clear, done };
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
        let clear: Vec<&[String]> = jobs
            .iter()
            .flat_map(|j| j.clear.iter().map(|&i| j.rows[i].row_key.as_slice()))
            .collect();
        let write = state.record_acknowledged_clearing(&model, run_id, &parts, &clear);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &[&str]) -> Delivered {
        Delivered {
            row_key: key.iter().map(|s| s.to_string()).collect(),
            event_id: "e".into(),
            event_name: "Lead".into(),
            event_time: 0,
            fingerprint: "f".into(),
            fbtrace_id: None,
        }
    }

    #[test]
    fn every_row_may_be_refused_when_the_model_had_refusals() {
        let m = MayBeRefused::new(true);
        assert_eq!(m.among(&[row(&["1"]), row(&["2"])]), vec![0, 1]);
    }

    #[test]
    fn without_earlier_refusals_only_the_rows_this_run_refused() {
        let m = MayBeRefused::new(false);
        let rows: Vec<Delivered> = (0..20_000).map(|i| row(&[&i.to_string()])).collect();
        assert!(m.among(&rows).is_empty(), "nothing refused yet");
        let refused: Vec<Vec<String>> = (0..20_000)
            .step_by(50)
            .map(|i| vec![i.to_string()])
            .collect();
        m.note(refused.iter().map(|k| k.as_slice()));
        let found = m.among(&rows);
        // Every refused row is among them (a Bloom filter has no false negatives) ...
        for i in (0..20_000).step_by(50) {
            assert!(found.contains(&i), "row {i} was refused");
        }
        // ... and few others.
        assert!(found.len() < 400 + 20, "{} rows", found.len());
    }

    #[test]
    fn composite_keys_are_told_apart_by_their_parts() {
        let m = MayBeRefused::new(false);
        m.note([["ab".to_string(), "c".to_string()].as_slice()].into_iter());
        assert_eq!(m.among(&[row(&["ab", "c"])]), vec![0]);
        assert!(m.among(&[row(&["a", "bc"]), row(&["abc"])]).is_empty());
    }
}
