//! Batches: the events to send and the rows settled alongside them, cut from the mapped rows
//! by [`BatchAssembler`]. The assembler is pure (no I/O): what the ledger knows of a chunk is
//! looked up before the chunk reaches it.

use super::counts::Coverage;
use super::taken_ids::{Older, Taken, TakenIds};
use super::RunSummary;
use crate::config::ModelConfig;
use crate::mapping::{MappedEvent, Refusal, RefusalReason};
use crate::sink::SinkError;
use crate::source::SourceRow;
use crate::state::{CursorPosition, Delivered, RefusedRow};
use std::collections::{HashMap, HashSet};

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

impl BatchResult {
    /// A batch with nothing to send: it only settles its rows.
    pub(super) fn settling_only(batch: Batch) -> BatchResult {
        BatchResult {
            batch,
            delivered: vec![],
            recorded: vec![],
            meta_refused: vec![],
            coverage: Coverage::default(),
            requests: 0,
            retries: 0,
            error: None,
            stopped_by_shutdown: false,
        }
    }
}

/// Why a row repeating the previous row's (cursor, primary key) is not sent: keyset paging
/// cannot tell the two apart, and under one key they would share one event id.
pub(super) fn duplicate_key_refusal(model: &ModelConfig) -> Refusal {
    Refusal::new(
        RefusalReason::DuplicatePrimaryKey,
        format!(
            "another row of the model's output has the same primary_key ({}) and cursor ({}); the first row read was handled, this one is not sent; make the key unique in the model's SQL",
            model.primary_key.join(", "),
            model.cursor
        ),
    )
}

/// What the ledger and the refused rows say of one chunk's rows.
#[derive(Debug, Default)]
pub(super) struct ChunkKnowledge {
    /// Fingerprints of the chunk's events already delivered.
    pub(super) ledger: HashMap<String, String>,
    /// Re-read rows (lookback) already recorded as refused.
    pub(super) known_refusals: HashSet<Vec<String>>,
    /// What the ledger says of ids this run may have taken before (see
    /// [`BatchAssembler::suspects`]).
    pub(super) older: Older,
}

/// Cuts the run's mapped rows into batches, in read order. It skips events the ledger already
/// holds, refuses a second row mapping to an event id taken in this run ([`TakenIds`]), and
/// lets refusals ride along with the batch their row falls in.
pub(super) struct BatchAssembler {
    batch_size: usize,
    pending: Batch,
    seq: u64,
    taken: TakenIds,
    /// The refusal of a row repeating the previous row's (cursor, primary key).
    duplicate_key: Refusal,
}

impl BatchAssembler {
    /// `max_in_flight`: the most batches sent and not yet settled (see [`TakenIds::new`]).
    pub(super) fn new(
        model: &ModelConfig,
        maps_event_id: bool,
        max_in_flight: usize,
    ) -> BatchAssembler {
        BatchAssembler {
            batch_size: model.batch_size,
            pending: Batch::for_events(model.batch_size),
            seq: 0,
            taken: TakenIds::new(maps_event_id, max_in_flight),
            duplicate_key: duplicate_key_refusal(model),
        }
    }

    /// Event ids of a chunk that this run may have taken before and that only the ledger can
    /// settle: the caller looks them up into [`ChunkKnowledge::older`].
    pub(super) fn suspects(
        &self,
        outcomes: &[Result<MappedEvent, Refusal>],
        ledger: &HashMap<String, String>,
    ) -> Vec<String> {
        self.taken.suspects(
            outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .filter(|e| !ledger.contains_key(&e.event_id)),
        )
    }

