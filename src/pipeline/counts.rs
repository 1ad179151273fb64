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
        coverage.add(e.event.identifiers, &e.event.event_name);
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

/// Events per identifier (bit `i` of [`Identifiers`]), counted in a fixed array, and events
/// per event name, added to the run's maps once per batch: this runs for every event of a
/// backfill. A batch holds few event names (usually one), so they are a short list.
#[derive(Debug, Default)]
pub(super) struct Coverage {
    identifiers: [i64; IDENTIFIER_NAMES.len()],
    names: Vec<(String, i64)>,
}

impl Coverage {
    pub(super) fn add(&mut self, ids: Identifiers, event_name: &str) {
        for (i, n) in self.identifiers.iter_mut().enumerate() {
            *n += i64::from(ids.0 >> i & 1 == 1);
        }
        match self.names.iter_mut().find(|(name, _)| name == event_name) {
            Some((_, n)) => *n += 1,
            None => self.names.push((event_name.to_string(), 1)),
        }
    }

    pub(super) fn apply(&self, c: &mut RunCounters) {
        for (name, &n) in IDENTIFIER_NAMES.iter().zip(&self.identifiers) {
            if n > 0 {
                *c.coverage.entry(name.to_string()).or_default() += n;
            }
        }
        for (name, n) in &self.names {
            *c.events_by_name.entry(name.clone()).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_identifiers_and_event_names() {
        let mut cov = Coverage::default();
        cov.add(Identifiers(0b11), "Lead");
        cov.add(Identifiers(0b01), "Purchase");
        cov.add(Identifiers(0b01), "Lead");
        let mut c = RunCounters::default();
        cov.apply(&mut c);
        cov.apply(&mut c);
        assert_eq!(c.coverage[IDENTIFIER_NAMES[0]], 6);
        assert_eq!(c.coverage[IDENTIFIER_NAMES[1]], 2);
        assert_eq!(c.events_by_name["Lead"], 4);
        assert_eq!(c.events_by_name["Purchase"], 2);
        assert_eq!(c.events_by_name.len(), 2);
    }
}
