//! Requests to Meta in flight, counted per pixel across every run of the process.
//!
//! Meta rate-limits the Conversions API by dataset (pixel) and app, not by our models: ten
//! models sending to one pixel share one limit. So the requests in flight (`meta.concurrency`
//! at most), their adaptive limit (halved when Meta throttles or warns, grown back by one
//! after a run of calm batches) and the wait after a throttled answer belong to the pixel, and
//! every run of the pixel takes its request slots from the same budget.
//!
//! The slots are a tokio `Semaphore` with one permit per request the limit allows. The limit
//! moves while requests are in flight, so a lower limit withdraws free permits at once and
//! owes the rest: slots given back while the pixel owes are not returned to the semaphore.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::warn;

/// Calm batches (no new throttle) after which a lowered limit grows by one.
const CALM_BATCHES: u32 = 8;

/// The budgets of the pixels this process sends to, made on first use.
#[derive(Clone, Default)]
pub struct PixelBudgets {
    budgets: Arc<Mutex<HashMap<String, Arc<PixelBudget>>>>,
}

impl PixelBudgets {
    /// The pixel's budget, allowing at most `max` requests in flight (`meta.concurrency`).
    pub fn pixel(&self, pixel_id: &str, max: usize) -> Arc<PixelBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let budget = budgets
            .entry(pixel_id.to_string())
            .or_insert_with(|| Arc::new(PixelBudget::new(pixel_id, max)))
            .clone();
        budget.set_max(max);
        budget
    }
}

/// One pixel's requests in flight and their adaptive limit (additive increase, multiplicative
/// decrease), shared by the runs sending to it.
pub struct PixelBudget {
    pixel_id: String,
    pace: Mutex<Pace>,
    /// Throttled (or near-limit) answers seen by any run of the pixel.
    throttles: AtomicU64,
    /// One permit per request that may start now: the limit, less the requests in flight,
    /// less what [`Pace::owed`] says is still to withdraw.
    slots: Semaphore,
}

struct Pace {
    limit: usize,
    /// Permits to withdraw as requests in flight end, after the limit dropped below the
    /// requests in flight.
    owed: usize,
    max: usize,
    seen_throttles: u64,
    calm: u32,
    /// No new request starts before this: Meta asked one of the pixel's requests to wait.
    hold_until: Option<Instant>,
}

/// One request slot of a pixel; freed when dropped. A batch holds its slot from before its
/// first request until Meta's last answer, not through its ledger write, so a busy ledger
/// writer does not hold back the next requests.
pub struct RequestSlot {
    budget: Arc<PixelBudget>,
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.budget.give_back();
    }
}

impl PixelBudget {
    fn new(pixel_id: &str, max: usize) -> PixelBudget {
        let max = max.max(1);
        PixelBudget {
            pixel_id: pixel_id.to_string(),
            pace: Mutex::new(Pace {
                limit: max,
                owed: 0,
                max,
                seen_throttles: 0,
                calm: 0,
                hold_until: None,
            }),
            throttles: AtomicU64::new(0),
            slots: Semaphore::new(max),
        }
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_max(&self, max: usize) {
        let mut pace = self.pace();
        let max = max.max(1);
        if pace.max != max {
            pace.max = max;
            let limit = pace.limit.min(max);
            self.set_limit(&mut pace, limit);
        }
    }

    /// Moves the limit, adding or withdrawing permits to match. Called with the pace held,
    /// so a returning slot sees what is owed.
    fn set_limit(&self, pace: &mut Pace, limit: usize) {
        if limit < pace.limit {
            let lower_by = pace.limit - limit;
            let withdrawn = self.slots.forget_permits(lower_by);
            pace.owed += lower_by - withdrawn;
        } else {
            let mut raise_by = limit - pace.limit;
            let forgiven = raise_by.min(pace.owed);
            pace.owed -= forgiven;
            raise_by -= forgiven;
            self.slots.add_permits(raise_by);
        }
        pace.limit = limit;
    }

    /// Requests the pixel may have in flight now.
    pub fn limit(&self) -> usize {
        self.pace().limit
    }

    /// Waits until the pixel has fewer requests in flight than its limit, and no throttled
    /// answer asks to wait, then takes a slot.
    pub async fn acquire(self: &Arc<Self>) -> RequestSlot {
        loop {
            self.wait_out_hold().await;
            // The semaphore is never closed, so acquiring only waits.
            let Ok(permit) = self.slots.acquire().await else {
                unreachable!("the pixel's semaphore is never closed")
            };
            permit.forget();
            // A throttled answer may have asked to wait while this one queued: then the
            // permit goes back and the wait starts again.
            if self.held_until().is_none() {
                return RequestSlot {
                    budget: self.clone(),
                };
            }
            self.give_back();
        }
    }

    /// A permit taken (and forgotten) comes back, unless the lowered limit still owes one.
    fn give_back(&self) {
        let mut pace = self.pace();
        if pace.owed > 0 {
            pace.owed -= 1;
        } else {
            self.slots.add_permits(1);
        }
    }

    /// The end of the wait a throttled answer asked for, if it is still ahead.
    fn held_until(&self) -> Option<Instant> {
        let mut pace = self.pace();
        match pace.hold_until {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                pace.hold_until = None;
                None
            }
        }
    }

