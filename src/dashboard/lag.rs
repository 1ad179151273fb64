//! Each model's lag over time, as this service measured it (after each run and every
//! `BACKLOG_REFRESH`): the last [`LAG_SAMPLES`] measurements per model, in memory. The first
//! measurement after each run is also kept with the run (`runs.lag_seconds`), so the line
//! reaches back before the service started: [`merged`] joins the two.

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

/// The lag line of a model: the lag after each run (from the runs table) up to the first of
/// this service's own measurements, then those. Both oldest first.
pub fn merged(
    after_runs: &[(DateTime<Utc>, f64)],
    measured: &[(DateTime<Utc>, f64)],
) -> Vec<(DateTime<Utc>, f64)> {
    let since = measured.first().map(|m| m.0);
    after_runs
        .iter()
        .filter(|(at, _)| since.is_none_or(|s| *at < s))
        .chain(measured)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runs_lag_comes_before_this_services_own_measurements() {
        let t0 = Utc::now();
        let t = |s: i64| t0 + chrono::Duration::seconds(s);
        let runs = [(t(0), 5.0), (t(100), 7.0), (t(300), 9.0)];
        let measured = [(t(200), 1.0), (t(260), 2.0), (t(320), 3.0)];
        assert_eq!(
            merged(&runs, &measured),
            vec![
                (t(0), 5.0),
                (t(100), 7.0),
                (t(200), 1.0),
                (t(260), 2.0),
                (t(320), 3.0)
            ]
        );
        assert_eq!(merged(&runs, &[]), runs.to_vec());
        assert_eq!(merged(&[], &measured), measured.to_vec());
    }

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
