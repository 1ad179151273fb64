//! The service's Prometheus metrics, written by hand in the text exposition format (0.0.4).
//! Counters end in `_total`; labels come from a small fixed set (`model`, `reason`, `class`),
//! so the number of series is bounded by models × refusal reasons × error classes. No label
//! ever carries customer data.

use crate::observer::RunObserver;
use crate::pipeline::{RunStatus, RunSummary};
use crate::sink::ErrorClass;
use crate::state::RefusedRow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the batch latency histogram, in seconds: a batch takes well under a second
/// when Meta is healthy; retries and throttling (up to 300 s waits) fill the upper buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds of the run start delay histogram, in seconds: how long after its schedule's
/// fire time a run started. Under a second when a run slot was free; beyond that, a run waited
/// for one (`service.max_concurrent_runs`), up to a whole schedule period or more.
pub const START_DELAY_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Cumulative counts per bucket of its bounds ([`LATENCY_BUCKETS`] or
    /// [`START_DELAY_BUCKETS`]).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64; LATENCY_BUCKETS.len()], secs: f64) {
        for (i, bound) in bounds.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Clone, Default)]
struct ModelMetrics {
    rows_read: u64,
    events_sent: u64,
    refused: BTreeMap<String, u64>,
    retries: BTreeMap<&'static str, u64>,
    throttles: u64,
    runs: u64,
    run_failures: u64,
    batch_latency: Histogram,
    start_delay: Histogram,
    last_success: Option<f64>,
    cursor_lag: Option<f64>,
    rows_waiting: Option<i64>,
}

/// Every model's counters and gauges since the service started.
#[derive(Debug, Default)]
pub struct Metrics {
    models: Mutex<BTreeMap<String, ModelMetrics>>,
    /// Due runs waiting for a free slot, and runs going (the scheduler's queue).
    queue: Mutex<(usize, usize)>,
    /// Woken at the end of every run, so the rows waiting and the lag are measured again
    /// right after a run moved the cursor.
    pub run_ended: tokio::sync::Notify,
    /// The models whose runs ended since [`Metrics::take_ended`] was last called: only theirs
    /// need measuring again (with hundreds of models, measuring them all after every run would
    /// keep the warehouse busy with aggregates).
    ended: Mutex<std::collections::BTreeSet<String>>,
}

fn class_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient => "transient",
        ErrorClass::Throttled => "throttled",
        ErrorClass::Auth => "auth",
        ErrorClass::Invalid => "invalid",
        ErrorClass::Unexpected => "unexpected",
        ErrorClass::NotGraph => "not_graph",
    }
}

