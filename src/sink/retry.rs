//! Retry policy as data plus a pure function: capped exponential backoff with full jitter,
//! and `Retry-After` honoured within a cap.

use super::ErrorClass;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Throttling waits at least this long (Meta's rate-limit blocks last 60-300 s).
    pub throttle_base: Duration,
    pub throttle_cap: Duration,
}

impl RetryPolicy {
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
            throttle_base: Duration::from_secs(2),
            throttle_cap: Duration::from_secs(300),
        }
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1), or None when the
    /// error must not be retried or attempts are used up. `jitter` is uniform in [0, 1).
    pub fn delay(
        &self,
        class: ErrorClass,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let (base, cap) = match class {
            ErrorClass::Transient => (self.base, self.cap),
            ErrorClass::Throttled => (self.throttle_base, self.throttle_cap),
            // Asking again gets the same answer: stop (or bisect) at once.
            ErrorClass::Auth
            | ErrorClass::Invalid
            | ErrorClass::Unexpected
            | ErrorClass::NotGraph
            | ErrorClass::RetiredVersion => return None,
        };
        let exp = base.saturating_mul(1u32 << (attempt - 1).min(16)).min(cap);
        let jittered = exp.mul_f64(jitter.clamp(0.0, 1.0));
        let floor = retry_after.map(|r| r.min(cap)).unwrap_or(Duration::ZERO);
        Some(jittered.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::new(20);
        let full = |a| p.delay(ErrorClass::Transient, a, None, 0.999_999).unwrap();
        assert!(full(1) < full(2) && full(2) < full(3));
        assert!(full(19) <= p.cap);
        assert_eq!(
            p.delay(ErrorClass::Transient, 3, None, 0.0),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_is_a_floor_within_the_cap() {
        let p = RetryPolicy::new(5);
        let d = p
            .delay(ErrorClass::Throttled, 1, Some(Duration::from_secs(7)), 0.0)
            .unwrap();
        assert_eq!(d, Duration::from_secs(7));
        let d = p
            .delay(
                ErrorClass::Throttled,
                1,
                Some(Duration::from_secs(9999)),
                0.0,
            )
            .unwrap();
        assert_eq!(d, p.throttle_cap);
    }

    #[test]
    fn auth_invalid_unexpected_and_not_graph_are_never_retried_and_attempts_run_out() {
        let p = RetryPolicy::new(3);
        assert_eq!(p.delay(ErrorClass::Auth, 1, None, 0.5), None);
        assert_eq!(p.delay(ErrorClass::Invalid, 1, None, 0.5), None);
        assert_eq!(p.delay(ErrorClass::Unexpected, 1, None, 0.5), None);
        assert_eq!(p.delay(ErrorClass::NotGraph, 1, None, 0.5), None);
        assert_eq!(p.delay(ErrorClass::RetiredVersion, 1, None, 0.5), None);
        assert!(p.delay(ErrorClass::Transient, 2, None, 0.5).is_some());
        assert_eq!(p.delay(ErrorClass::Transient, 3, None, 0.5), None);
    }
}
