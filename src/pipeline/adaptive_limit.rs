//! How many requests a pixel may have in flight, found as the runs go (pure logic, driven by
//! [`super::pixel_budget::PixelBudget`]).
//!
//! The limit starts at `meta.concurrency`. Meta's answers take about 300 ms whatever the
//! number of requests in flight, until the pixel nears its rate limit, so a fixed small
//! number leaves a large backfill waiting on latency (4 in flight move about 12 000 events/s,
//! 16 about 40 000). The limit therefore grows by one after each window of
//! [`WINDOW_BATCHES`] acknowledged batches (or as many accepted requests, when batches
//! bisect rejected requests) in which every slot was taken, no answer was
//! throttled or reported usage near a limit, and the answers came about as fast as the best
//! window seen (TCP Vegas's rule, for requests: when more requests in flight only make each
//! answer slower, the server is saturated, and more would only queue). It never exceeds
//! `meta.max_concurrency`.
//!
//! It backs off as before: halved on a throttled answer or a usage header near the limit
//! (multiplicative decrease; Meta's advice on rate limits is to slow down as usage nears
//! 100%, <https://developers.facebook.com/docs/graph-api/overview/rate-limiting>), and grown
//! back by one per calm window up to `meta.concurrency`. Answers twice as slow as the best
//! window take one slot back, down to `meta.concurrency`; at `meta.concurrency` the latency
//! is measured afresh, so a Graph API that became slower for everyone is the new baseline.

use std::time::Duration;

/// Acknowledged batches (of any run of the pixel) between two steps of the limit.
pub(super) const WINDOW_BATCHES: u32 = 8;

/// A window whose mean answer time is within this factor of the best window's lets the limit
/// grow: the extra requests in flight did not make the answers materially slower.
const GROW_WITHIN: f64 = 1.25;

/// A window whose mean answer time is this factor above the best window's takes one request
/// in flight back (never below `meta.concurrency`): the requests queue at the server.
const SHRINK_ABOVE: f64 = 2.0;

/// Usage of a Meta rate limit (percent, from the `X-Business-Use-Case-Usage` and
/// `X-App-Usage` headers) from which the limit no longer grows. At 90% it is halved (see
/// `send::NEAR_LIMIT_PERCENT`).
pub(super) const HOLD_AT_USAGE_PERCENT: u32 = 75;

/// The limit and what the current window has seen.
#[derive(Debug, Clone)]
pub(super) struct AdaptiveLimit {
    limit: usize,
    /// `meta.concurrency`: where the limit starts, and the floor of latency-driven steps.
    start: usize,
    /// `meta.max_concurrency`.
    max: usize,
    /// Batches since the last step.
    batches: u32,
    /// Answer times of the window.
    latency_sum: Duration,
    answers: u32,
    /// Every slot was taken at some point of the window: the limit, not the run, held the
    /// requests back. A run that never fills its slots learns nothing from more of them.
    saturated: bool,
    /// An answer of the window reported usage of [`HOLD_AT_USAGE_PERCENT`] or more.
    near_limit: bool,
    /// The best (lowest) mean answer time of a window, in seconds.
    best: Option<f64>,
}

