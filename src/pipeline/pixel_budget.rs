//! Requests to Meta in flight, counted per pixel across every run of the process.
//!
//! Meta rate-limits the Conversions API by dataset (pixel) and app, not by our models: ten
//! models sending to one pixel share one limit. So the requests in flight, their adaptive
//! limit (starting at `meta.concurrency`, grown while Meta answers fast and calm up to
//! `meta.max_concurrency`, halved when Meta throttles or warns: `adaptive_limit.rs`) and the
//! wait after a throttled answer belong to the pixel, and every run of the pixel takes its
//! request slots from the same budget.
//!
//! The slots are a tokio `Semaphore` with one permit per request the limit allows. The limit
//! moves while requests are in flight, so a lower limit withdraws free permits at once and
//! owes the rest: slots given back while the pixel owes are not returned to the semaphore.

use super::adaptive_limit::AdaptiveLimit;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The budgets of the pixels this process sends to, made on first use.
#[derive(Clone, Default)]
pub struct PixelBudgets {
    budgets: Arc<Mutex<HashMap<String, Arc<PixelBudget>>>>,
}

impl PixelBudgets {
    /// The pixel's budget: `start` requests in flight at first (`meta.concurrency`), `max` at
    /// most (`meta.max_concurrency`).
    pub fn pixel(&self, pixel_id: &str, start: usize, max: usize) -> Arc<PixelBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let budget = budgets
            .entry(pixel_id.to_string())
            .or_insert_with(|| Arc::new(PixelBudget::new(pixel_id, start, max)))
            .clone();
        budget.set_bounds(start, max);
        budget
    }
}