impl Metrics {
    /// Metrics with a series for each of these models from the start (a counter that has
    /// not moved yet still shows as 0, so rates and alerts work from the first scrape).
    pub fn new<'a>(models: impl IntoIterator<Item = &'a str>) -> Metrics {
        let m = Metrics::default();
        {
            let mut all = m.lock();
            for name in models {
                all.entry(name.to_string()).or_default();
            }
        }
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ModelMetrics>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with(&self, model: &str, f: impl FnOnce(&mut ModelMetrics)) {
        let mut all = self.lock();
        match all.get_mut(model) {
            Some(m) => f(m),
            None => f(all.entry(model.to_string()).or_default()),
        }
    }

    /// The models whose runs ended since the last call.
    pub fn take_ended(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.ended.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// When the model last finished a run successfully (Unix seconds).
    pub fn set_last_success(&self, model: &str, at: chrono::DateTime<chrono::Utc>) {
        let secs = at.timestamp_millis() as f64 / 1000.0;
        self.with(model, |m| {
            if m.last_success.is_none_or(|s| s < secs) {
                m.last_success = Some(secs);
            }
        });
    }

    /// Rows waiting after the cursor, and the age of the oldest (None for integer cursors).
    pub fn set_backlog(&self, model: &str, rows_waiting: i64, lag_secs: Option<f64>) {
        self.with(model, |m| {
            m.rows_waiting = Some(rows_waiting);
            m.cursor_lag = match lag_secs {
                Some(secs) => Some(secs.max(0.0)),
                None if rows_waiting == 0 => Some(0.0),
                // An integer cursor has no age to report.
                None => None,
            };
        });
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let all = self.lock().clone();
        let (waiting, running) = *self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        };
        let per_model = |f: &dyn Fn(&str, &ModelMetrics) -> Vec<String>| -> Vec<String> {
            all.iter().flat_map(|(name, m)| f(name, m)).collect()
        };
        family(
            "capi_sync_rows_read_total",
            "counter",
            "Rows read from the warehouse.",
            per_model(&|n, m| {
                vec![sample(
                    "capi_sync_rows_read_total",
                    &[("model", n)],
                    m.rows_read as f64,
                )]
            }),
        );
        family(
            "capi_sync_events_sent_total",
            "counter",
            "Events Meta acknowledged.",
            per_model(&|n, m| {
                vec![sample(
                    "capi_sync_events_sent_total",
                    &[("model", n)],
                    m.events_sent as f64,
                )]
            }),
        );
        family(
            "capi_sync_rows_refused_total",
            "counter",
            "Rows not sent, by reason (see `capi-sync refused`).",
            per_model(&|n, m| {
                m.refused
                    .iter()
                    .map(|(r, v)| {
                        sample(
                            "capi_sync_rows_refused_total",
                            &[("model", n), ("reason", r)],
                            *v as f64,
                        )
                    })
                    .collect()
            }),
        );
        family(
            "capi_sync_retries_total",
            "counter",
            "Requests to the Graph API retried, by error class (transient or throttled).",
            per_model(&|n, m| {
                m.retries
                    .iter()
                    .map(|(c, v)| {
                        sample(
                            "capi_sync_retries_total",
                            &[("model", n), ("class", c)],
                            *v as f64,
                        )
                    })
                    .collect()
            }),
        );
        family(
            "capi_sync_throttles_total",
            "counter",
            "Requests Meta answered with a rate limit.",
            per_model(&|n, m| {
                vec![sample(
                    "capi_sync_throttles_total",
                    &[("model", n)],
                    m.throttles as f64,
                )]
            }),
        );
        family(
            "capi_sync_runs_total",
            "counter",
            "Runs finished, in any status.",
            per_model(&|n, m| {
                vec![sample(
                    "capi_sync_runs_total",
                    &[("model", n)],
                    m.runs as f64,
                )]
            }),
        );
        family(
            "capi_sync_run_failures_total",
            "counter",
            "Runs that failed (the cursor stayed at the last acknowledged batch).",
            per_model(&|n, m| {
                vec![sample(
                    "capi_sync_run_failures_total",
                    &[("model", n)],
                    m.run_failures as f64,
                )]
            }),
        );
        family(
            "capi_sync_batch_duration_seconds",
            "histogram",
            "Time to deliver one batch, retries and splits included.",
            per_model(&|n, m| {
                histogram_lines(
                    "capi_sync_batch_duration_seconds",
                    n,
                    &LATENCY_BUCKETS,
                    &m.batch_latency,
                )
            }),
        );
        family(
            "capi_sync_run_start_delay_seconds",
            "histogram",
            "How long after its schedule's fire time each scheduled run started (waiting for a free slot of service.max_concurrent_runs).",
            per_model(&|n, m| {
                histogram_lines(
                    "capi_sync_run_start_delay_seconds",
                    n,
                    &START_DELAY_BUCKETS,
                    &m.start_delay,
                )
            }),
        );
        family(
            "capi_sync_runs_waiting",
            "gauge",
            "Scheduled runs that are due and wait for a free slot (service.max_concurrent_runs).",
            vec![sample("capi_sync_runs_waiting", &[], waiting as f64)],
        );
        family(
            "capi_sync_runs_in_progress",
            "gauge",
            "Runs going now (at most service.max_concurrent_runs).",
            vec![sample("capi_sync_runs_in_progress", &[], running as f64)],
        );
        family(
            "capi_sync_last_success_timestamp_seconds",
            "gauge",
            "When the model's last successful run finished (Unix time).",
            per_model(&|n, m| {
                m.last_success
                    .map(|v| {
                        sample(
                            "capi_sync_last_success_timestamp_seconds",
                            &[("model", n)],
                            v,
                        )
                    })
                    .into_iter()
                    .collect()
            }),
        );
        family(
            "capi_sync_cursor_lag_seconds",
            "gauge",
            "Age of the oldest row waiting after the cursor; 0 when none waits.",
            per_model(&|n, m| {
                m.cursor_lag
                    .map(|v| sample("capi_sync_cursor_lag_seconds", &[("model", n)], v))
                    .into_iter()
                    .collect()
            }),
        );
        family(
            "capi_sync_rows_waiting",
            "gauge",
            "Rows after the cursor, not yet read by a run.",
            per_model(&|n, m| {
                m.rows_waiting
                    .map(|v| sample("capi_sync_rows_waiting", &[("model", n)], v as f64))
                    .into_iter()
                    .collect()
            }),
        );
        out
    }
}

/// A model's histogram: cumulative buckets, `+Inf`, sum and count.
fn histogram_lines(
    name: &str,
    model: &str,
    bounds: &[f64; LATENCY_BUCKETS.len()],
    h: &Histogram,
) -> Vec<String> {
    let bucket = format!("{name}_bucket");
    let mut lines: Vec<String> = bounds
        .iter()
        .zip(h.buckets.iter())
        .map(|(b, c)| {
            sample(
                &bucket,
                &[("model", model), ("le", &b.to_string())],
                *c as f64,
            )
        })
        .collect();
    lines.push(sample(
        &bucket,
        &[("model", model), ("le", "+Inf")],
        h.count as f64,
    ));
    lines.push(sample(&format!("{name}_sum"), &[("model", model)], h.sum));
    lines.push(sample(
        &format!("{name}_count"),
        &[("model", model)],
        h.count as f64,
    ));
    lines
}

/// One sample line. Label values are escaped as the format requires.
fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> String {
    let mut s = String::from(name);
    if !labels.is_empty() {
        s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(s, "{k}=\"{escaped}\"");
        }
        s.push('}');
    }
    let _ = write!(s, " {value}");
    s
}