    /// Takes one row with what became of it; gives back a batch when this row completes one.
    /// `chunk_end`: the row is its chunk's last.
    pub(super) fn push(
        &mut self,
        row: SourceRow,
        outcome: Result<MappedEvent, Refusal>,
        known: &ChunkKnowledge,
        chunk_end: bool,
        summary: &mut RunSummary,
    ) -> Option<Batch> {
        let batch_size = self.batch_size;
        let pending = &mut self.pending;
        // A batch is cut when it holds `batch_size` events, or as many rows found already
        // sent (a re-read of delivered rows sends nothing; its batches only settle them).
        // The batch's position is only needed where a batch is cut and at the chunk's
        // end; cloning it for every row cost more than mapping some fields.
        let may_cut = (outcome.is_ok() && pending.events.len() + 1 >= batch_size)
            || pending.already_sent.len() + 1 >= batch_size;
        let position = (!row.reread && (may_cut || chunk_end)).then(|| row.position());
        match outcome {
            // A re-read row refused before (by us or by Meta) keeps its verdict until it
            // changes or `retry` is asked for; it is neither re-sent nor re-recorded.
            _ if row.reread && known.known_refusals.contains(&row.key) => {}
            _ if row.duplicate => pending.refused.push(refused_row(
                &row.key,
                &row.cursor_text,
                self.duplicate_key
                    .clone()
                    .with_event_id(outcome.ok().map(|e| e.event_id)),
            )),
            Err(refusal) => pending
                .refused
                .push(refused_row(&row.key, &row.cursor_text, refusal)),
            Ok(event) => {
                if let Some(fp) = known.ledger.get(&event.event_id) {
                    summary.counters.rows_already_sent += 1;
                    pending.already_sent.push(row.key);
                    if *fp != event.fingerprint() {
                        pending.changed.push(event.event_id.clone());
                    }
                } else {
                    match self.taken.take(&event, &row.key, &known.older) {
                        Taken::SameRow { changed } => {
                            // The row changed after its first reading and moved further
                            // along the cursor. That reading's event is sent (or refused
                            // by Meta) in this run: not sent twice, not refused either.
                            summary.counters.rows_already_sent += 1;
                            if changed {
                                pending.changed.push(event.event_id.clone());
                            }
                        }
                        Taken::OtherRow => pending.refused.push(refused_row(
                            &row.key,
                            &row.cursor_text,
                            Refusal::new(
                                RefusalReason::DuplicateEventId,
                                "another row in this run maps to the same event_id; Meta would count only one",
                            )
                            .with_event_id(Some(event.event_id.clone())),
                        )),
                        Taken::New => {
                            if summary.sample_event.is_none() {
                                summary.sample_event = Some(event.json.clone());
                            }
                            pending.events.push(PendingEvent {
                                event,
                                key: row.key,
                                cursor_text: row.cursor_text,
                            });
                        }
                    }
                }
            }
        }
        if position.is_some() {
            pending.last = position;
        }
        if pending.events.len() >= batch_size || pending.already_sent.len() >= batch_size {
            self.taken.batch_cut();
            // The next batch's vector is made at its full size: grown by doubling, each
            // batch copied its events about twice over.
            let batch = std::mem::replace(&mut self.pending, Batch::for_events(batch_size));
            return Some(self.numbered(batch));
        }
        None
    }

    /// The last, partial batch, once the read finished normally: anything that settles,
    /// rows found already sent included (a re-read row's verdict becomes "delivered", a
    /// retried row whose duplicate is gone, say, even when the batch has no position to move
    /// the cursor to).
    pub(super) fn finish(mut self) -> Option<Batch> {
        let p = &self.pending;
        if p.events.is_empty()
            && p.last.is_none()
            && p.refused.is_empty()
            && p.already_sent.is_empty()
        {
            return None;
        }
        let batch = std::mem::take(&mut self.pending);
        Some(self.numbered(batch))
    }