/// One pixel's requests in flight and their adaptive limit (additive increase while answers
/// stay fast, multiplicative decrease on throttles), shared by the runs sending to it.
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
    /// The limit, and what it is learned from.
    adaptive: AdaptiveLimit,
    /// The requests the semaphore's permits stand for (the limit, once moved).
    limit: usize,
    /// Permits to withdraw as requests in flight end, after the limit dropped below the
    /// requests in flight.
    owed: usize,
    seen_throttles: u64,
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
    fn new(pixel_id: &str, start: usize, max: usize) -> PixelBudget {
        let adaptive = AdaptiveLimit::new(start, max);
        let limit = adaptive.limit();
        PixelBudget {
            pixel_id: pixel_id.to_string(),
            pace: Mutex::new(Pace {
                adaptive,
                limit,
                owed: 0,
                seen_throttles: 0,
                hold_until: None,
            }),
            throttles: AtomicU64::new(0),
            slots: Semaphore::new(limit),
        }
    }

    fn pace(&self) -> std::sync::MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_bounds(&self, start: usize, max: usize) {
        let mut pace = self.pace();
        pace.adaptive.set_bounds(start, max);
        let limit = pace.adaptive.limit();
        if limit != pace.limit {
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
            if self.slots.available_permits() == 0 {
                self.pace().adaptive.saturated();
            }
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

    /// A slot if the pixel has one free now and no throttled answer asks to wait; never waits.
    pub fn try_acquire(self: &Arc<Self>) -> Option<RequestSlot> {
        if self.held_until().is_some() {
            return None;
        }
        self.slots.try_acquire().ok()?.forget();
        if self.slots.available_permits() == 0 {
            self.pace().adaptive.saturated();
        }
        Some(RequestSlot {
            budget: self.clone(),
        })
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

    /// Meta accepted a request of the pixel after `latency`, reporting `usage_percent` of a
    /// rate limit if it sent usage headers.
    pub fn answered(&self, latency: Duration, usage_percent: Option<u32>) {
        self.pace().adaptive.answered(latency, usage_percent);
    }

    /// After a batch of any run of the pixel: halves the limit if Meta throttled since the
    /// last batch, else counts a calm batch and, after a window of them, moves the limit by
    /// what the window's answers showed (see `adaptive_limit.rs`).
    pub fn after_batch(&self, model: &str) {
        let throttles = self.throttles.load(Ordering::Relaxed);
        let mut pace = self.pace();
        let throttled = throttles > pace.seen_throttles;
        pace.seen_throttles = throttles;
        let before = pace.limit;
        let limit = pace.adaptive.after_batch(throttled);
        if limit == before {
            return;
        }
        if throttled && limit < before {
            warn!(
                model,
                pixel_id = %self.pixel_id,
                in_flight = limit,
                "Meta is throttling; lowering the pixel's requests in flight"
            );
        } else {
            debug!(
                model,
                pixel_id = %self.pixel_id,
                in_flight = limit,
                "requests in flight for the pixel moved"
            );
        }
        self.set_limit(&mut pace, limit);
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
        let pixel = budgets.pixel("1", 2, 2);
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
                let pixel = budgets.pixel("1", 3, 3);
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
        let other = budgets.pixel("2", 3, 3);
        let _a = other.acquire().await;
        assert_eq!(budgets.pixel("1", 3, 3).busy(), 0);
    }

    #[tokio::test]
    async fn a_throttle_seen_by_one_run_halves_the_limit_for_the_other() {
        let budgets = PixelBudgets::default();
        let seen_by = budgets.pixel("1", 8, 8);
        let other = budgets.pixel("1", 8, 8);
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
        for i in 0..super::super::adaptive_limit::WINDOW_BATCHES {
            let run = if i % 2 == 0 { &seen_by } else { &other };
            run.after_batch("a");
        }
        assert_eq!(other.limit(), 5);
        // Never below one.
        let single = budgets.pixel("2", 1, 1);
        single.throttled();
        single.after_batch("c");
        assert_eq!(single.limit(), 1);
    }

    #[tokio::test]
    async fn a_spare_slot_is_given_only_when_free_and_not_held() {
        let budgets = PixelBudgets::default();
        let pixel = budgets.pixel("1", 2, 2);
        let _first = pixel.acquire().await;
        let second = pixel.try_acquire().expect("one of two slots is free");
        assert_eq!(pixel.busy(), 2);
        assert!(pixel.try_acquire().is_none(), "a third slot of two");
        drop(second);
        assert_eq!(pixel.busy(), 1);
        // A throttled answer asked the pixel to wait: no spare slot either.
        pixel.hold_until(Instant::now() + Duration::from_secs(60));
        assert!(pixel.try_acquire().is_none(), "a slot during the back-off");
        assert_eq!(pixel.busy(), 1);
    }

    #[tokio::test]
    async fn no_request_of_the_pixel_starts_while_a_throttled_answer_asks_to_wait() {
        let budgets = PixelBudgets::default();
        let pixel = budgets.pixel("1", 4, 4);
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
        let pixel = budgets.pixel("1", 4, 4);
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
        // A lower max (another run's `meta.max_concurrency`) lowers the limit too.
        budgets.pixel("1", 1, 1);
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

    #[tokio::test]
    async fn fast_calm_answers_with_every_slot_taken_open_one_more_slot() {
        use super::super::adaptive_limit::WINDOW_BATCHES;
        let budgets = PixelBudgets::default();
        let pixel = budgets.pixel("1", 2, 3);
        for _ in 0..WINDOW_BATCHES {
            let slots: Vec<_> = futures::future::join_all((0..2).map(|_| pixel.acquire())).await;
            pixel.answered(Duration::from_millis(300), None);
            drop(slots);
            pixel.after_batch("a");
        }
        assert_eq!(pixel.limit(), 3);
        let _slots: Vec<_> = futures::future::join_all((0..3).map(|_| pixel.acquire())).await;
        assert_eq!(pixel.busy(), 3);
        let fourth = tokio::time::timeout(Duration::from_millis(50), pixel.acquire()).await;
        assert!(
            fourth.is_err(),
            "a fourth request started over the maximum of 3"
        );
    }
}