    async fn wait_out_hold(&self) {
        while let Some(until) = self.held_until() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Meta throttled a request of the pixel (or warned it is near its limit): the limit is
    /// halved at the next batch's end, whichever run's it is.
    pub fn throttled(&self) {
        self.throttles.fetch_add(1, Ordering::Relaxed);
    }

    /// Meta asked a request of the pixel to wait `until` before trying again: the pixel's
    /// other requests would be throttled alike, so no new one starts before then.
    pub fn hold_until(&self, until: Instant) {
        let mut pace = self.pace();
        if pace.hold_until.is_none_or(|held| held < until) {
            pace.hold_until = Some(until);
        }
    }

    /// After a batch of any run of the pixel: halves the limit if Meta throttled since the
    /// last batch, else counts a calm batch and, after enough of them, allows one more.
    pub fn after_batch(&self, model: &str) {
        let throttles = self.throttles.load(Ordering::Relaxed);
        let mut pace = self.pace();
        if throttles > pace.seen_throttles {
            pace.seen_throttles = throttles;
            pace.calm = 0;
            let lower = (pace.limit / 2).max(1);
            if lower < pace.limit {
                warn!(
                    model,
                    pixel_id = %self.pixel_id,
                    in_flight = lower,
                    "Meta is throttling; lowering the pixel's requests in flight"
                );
            }
            self.set_limit(&mut pace, lower);
        } else if pace.limit < pace.max {
            pace.calm += 1;
            if pace.calm >= CALM_BATCHES {
                pace.calm = 0;
                let higher = pace.limit + 1;
                self.set_limit(&mut pace, higher);
            }
        }
    }

    /// Requests in flight: the permits the limit allows, less the free ones, plus those
    /// still owed (given out before the limit dropped).
    #[cfg(test)]
    fn busy(&self) -> usize {
        let pace = self.pace();
        pace.limit + pace.owed - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn a_slot_is_taken_again_only_once_one_is_dropped() {
        let budgets = PixelBudgets::default();
        let pixel = budgets.pixel("1", 2);
        let first = pixel.acquire().await;
        let _second = pixel.acquire().await;
        assert_eq!(pixel.busy(), 2);
        let third = tokio::time::timeout(Duration::from_millis(50), pixel.acquire()).await;
        assert!(
            third.is_err(),
            "a third slot was given while two of two were taken"
        );
        drop(first);
        let _third = tokio::time::timeout(Duration::from_secs(5), pixel.acquire())
            .await
            .expect("a slot is free again");
        assert_eq!(pixel.busy(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_runs_on_one_pixel_never_exceed_its_limit_together() {
        let budgets = PixelBudgets::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let run = |budgets: PixelBudgets| {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            tokio::spawn(async move {
                // Each run asks for the pixel's budget as a run does, with the configured max.
                let pixel = budgets.pixel("1", 3);
                for _ in 0..40 {
                    let slot = pixel.acquire().await;
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                }
            })
        };
        // Several requests of each run at once, as a run keeps several batches in flight.
        let tasks: Vec<_> = (0..6).map(|_| run(budgets.clone())).collect();
        for t in tasks {
            t.await.unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!(
            peak <= 3,
            "{peak} requests of the pixel were in flight at once"
        );
        assert!(peak > 1, "the runs never sent side by side");
        // Another pixel has a budget of its own.
        let other = budgets.pixel("2", 3);
        let _a = other.acquire().await;
        assert_eq!(budgets.pixel("1", 3).busy(), 0);
    }

    #[tokio::test]
    async fn a_throttle_seen_by_one_run_halves_the_limit_for_the_other() {
        let budgets = PixelBudgets::default();
        let seen_by = budgets.pixel("1", 8);
        let other = budgets.pixel("1", 8);
        seen_by.throttled();
        // The other run's batch ends first: the pixel's limit is halved all the same.
        other.after_batch("b");
        assert_eq!(other.limit(), 4);
        assert_eq!(seen_by.limit(), 4);
        let slots: Vec<_> = futures::future::join_all((0..4).map(|_| other.acquire())).await;
        let fifth = tokio::time::timeout(Duration::from_millis(50), seen_by.acquire()).await;
        assert!(fifth.is_err(), "a fifth request started under a limit of 4");
        drop(slots);
        // Grown back by one after calm batches, of either run.
        for i in 0..CALM_BATCHES {
            let run = if i % 2 == 0 { &seen_by } else { &other };
            run.after_batch("a");
        }
        assert_eq!(other.limit(), 5);
        // Never below one.
        let single = budgets.pixel("2", 1);
        single.throttled();
        single.after_batch("c");
        assert_eq!(single.limit(), 1);
    }

    #[tokio::test]
    async fn no_request_of_the_pixel_starts_while_a_throttled_answer_asks_to_wait() {
        let budgets = PixelBudgets::default();
        let pixel = budgets.pixel("1", 4);
        let until = Instant::now() + Duration::from_millis(200);
        pixel.hold_until(until);
        // An earlier wait asked later does not shorten it.
        pixel.hold_until(Instant::now());
        let _slot = pixel.acquire().await;
        assert!(
            Instant::now() >= until,
            "a request started during the pixel's back-off"
        );
    }

    #[tokio::test]
    async fn after_the_limit_drops_below_the_requests_in_flight_none_starts_until_fewer_fly() {
        let budgets = PixelBudgets::default();
        let pixel = budgets.pixel("1", 4);
        let mut slots: Vec<_> = futures::future::join_all((0..4).map(|_| pixel.acquire())).await;
        pixel.throttled();
        pixel.after_batch("a");
        assert_eq!(pixel.limit(), 2);
        // Two of four end: two still fly, as many as the new limit.
        slots.truncate(2);
        assert_eq!(pixel.busy(), 2);
        let early = tokio::time::timeout(Duration::from_millis(50), pixel.acquire()).await;
        assert!(
            early.is_err(),
            "a request started with 2 in flight under a limit of 2"
        );
        // A lower max (another run's `meta.concurrency`) lowers the limit too.
        budgets.pixel("1", 1);
        assert_eq!(pixel.limit(), 1);
        slots.truncate(1);
        let early = tokio::time::timeout(Duration::from_millis(50), pixel.acquire()).await;
        assert!(
            early.is_err(),
            "a request started with 1 in flight under a limit of 1"
        );
        slots.clear();
        let _next = tokio::time::timeout(Duration::from_secs(5), pixel.acquire())
            .await
            .expect("a slot once none flies");
        assert_eq!(pixel.busy(), 1);
        let extra = tokio::time::timeout(Duration::from_millis(50), pixel.acquire()).await;
        assert!(
            extra.is_err(),
            "a second request started under a limit of 1"
        );
    }
}
