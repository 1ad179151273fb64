//! Fault injection: failures, throttling, lost acknowledgements, latency and rejected events.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Faults the sandbox injects. All rates are fractions in `0.0..=1.0`; `Default` injects nothing.
///
/// Per request, in this order (only for requests to the events endpoint whose body decodes and
/// whose token is valid; others are answered with their 400/401 and consume no fault):
/// `fail_next` / `fail_after` / `fail_rate` (HTTP 500, code 2, transient), then `throttle_rate`
/// (HTTP 400, code 17, `Retry-After: 1`), then validation (where `reject_rate` and
/// `reject_event_ids` apply), then `drop_rate` (events recorded, connection closed unanswered).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fraction of requests answered HTTP 500 with a transient Graph error (code 2,
    /// `is_transient: true`). Their events are not recorded.
    pub fail_rate: f64,
    /// Fraction of requests answered as throttled: HTTP 400, code 17 "User request limit reached"
    /// (subcode 2446079, `is_transient: true`) with `Retry-After: 1` and an
    /// `X-Business-Use-Case-Usage` header. Their events are not recorded.
    pub throttle_rate: f64,
    /// Fraction of requests whose events are accepted and recorded, after which the connection is
    /// closed without any response bytes (a lost acknowledgement).
    pub drop_rate: f64,
    /// Delay before answering every request (`tokio::time::sleep`; other requests go on).
    pub slow_ms: u64,
    /// Fraction of events treated as invalid, chosen from a hash of `event_id` (FNV-1a 64 of the
    /// id, mod 10,000, below `reject_rate * 10,000`), so the same event is always rejected.
    /// Events without `event_id` are never chosen. A request holding such an event is rejected
    /// whole: HTTP 400, code 100, subcode 2804016 (a chosen subcode; see `mod.rs`).
    pub reject_rate: f64,
    /// Events with these ids are always invalid (same rejection as `reject_rate`).
    pub reject_event_ids: HashSet<String>,
    /// Seed of the random generator behind `fail_rate`, `throttle_rate` and `drop_rate`.
    pub seed: u64,
    /// Rate-limit usage (percent) reported on every accepted answer, in an
    /// `X-Business-Use-Case-Usage` header (`call_count`, `total_cputime` and `total_time` all
    /// at this value), as Meta reports usage before it throttles. 0 sends no header.
    pub usage_percent: u32,
}

impl Faults {
    /// Whether the event with this `event_id` is to be rejected.
    pub fn rejects_event(&self, event_id: &str) -> bool {
        if self.reject_event_ids.contains(event_id) {
            return true;
        }
        if self.reject_rate <= 0.0 {
            return false;
        }
        let threshold = (self.reject_rate.min(1.0) * 10_000.0).round() as u64;
        fnv1a64(event_id.as_bytes()) % 10_000 < threshold
    }
}

/// FNV-1a, 64 bit: stable across runs and platforms.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What the request-level faults decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    None,
    Fail,
    Throttle,
}

/// Runtime fault state shared by all connections.
pub struct FaultState {
    faults: Mutex<Arc<Faults>>,
    rng: Mutex<StdRng>,
    fail_next: AtomicU32,
    fail_after: AtomicU64,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        FaultState {
            rng: Mutex::new(StdRng::seed_from_u64(faults.seed)),
            faults: Mutex::new(Arc::new(faults)),
            fail_next: AtomicU32::new(0),
            fail_after: AtomicU64::new(u64::MAX),
        }
    }

    /// The faults in force (cheap: an `Arc` clone).
    pub fn current(&self) -> Arc<Faults> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the faults; the random generator is re-seeded from the new seed.
    pub fn set(&self, faults: Faults) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = StdRng::seed_from_u64(faults.seed);
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(faults);
    }

    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn fail_after(&self, accepted_requests: u64) {
        self.fail_after.store(accepted_requests, Ordering::SeqCst);
    }

    /// Decides the request-level faults. Always draws the same number of random values per
    /// request, so a seed gives the same sequence whatever rates are set.
    /// Returns the injected failure (if any) and whether the acknowledgement is to be dropped.
    pub fn decide(&self, faults: &Faults, accepted_so_far: u64) -> (Injected, bool) {
        let (r_fail, r_throttle, r_drop) = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (
                rng.random::<f64>(),
                rng.random::<f64>(),
                rng.random::<f64>(),
            )
        };
        let forced = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if forced
            || accepted_so_far >= self.fail_after.load(Ordering::SeqCst)
            || r_fail < faults.fail_rate
        {
            return (Injected::Fail, false);
        }
        if r_throttle < faults.throttle_rate {
            return (Injected::Throttle, false);
        }
        (Injected::None, r_drop < faults.drop_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_rate_is_deterministic_and_roughly_proportional() {
        let f = Faults {
            reject_rate: 0.1,
            ..Faults::default()
        };
        let hits = (0..10_000)
            .filter(|i| f.rejects_event(&format!("evt-{i}")))
            .count();
        assert!((800..1200).contains(&hits), "{hits}");
        for i in 0..100 {
            let id = format!("evt-{i}");
            assert_eq!(f.rejects_event(&id), f.rejects_event(&id));
        }
        assert!(!Faults::default().rejects_event("x"));
        let all = Faults {
            reject_rate: 1.0,
            ..Faults::default()
        };
        assert!(all.rejects_event("anything"));
    }

    #[test]
    fn fail_next_counts_down_and_fail_after_clears() {
        let s = FaultState::new(Faults::default());
        let f = Faults::default();
        s.fail_next(2);
        assert_eq!(s.decide(&f, 0).0, Injected::Fail);
        assert_eq!(s.decide(&f, 0).0, Injected::Fail);
        assert_eq!(s.decide(&f, 0).0, Injected::None);
        s.fail_after(3);
        assert_eq!(s.decide(&f, 2).0, Injected::None);
        assert_eq!(s.decide(&f, 3).0, Injected::Fail);
        s.fail_after(u64::MAX);
        assert_eq!(s.decide(&f, 3).0, Injected::None);
    }

    #[test]
    fn same_seed_same_sequence() {
        let f = Faults {
            fail_rate: 0.3,
            throttle_rate: 0.3,
            drop_rate: 0.3,
            seed: 7,
            ..Faults::default()
        };
        let a = FaultState::new(f.clone());
        let b = FaultState::new(f.clone());
        let sa: Vec<_> = (0..50).map(|_| a.decide(&f, 0)).collect();
        let sb: Vec<_> = (0..50).map(|_| b.decide(&f, 0)).collect();
        assert_eq!(sa, sb);
        assert!(sa.iter().any(|d| d.0 == Injected::Fail));
        assert!(sa.iter().any(|d| d.0 == Injected::Throttle));
        assert!(sa.iter().any(|d| d.1));
    }
}