    fn numbered(&mut self, mut batch: Batch) -> Batch {
        self.seq += 1;
        batch.seq = self.seq;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pipeline::RunStatus;
    use std::time::Duration;

    fn model(batch_size: usize) -> ModelConfig {
        Config::from_toml_str(
            &format!(
                r#"
[warehouse]
url = "postgres://localhost/x"
[[models]]
name = "orders"
pixel_id = "1"
schedule = "0 * * * *"
sql = "SELECT 1"
primary_key = ["id"]
cursor = "updated_at"
batch_size = {batch_size}
"#
            ),
            std::path::Path::new("."),
        )
        .expect("config")
        .models
        .remove(0)
    }

    fn summary() -> RunSummary {
        RunSummary {
            model: "orders".into(),
            run_id: None,
            status: RunStatus::Succeeded,
            counters: Default::default(),
            error: None,
            error_kind: None,
            sample_event: None,
            elapsed: Duration::ZERO,
        }
    }

    fn row(key: u32) -> SourceRow {
        SourceRow {
            values: Vec::new(),
            cursor_text: format!("2026-01-01 00:00:{key:02}"),
            key: vec![key.to_string()],
            reread: false,
            duplicate: false,
        }
    }

    fn id(key: u32) -> String {
        crate::mapping::derive_event_id("orders", &[key.to_string()], "Purchase")
    }

    fn event(event_id: &str) -> Result<MappedEvent, Refusal> {
        Ok(MappedEvent::new(
            event_id.into(),
            "Purchase".into(),
            1,
            format!("{{\"event_id\":\"{event_id}\"}}"),
            Default::default(),
        ))
    }

    fn refusal() -> Result<MappedEvent, Refusal> {
        Err(Refusal::new(
            RefusalReason::EventTimeTooOld,
            "event_time is too old",
        ))
    }

    /// Pushes one chunk; gives back the batches cut.
    fn push_chunk(
        a: &mut BatchAssembler,
        rows: Vec<(SourceRow, Result<MappedEvent, Refusal>)>,
        known: &ChunkKnowledge,
        s: &mut RunSummary,
    ) -> Vec<Batch> {
        let n = rows.len();
        rows.into_iter()
            .enumerate()
            .filter_map(|(i, (r, o))| a.push(r, o, known, i + 1 == n, s))
            .collect()
    }

    fn keys(batch: &Batch) -> Vec<String> {
        batch.events.iter().map(|e| e.key[0].clone()).collect()
    }

    fn position(key: u32) -> Option<CursorPosition> {
        Some(row(key).position())
    }

    #[test]
    fn a_batch_is_cut_at_batch_size_events_and_the_rest_goes_at_the_end() {
        let mut a = BatchAssembler::new(&model(3), false, 4);
        let mut s = summary();
        let rows = (1..=7).map(|k| (row(k), event(&id(k)))).collect();
        let cut = push_chunk(&mut a, rows, &ChunkKnowledge::default(), &mut s);
        assert_eq!(cut.len(), 2);
        assert_eq!(keys(&cut[0]), ["1", "2", "3"]);
        assert_eq!(keys(&cut[1]), ["4", "5", "6"]);
        assert_eq!((cut[0].seq, cut[1].seq), (1, 2));
        assert_eq!(cut[0].last, position(3));
        let last = a.finish().expect("the last partial batch");
        assert_eq!(
            (keys(&last), last.seq, last.last),
            (vec!["7".into()], 3, position(7))
        );
        assert!(
            s.sample_event.is_some(),
            "the first event sent is the sample"
        );
    }

    #[test]
    fn a_batch_is_cut_at_batch_size_rows_found_already_sent() {
        let mut a = BatchAssembler::new(&model(3), false, 4);
        let mut s = summary();
        let mut known = ChunkKnowledge::default();
        for k in 1..=3 {
            let e = event(&id(k)).unwrap();
            let fingerprint = if k == 2 {
                "changed".into()
            } else {
                e.fingerprint()
            };
            known.ledger.insert(id(k), fingerprint);
        }
        let rows = (1..=3).map(|k| (row(k), event(&id(k)))).collect();
        let cut = push_chunk(&mut a, rows, &known, &mut s);
        assert_eq!(
            cut.len(),
            1,
            "a re-read of delivered rows settles them in batches too"
        );
        assert!(cut[0].events.is_empty());
        assert_eq!(cut[0].already_sent.len(), 3);
        assert_eq!(
            cut[0].changed,
            [id(2)],
            "the ledger's fingerprint notes the change"
        );
        assert_eq!(cut[0].last, position(3));
        assert_eq!(s.counters.rows_already_sent, 3);
        assert!(a.finish().is_none());
    }

    #[test]
    fn refusals_ride_along_with_the_batch_their_row_falls_in() {
        let mut a = BatchAssembler::new(&model(2), false, 4);
        let mut s = summary();
        let rows = vec![
            (row(1), event(&id(1))),
            (row(2), refusal()),
            (row(3), event(&id(3))),
            (row(4), refusal()),
        ];
        let cut = push_chunk(&mut a, rows, &ChunkKnowledge::default(), &mut s);
        assert_eq!(cut.len(), 1);
        assert_eq!(keys(&cut[0]), ["1", "3"]);
        assert_eq!(cut[0].refused.len(), 1);
        assert_eq!(cut[0].refused[0].row_key, ["2"]);
        assert_eq!(cut[0].refused[0].reason, "event_time_too_old");
        let last = a
            .finish()
            .expect("a batch holding only a refusal still settles");
        assert!(last.events.is_empty());
        assert_eq!(last.refused[0].row_key, ["4"]);
        assert_eq!(last.last, position(4));
    }

    #[test]
    fn the_position_is_recorded_only_at_cuts_and_chunk_ends() {
        let mut a = BatchAssembler::new(&model(10), false, 4);
        let mut s = summary();
        let known = ChunkKnowledge::default();
        assert!(a
            .push(row(1), event(&id(1)), &known, false, &mut s)
            .is_none());
        assert_eq!(
            a.pending.last, None,
            "a row inside a chunk sets no position"
        );
        assert!(a
            .push(row(2), event(&id(2)), &known, true, &mut s)
            .is_none());
        assert_eq!(a.pending.last, position(2));
        // A row read again behind the cursor (lookback) never moves it.
        let mut behind = row(0);
        behind.reread = true;
        assert!(a
            .push(behind, event(&id(0)), &known, true, &mut s)
            .is_none());
        assert_eq!(a.pending.last, position(2));
        assert_eq!(a.finish().expect("batch").events.len(), 3);
    }

    #[test]
    fn a_re_read_row_with_a_known_refusal_is_neither_sent_nor_refused_again() {
        let mut a = BatchAssembler::new(&model(10), false, 4);
        let mut s = summary();
        let mut known = ChunkKnowledge::default();
        known.known_refusals.insert(vec!["5".into()]);
        let mut reread = row(5);
        reread.reread = true;
        let cut = push_chunk(&mut a, vec![(reread, event(&id(5)))], &known, &mut s);
        assert!(cut.is_empty());
        assert!(a.finish().is_none(), "nothing to send or settle");
    }

    #[test]
    fn another_row_mapping_to_a_taken_event_id_is_refused_as_duplicate_event_id() {
        let mut a = BatchAssembler::new(&model(10), true, 4);
        let mut s = summary();
        let rows = vec![(row(1), event("order-9")), (row(2), event("order-9"))];
        push_chunk(&mut a, rows, &ChunkKnowledge::default(), &mut s);
        let batch = a.finish().expect("batch");
        assert_eq!(keys(&batch), ["1"]);
        assert_eq!(batch.refused.len(), 1);
        let r = &batch.refused[0];
        assert_eq!(r.row_key, ["2"]);
        assert_eq!(r.reason, "duplicate_event_id");
        assert_eq!(r.event_id.as_deref(), Some("order-9"));
    }

    #[test]
    fn a_row_repeating_the_previous_cursor_and_key_is_refused_as_duplicate_primary_key() {
        let mut a = BatchAssembler::new(&model(10), false, 4);
        let mut s = summary();
        let mut twin = row(1);
        twin.duplicate = true;
        let rows = vec![(row(1), event(&id(1))), (twin, event(&id(1)))];
        push_chunk(&mut a, rows, &ChunkKnowledge::default(), &mut s);
        let batch = a.finish().expect("batch");
        assert_eq!(keys(&batch), ["1"]);
        let r = &batch.refused[0];
        assert_eq!(r.reason, "duplicate_primary_key");
        assert_eq!(r.event_id, Some(id(1)));
        assert!(r.detail.contains("primary_key (id)"), "{}", r.detail);
    }

    #[test]
    fn the_same_row_read_again_in_the_run_is_not_sent_twice_nor_refused() {
        let mut a = BatchAssembler::new(&model(10), false, 4);
        let mut s = summary();
        let rows = vec![(row(1), event(&id(1))), (row(1), event(&id(1)))];
        push_chunk(&mut a, rows, &ChunkKnowledge::default(), &mut s);
        let batch = a.finish().expect("batch");
        assert_eq!(keys(&batch), ["1"]);
        assert!(batch.refused.is_empty());
        assert_eq!(s.counters.rows_already_sent, 1);
    }
}