impl AdaptiveLimit {
    pub(super) fn new(start: usize, max: usize) -> AdaptiveLimit {
        let start = start.max(1);
        AdaptiveLimit {
            limit: start,
            start,
            max: max.max(start),
            batches: 0,
            latency_sum: Duration::ZERO,
            answers: 0,
            saturated: false,
            near_limit: false,
            best: None,
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// New bounds (another run's config); the limit is brought within them.
    pub(super) fn set_bounds(&mut self, start: usize, max: usize) {
        self.start = start.max(1);
        self.max = max.max(self.start);
        self.limit = self.limit.min(self.max);
    }

    /// Meta answered a request (accepted) after `latency`, reporting `usage_percent` of its
    /// nearest rate limit if it sent usage headers.
    pub(super) fn answered(&mut self, latency: Duration, usage_percent: Option<u32>) {
        self.latency_sum += latency;
        self.answers += 1;
        if usage_percent.is_some_and(|p| p >= HOLD_AT_USAGE_PERCENT) {
            self.near_limit = true;
        }
    }

    /// Every slot of the limit is taken.
    pub(super) fn saturated(&mut self) {
        self.saturated = true;
    }

    /// After a batch: `throttled` when Meta throttled (or warned) since the last batch.
    /// Gives the new limit.
    pub(super) fn after_batch(&mut self, throttled: bool) -> usize {
        if throttled {
            self.limit = (self.limit / 2).max(1);
            self.new_window();
            return self.limit;
        }
        self.batches += 1;
        // A window is as many batches, or as many accepted requests: a batch bisecting a
        // rejected request sends a dozen, and its answers measure the pace as well.
        if self.batches < WINDOW_BATCHES && self.answers < WINDOW_BATCHES {
            return self.limit;
        }
        let mean =
            (self.answers > 0).then(|| self.latency_sum.as_secs_f64() / f64::from(self.answers));
        let (saturated, near_limit) = (self.saturated, self.near_limit);
        self.new_window();
        if self.limit < self.start {
            // Recovering from a throttle: back up to the configured level, one at a time.
            self.limit += 1;
            return self.limit;
        }
        let Some(mean) = mean else {
            return self.limit;
        };
        let best = match self.best {
            // At the configured level our own extra requests are not in play: what Meta
            // answers now is the baseline.
            Some(best) if self.limit > self.start => best.min(mean),
            _ => mean,
        };
        self.best = Some(best);
        if mean > best * SHRINK_ABOVE {
            self.limit = (self.limit - 1).max(self.start);
        } else if saturated && !near_limit && mean <= best * GROW_WITHIN && self.limit < self.max {
            self.limit += 1;
        }
        self.limit
    }

    fn new_window(&mut self) {
        self.batches = 0;
        self.latency_sum = Duration::ZERO;
        self.answers = 0;
        self.saturated = false;
        self.near_limit = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(300);

    /// One window of batches, each answered after `latency`, with every slot taken.
    fn window(l: &mut AdaptiveLimit, latency: Duration) -> usize {
        for _ in 0..WINDOW_BATCHES {
            l.saturated();
            l.answered(latency, None);
            l.after_batch(false);
        }
        l.limit()
    }

    #[test]
    fn grows_by_one_per_window_while_answers_stay_fast() {
        let mut l = AdaptiveLimit::new(4, 16);
        assert_eq!(l.limit(), 4);
        assert_eq!(window(&mut l, FAST), 5);
        assert_eq!(window(&mut l, FAST), 6);
        for _ in 0..5 {
            window(&mut l, FAST);
        }
        assert_eq!(l.limit(), 11);
    }

    #[test]
    fn a_batch_bisecting_a_rejected_request_fills_a_window_with_its_answers() {
        let mut l = AdaptiveLimit::new(4, 16);
        assert_eq!(window(&mut l, FAST), 5);
        // One batch, its whole request rejected and its pieces accepted one by one.
        l.saturated();
        for _ in 0..WINDOW_BATCHES {
            l.answered(FAST, None);
        }
        assert_eq!(l.after_batch(false), 6);
        // Fewer answers than a window, in fewer batches than one: no step yet.
        l.saturated();
        l.answered(FAST, None);
        assert_eq!(l.after_batch(false), 6);
    }

    #[test]
    fn never_exceeds_the_maximum() {
        let mut l = AdaptiveLimit::new(4, 16);
        for _ in 0..100 {
            assert!(window(&mut l, FAST) <= 16);
        }
        assert_eq!(l.limit(), 16);
    }

    #[test]
    fn does_not_grow_when_the_slots_are_not_all_taken() {
        let mut l = AdaptiveLimit::new(4, 16);
        for _ in 0..(4 * WINDOW_BATCHES) {
            l.answered(FAST, None);
            l.after_batch(false);
        }
        assert_eq!(l.limit(), 4);
    }

    /// A saturated server: each answer takes longer the more requests wait at it, beyond 8.
    #[test]
    fn stops_growing_once_more_requests_only_make_answers_slower() {
        let mut l = AdaptiveLimit::new(4, 32);
        for _ in 0..200 {
            let queued = l.limit().saturating_sub(8) as u32;
            window(&mut l, FAST + FAST * queued / 6);
        }
        // 8 answer as fast as 4; with 9 the answers are 1.17x slower (within 1.25x), with
        // 10 1.33x: the limit stays there and never reaches the maximum.
        assert_eq!(l.limit(), 10, "the limit under a server saturated at 8");
    }

    #[test]
    fn takes_slots_back_when_answers_become_much_slower_but_not_below_the_configured_level() {
        let mut l = AdaptiveLimit::new(4, 16);
        for _ in 0..6 {
            window(&mut l, FAST);
        }
        assert_eq!(l.limit(), 10);
        assert_eq!(window(&mut l, FAST * 3), 9);
        for _ in 0..5 {
            window(&mut l, FAST * 3);
        }
        assert_eq!(
            l.limit(),
            4,
            "one slot back per slow window, down to the configured 4"
        );
        // At the configured level the slower answers are the new baseline: a Graph API slow
        // for everyone is not one saturated by our requests, and the limit grows again.
        assert_eq!(window(&mut l, FAST * 3), 5);
    }

    #[test]
    fn a_throttle_halves_the_limit_and_it_grows_back() {
        let mut l = AdaptiveLimit::new(4, 16);
        for _ in 0..8 {
            window(&mut l, FAST);
        }
        assert_eq!(l.limit(), 12);
        assert_eq!(l.after_batch(true), 6);
        assert_eq!(l.after_batch(true), 3);
        // Back to the configured level one step per calm window, then on by latency.
        assert_eq!(window(&mut l, FAST), 4);
        assert_eq!(window(&mut l, FAST), 5);
    }

    #[test]
    fn never_below_one() {
        let mut l = AdaptiveLimit::new(1, 4);
        assert_eq!(l.after_batch(true), 1);
        assert_eq!(l.after_batch(true), 1);
        let mut l = AdaptiveLimit::new(3, 4);
        for _ in 0..5 {
            l.after_batch(true);
        }
        assert_eq!(l.limit(), 1);
    }

    #[test]
    fn usage_near_a_rate_limit_holds_the_limit() {
        let mut l = AdaptiveLimit::new(4, 16);
        for _ in 0..5 {
            for _ in 0..WINDOW_BATCHES {
                l.saturated();
                l.answered(FAST, Some(HOLD_AT_USAGE_PERCENT));
                l.after_batch(false);
            }
        }
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn the_limit_stays_fixed_when_the_maximum_is_the_configured_level() {
        let mut l = AdaptiveLimit::new(4, 4);
        for _ in 0..10 {
            window(&mut l, FAST);
        }
        assert_eq!(l.limit(), 4);
        // Lower bounds from another run's config bring the limit down at once.
        l.set_bounds(2, 2);
        assert_eq!(l.limit(), 2);
    }
}