impl RunObserver for Metrics {
    fn rows_read(&self, model: &str, rows: u64) {
        self.with(model, |m| m.rows_read += rows);
    }

    fn batch_done(&self, model: &str, events_sent: u64, refused: &[RefusedRow]) {
        self.with(model, |m| {
            m.events_sent += events_sent;
            for r in refused {
                *m.refused.entry(r.reason.clone()).or_default() += 1;
            }
        });
    }

    fn batch_latency(&self, model: &str, elapsed: Duration) {
        self.with(model, |m| {
            m.batch_latency
                .observe(&LATENCY_BUCKETS, elapsed.as_secs_f64())
        });
    }

    fn retry(&self, model: &str, class: ErrorClass) {
        self.with(model, |m| {
            *m.retries.entry(class_label(class)).or_default() += 1;
            if class == ErrorClass::Throttled {
                m.throttles += 1;
            }
        });
    }

    fn run_finished(&self, summary: &RunSummary) {
        self.with(&summary.model, |m| {
            m.runs += 1;
            if summary.status == RunStatus::Failed {
                m.run_failures += 1;
            }
        });
        if summary.status == RunStatus::Succeeded {
            self.set_last_success(&summary.model, chrono::Utc::now());
        }
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(summary.model.clone());
        self.run_ended.notify_one();
    }

    fn run_started(&self, model: &str, delay: Duration) {
        self.with(model, |m| {
            m.start_delay
                .observe(&START_DELAY_BUCKETS, delay.as_secs_f64())
        });
    }

    fn run_queue(&self, waiting: usize, running: usize) {
        *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = (waiting, running);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels_and_total_suffix() {
        let m = Metrics::new(["leads"]);
        m.batch_done("leads", 5, &[]);
        m.retry("leads", ErrorClass::Throttled);
        let text = m.render();
        assert!(
            text.contains("capi_sync_events_sent_total{model=\"leads\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("capi_sync_retries_total{model=\"leads\",class=\"throttled\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("capi_sync_throttles_total{model=\"leads\"} 1\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            if line.ends_with(" counter") {
                let name = line.split_whitespace().nth(2).unwrap();
                assert!(name.ends_with("_total"), "{line}");
            }
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new(["m"]);
        m.batch_latency("m", Duration::from_millis(70));
        m.batch_latency("m", Duration::from_secs(3));
        let text = m.render();
        assert!(
            text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"0.05\"} 0\n")
        );
        assert!(
            text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"0.1\"} 1\n")
        );
        assert!(text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"5\"} 2\n"));
        assert!(
            text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"+Inf\"} 2\n")
        );
        assert!(text.contains("capi_sync_batch_duration_seconds_count{model=\"m\"} 2\n"));
    }

    #[test]
    fn runs_waiting_and_start_delays_render() {
        let m = Metrics::new(["a", "b"]);
        m.run_queue(3, 4);
        m.run_started("a", Duration::from_millis(20));
        m.run_started("a", Duration::from_secs(45));
        let text = m.render();
        assert!(
            text.contains("# TYPE capi_sync_runs_waiting gauge\n"),
            "{text}"
        );
        assert!(text.contains("\ncapi_sync_runs_waiting 3\n"), "{text}");
        assert!(text.contains("\ncapi_sync_runs_in_progress 4\n"), "{text}");
        assert!(text.contains("# TYPE capi_sync_run_start_delay_seconds histogram\n"));
        assert!(
            text.contains("capi_sync_run_start_delay_seconds_bucket{model=\"a\",le=\"0.5\"} 1\n")
        );
        assert!(
            text.contains("capi_sync_run_start_delay_seconds_bucket{model=\"a\",le=\"30\"} 1\n")
        );
        assert!(
            text.contains("capi_sync_run_start_delay_seconds_bucket{model=\"a\",le=\"60\"} 2\n")
        );
        assert!(text.contains("capi_sync_run_start_delay_seconds_sum{model=\"a\"} 45.02\n"));
        assert!(text.contains("capi_sync_run_start_delay_seconds_count{model=\"b\"} 0\n"));
    }

    #[test]
    fn only_the_models_whose_runs_ended_are_measured_again() {
        let m = Metrics::new(["a", "b", "c"]);
        let ended = |model: &str| RunSummary {
            model: model.into(),
            run_id: None,
            status: RunStatus::Succeeded,
            counters: Default::default(),
            error: None,
            sample_event: None,
            elapsed: Duration::ZERO,
        };
        m.run_finished(&ended("c"));
        m.run_finished(&ended("a"));
        m.run_finished(&ended("c"));
        assert_eq!(
            m.take_ended().into_iter().collect::<Vec<_>>(),
            vec!["a".to_string(), "c".to_string()]
        );
        assert!(m.take_ended().is_empty(), "taken once");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            sample("x_total", &[("reason", "a\"b\\c")], 1.0),
            "x_total{reason=\"a\\\"b\\\\c\"} 1"
        );
    }
}
