//! Flow control: request slots and the pacer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::warn;

/// Requests to Meta in flight for one run. A batch holds its slot from before its first
/// request until Meta's last answer, not through its ledger write, so a busy ledger writer
/// does not hold back the next requests (with eight in flight, the batching loop used to wait
/// on the oldest batch's write while the other seven had long been answered).
#[derive(Default)]
pub(super) struct RequestSlots {
    pub(super) busy: Arc<AtomicUsize>,
    pub(super) freed: Arc<Notify>,
}

/// One request slot; freed when dropped.
pub(super) struct RequestSlot {
    pub(super) busy: Arc<AtomicUsize>,
    pub(super) freed: Arc<Notify>,
}

impl RequestSlots {
    /// Waits until fewer than `limit` slots are taken, then takes one. Only the batching loop
    /// takes slots.
    pub(super) async fn acquire(&self, limit: usize) -> RequestSlot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.busy.load(Ordering::Acquire) < limit.max(1) {
                self.busy.fetch_add(1, Ordering::AcqRel);
                return RequestSlot {
                    busy: self.busy.clone(),
                    freed: self.freed.clone(),
                };
            }
            freed.await;
        }
    }

    #[cfg(test)]
    pub(super) fn taken(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Requests in flight for one model: halved when Meta throttles, grown back by one after
/// a run of calm batches (additive increase, multiplicative decrease).
pub(super) struct Pacer {
    pub(super) limit: usize,
    pub(super) max: usize,
    pub(super) seen_throttles: u64,
    pub(super) calm: u32,
}

impl Pacer {
    pub(super) fn new(max: usize) -> Pacer {
        Pacer {
            limit: max.max(1),
            max: max.max(1),
            seen_throttles: 0,
            calm: 0,
        }
    }

    pub(super) fn after_batch(&mut self, throttles: u64, model: &str) {
        if throttles > self.seen_throttles {
            self.seen_throttles = throttles;
            self.calm = 0;
            let lower = (self.limit / 2).max(1);
            if lower < self.limit {
                warn!(
                    model,
                    in_flight = lower,
                    "Meta is throttling; lowering requests in flight"
                );
            }
            self.limit = lower;
        } else if self.limit < self.max {
            self.calm += 1;
            if self.calm >= 8 {
                self.calm = 0;
                self.limit += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_request_slot_is_taken_again_only_once_one_is_dropped() {
        let slots = RequestSlots::default();
        let first = slots.acquire(2).await;
        let _second = slots.acquire(2).await;
        assert_eq!(slots.taken(), 2);
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire(2)).await;
        assert!(
            third.is_err(),
            "a third slot was given while two of two were taken"
        );
        drop(first);
        let _third = tokio::time::timeout(Duration::from_secs(5), slots.acquire(2))
            .await
            .expect("a slot is free again");
        assert_eq!(slots.taken(), 2);
        // A lower limit (Meta throttling) is honoured by the next acquire.
        let fourth = tokio::time::timeout(Duration::from_millis(50), slots.acquire(1)).await;
        assert!(fourth.is_err());
    }

    #[test]
    fn pacer_halves_on_throttling_and_recovers_slowly() {
        let mut p = Pacer::new(16);
        p.after_batch(1, "m");
        assert_eq!(p.limit, 8);
        p.after_batch(3, "m");
        assert_eq!(p.limit, 4);
        for _ in 0..8 {
            p.after_batch(3, "m");
        }
        assert_eq!(p.limit, 5);
        let mut floor = Pacer::new(1);
        floor.after_batch(5, "m");
        assert_eq!(floor.limit, 1);
    }
}
