//! Each model's lag over time, as this service measured it (after each run and every
//! `BACKLOG_REFRESH`): the runs table keeps no lag, so the history starts with the service and
//! holds the last [`LAG_SAMPLES`] measurements per model, in memory only.

use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Measurements kept per model: six hours at one a minute.
pub const LAG_SAMPLES: usize = 360;

/// One model's measurements: when, and the lag in seconds.
type Samples = VecDeque<(DateTime<Utc>, f64)>;

/// The lag measurements of every model, shared by the service's backlog refresher (which
/// records) and the dashboard (which draws).
#[derive(Clone, Default)]
pub struct LagHistory {
    inner: Arc<Mutex<HashMap<String, Samples>>>,
}

impl std::fmt::Debug for LagHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LagHistory")
    }
}

impl LagHistory {
    /// Records `model`'s lag in seconds, measured at `at`.
    pub fn record(&self, model: &str, at: DateTime<Utc>, lag_seconds: f64) {
        let mut all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let samples = all.entry(model.to_string()).or_default();
        if samples.len() == LAG_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((at, lag_seconds.max(0.0)));
    }

    /// `model`'s measurements, oldest first.
    pub fn of(&self, model: &str) -> Vec<(DateTime<Utc>, f64)> {
        let all = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        all.get(model)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_latest_samples_per_model() {
        let h = LagHistory::default();
        let t0 = Utc::now();
        for i in 0..(LAG_SAMPLES + 5) {
            h.record("leads", t0 + chrono::Duration::seconds(i as i64), i as f64);
        }
        h.record("orders", t0, -3.0);
        let leads = h.of("leads");
        assert_eq!(leads.len(), LAG_SAMPLES);
        assert_eq!(leads[0].1, 5.0, "the oldest went first");
        assert_eq!(h.of("orders"), vec![(t0, 0.0)]);
        assert!(h.of("nope").is_empty());
    }
}
