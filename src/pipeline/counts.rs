//! The run's counters.

use super::batch::Batch;
use super::observer::RunObserver;
use crate::mapping::event::{Identifiers, IDENTIFIER_NAMES};
use crate::state::{RefusedRow, RunCounters, Settlement};
use std::sync::Arc;

pub(super) fn count_dry(
    c: &mut RunCounters,
    batch: &Batch,
    model: &str,
    observer: &Option<Arc<dyn RunObserver>>,
) {
    if let Some(o) = observer {
        o.batch_done(model, batch.events.len() as u64, &batch.refused);
    }
    c.events_sent += batch.events.len() as i64;
    count_refused(c, &batch.refused);
    let mut coverage = Coverage::default();
    for e in &batch.events {
        coverage.add(e.event.identifiers);
    }
    coverage.apply(c);
}

pub(super) fn apply_counts(c: &mut RunCounters, s: &Settlement, coverage: &Coverage) {
    c.events_sent += s.acknowledged() as i64;
    count_refused(c, &s.refused);
    coverage.apply(c);
}

pub(super) fn count_refused(c: &mut RunCounters, refused: &[RefusedRow]) {
    for r in refused {
        c.rows_refused += 1;
        *c.refused_by_reason.entry(r.reason.clone()).or_default() += 1;
    }
}

/// Events per identifier (bit `i` of [`Identifiers`]), counted in a fixed array and added to
/// the run's map once per batch: this runs for every event of a backfill.
#[derive(Debug, Default)]
pub(super) struct Coverage([i64; IDENTIFIER_NAMES.len()]);

impl Coverage {
    pub(super) fn add(&mut self, ids: Identifiers) {
        for (i, n) in self.0.iter_mut().enumerate() {
            *n += i64::from(ids.0 >> i & 1 == 1);
        }
    }

    pub(super) fn apply(&self, c: &mut RunCounters) {
        for (name, &n) in IDENTIFIER_NAMES.iter().zip(&self.0) {
            if n > 0 {
                *c.coverage.entry(name.to_string()).or_default() += n;
            }
        }
    }
}
