//! The service's Prometheus metrics: a `prometheus-client` registry, written out in the
//! Prometheus text format (0.0.4). Counters end in `_total` (the client appends it to the
//! registered name); labels come from a small fixed set (`model`, `reason`, `class`, `pixel`),
//! so the number of series is bounded by models × refusal reasons × error classes, and by the
//! configured pixels. No label ever carries customer data.
//!
//! Each metric family is one field of [`Metrics`], registered in [`Metrics::new`].

use crate::pipeline::observer::RunObserver;
use crate::pipeline::{RunStatus, RunSummary};
use crate::sink::ErrorClass;
use crate::state::RefusedRow;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The labels of a per-model series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

/// A model and a reason code (a refusal's, or why rows cannot be read).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    model: String,
    reason: String,
}

/// A model and an event name Meta scored (Dataset Quality API).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    model: String,
    event_name: String,
}

/// A model, an event name and a customer-information key Meta reported coverage for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    model: String,
    event_name: String,
    identifier: String,
}

/// A model and the class of a Graph API error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    model: String,
    class: &'static str,
}

/// A pixel (dataset) id, from the config.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PixelLabels {
    pixel: String,
}

fn model(name: &str) -> ModelLabels {
    ModelLabels {
        model: name.to_string(),
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<ModelLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn start_delay_histogram() -> Histogram {
    Histogram::new(START_DELAY_BUCKETS)
}

/// Every model's counters and gauges since the service started.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rows_read: Family<ModelLabels, Counter>,
    events_sent: Family<ModelLabels, Counter>,
    rows_refused: Family<ReasonLabels, Counter>,
    retries: Family<ClassLabels, Counter>,
    throttles: Family<ModelLabels, Counter>,
    runs: Family<ModelLabels, Counter>,
    run_failures: Family<ModelLabels, Counter>,
    batch_duration: HistogramFamily,
    last_success: Family<ModelLabels, FloatGauge>,
    cursor_lag: Family<ModelLabels, FloatGauge>,
    rows_unreadable: Family<ReasonLabels, Gauge>,
    rows_waiting: Family<ModelLabels, Gauge>,
    rows_expiring: Family<ModelLabels, Gauge>,
    rows_expired_waiting: Family<ModelLabels, Gauge>,
    run_start_delay: HistogramFamily,
    /// Due runs waiting for a free slot, and runs going (the scheduler's queue).
    runs_waiting: Gauge,
    runs_in_progress: Gauge,
    /// Meta's match quality, per model and event name (out of 10), and its coverage per key.
    event_match_quality: Family<EventLabels, FloatGauge>,
    match_key_coverage: Family<KeyLabels, FloatGauge>,
    /// Requests each pixel may have in flight now (its adaptive limit).
    requests_in_flight_limit: Family<PixelLabels, Gauge>,
    /// The models whose runs ended since [`Metrics::take_ended`] was last called: only theirs
    /// need measuring again (with hundreds of models, measuring them all after every run would
    /// keep the warehouse busy with aggregates).
    ended: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The earliest expiry each model was last warned of (`run`'s log), so that one threatened
    /// row is warned of once, not at every refresh.
    expiry_warned:
        std::sync::Mutex<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>>,
    /// Woken at the end of every run, so the rows waiting and the lag are measured again
    /// right after a run moved the cursor.
    pub run_ended: tokio::sync::Notify,
}

fn class_label(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Transient => "transient",
        ErrorClass::Throttled => "throttled",
        ErrorClass::Auth => "auth",
        ErrorClass::Invalid => "invalid",
        ErrorClass::Unexpected => "unexpected",
        ErrorClass::NotGraph => "not_graph",
        ErrorClass::RetiredVersion => "retired_version",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new([])
    }
}

impl Metrics {
    /// Metrics with a series for each of these models from the start (a counter that has
    /// not moved yet still shows as 0, so rates and alerts work from the first scrape).
    pub fn new<'a>(models: impl IntoIterator<Item = &'a str>) -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            rows_read: Family::default(),
            events_sent: Family::default(),
            rows_refused: Family::default(),
            retries: Family::default(),
            throttles: Family::default(),
            runs: Family::default(),
            run_failures: Family::default(),
            batch_duration: Family::new_with_constructor(latency_histogram),
            last_success: Family::default(),
            cursor_lag: Family::default(),
            rows_unreadable: Family::default(),
            rows_waiting: Family::default(),
            rows_expiring: Family::default(),
            rows_expired_waiting: Family::default(),
            run_start_delay: Family::new_with_constructor(start_delay_histogram),
            runs_waiting: Gauge::default(),
            runs_in_progress: Gauge::default(),
            event_match_quality: Family::default(),
            match_key_coverage: Family::default(),
            requests_in_flight_limit: Family::default(),
            ended: Default::default(),
            expiry_warned: Default::default(),
            run_ended: tokio::sync::Notify::new(),
        };
        // Names without `_total` for counters: the client appends it. Help texts without
        // their final period: the client adds it.
        let r = &mut m.registry;
        r.register(
            "capi_sync_rows_read",
            "Rows read from the warehouse",
            m.rows_read.clone(),
        );
        r.register(
            "capi_sync_events_sent",
            "Events Meta acknowledged",
            m.events_sent.clone(),
        );
        r.register(
            "capi_sync_rows_refused",
            "Rows not sent, by reason (see `capi-sync refused`)",
            m.rows_refused.clone(),
        );
        r.register(
            "capi_sync_retries",
            "Requests to the Graph API retried, by error class (transient or throttled)",
            m.retries.clone(),
        );
        r.register(
            "capi_sync_throttles",
            "Requests Meta answered with a rate limit",
            m.throttles.clone(),
        );
        r.register(
            "capi_sync_runs",
            "Runs finished, in any status",
            m.runs.clone(),
        );
        r.register(
            "capi_sync_run_failures",
            "Runs that failed (the cursor stayed at the last acknowledged batch)",
            m.run_failures.clone(),
        );
        r.register(
            "capi_sync_batch_duration_seconds",
            "Time to deliver one batch, retries and splits included",
            m.batch_duration.clone(),
        );
        r.register(
            "capi_sync_last_success_timestamp_seconds",
            "When the model's last successful run finished (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "capi_sync_cursor_lag_seconds",
            "Age of the oldest row waiting after the cursor; 0 when none waits",
            m.cursor_lag.clone(),
        );
        r.register(
            "capi_sync_rows_unreadable",
            "Rows of the model's output that are never read: a NULL cursor or a NULL in the primary key (as the last run counted)",
            m.rows_unreadable.clone(),
        );
        r.register(
            "capi_sync_rows_waiting",
            "Rows after the cursor, not yet read by a run",
            m.rows_waiting.clone(),
        );
        r.register(
            "capi_sync_rows_expiring",
            "Rows waiting whose event_time leaves Meta's window (7 days; 62 for physical_store) within service.expiring_within",
            m.rows_expiring.clone(),
        );
        r.register(
            "capi_sync_rows_expired_waiting",
            "Rows waiting whose event_time is already outside Meta's window: the next run refuses them (event_time_too_old)",
            m.rows_expired_waiting.clone(),
        );
        r.register(
            "capi_sync_run_start_delay_seconds",
            "How long after its schedule's fire time each scheduled run started (waiting for a free slot of service.max_concurrent_runs)",
            m.run_start_delay.clone(),
        );
        r.register(
            "capi_sync_runs_waiting",
            "Scheduled runs that are due and wait for a free slot (service.max_concurrent_runs)",
            m.runs_waiting.clone(),
        );
        r.register(
            "capi_sync_runs_in_progress",
            "Runs going now (at most service.max_concurrent_runs)",
            m.runs_in_progress.clone(),
        );
        r.register(
            "capi_sync_event_match_quality",
            "Match quality out of 10 as Meta last reported it (Dataset Quality API: Event Match Quality for website events, the composite score for offline events)",
            m.event_match_quality.clone(),
        );
        r.register(
            "capi_sync_match_key_coverage_meta_percent",
            "Share of events carrying each customer-information key, in percent, as Meta last reported it (Dataset Quality API)",
            m.match_key_coverage.clone(),
        );
        r.register(
            "capi_sync_requests_in_flight_limit",
            "Requests the pixel may have in flight now: from meta.concurrency, grown while Meta answers fast up to meta.max_concurrency, halved on throttles",
            m.requests_in_flight_limit.clone(),
        );
        for name in models {
            m.ensure_model(name);
        }
        m
    }

    /// Meta's match quality of a model's event names, from a read or the latest snapshot.
    /// Event names and identifiers come from Meta's answer, limited to the model's own event
    /// names and to short `[a-z0-9_]` identifiers, so the series stay few.
    pub fn set_quality(&self, model_name: &str, scores: &[crate::state::QualityScore]) {
        for s in scores {
            let event = EventLabels {
                model: model_name.to_string(),
                event_name: s.event_name.clone(),
            };
            if let Some(c) = s.composite_score {
                self.event_match_quality.get_or_create(&event).set(c);
            }
            for (id, pct) in &s.match_keys {
                let labels = KeyLabels {
                    model: model_name.to_string(),
                    event_name: s.event_name.clone(),
                    identifier: id.clone(),
                };
                self.match_key_coverage.get_or_create(&labels).set(*pct);
            }
        }
    }

    /// The series every model shows from its first mention: its counters (at 0) and its
    /// batch latency histogram.
    fn ensure_model(&self, name: &str) {
        let labels = model(name);
        if self.runs.get(&labels).is_some() {
            return;
        }
        drop(self.batch_duration.get_or_create(&labels));
        drop(self.run_start_delay.get_or_create(&labels));
        // `runs` last: its series says the model's are all there.
        for family in [
            &self.rows_read,
            &self.events_sent,
            &self.throttles,
            &self.run_failures,
            &self.runs,
        ] {
            drop(family.get_or_create(&labels));
        }
    }

    /// The models whose runs ended since the last call.
    pub fn take_ended(&self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut *self.ended.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// When the model last finished a run successfully (Unix seconds).
    pub fn set_last_success(&self, model_name: &str, at: chrono::DateTime<chrono::Utc>) {
        self.ensure_model(model_name);
        let secs = at.timestamp_millis() as f64 / 1000.0;
        let labels = model(model_name);
        let gauge = match self.last_success.get(&labels) {
            Some(gauge) => gauge.clone(),
            None => {
                self.last_success.get_or_create(&labels).set(secs);
                return;
            }
        };
        // Only a later success moves it (the service sets it from the state at start while
        // a run may already have finished).
        let _ = gauge
            .inner()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (f64::from_bits(bits) < secs).then_some(secs.to_bits())
            });
    }

    /// Rows waiting after the cursor, and the age of the oldest (None for integer cursors).
    pub fn set_backlog(&self, model_name: &str, rows_waiting: i64, lag_secs: Option<f64>) {
        self.ensure_model(model_name);
        let labels = model(model_name);
        self.rows_waiting.get_or_create(&labels).set(rows_waiting);
        let lag = match lag_secs {
            Some(secs) => Some(secs.max(0.0)),
            None if rows_waiting == 0 => Some(0.0),
            // An integer cursor has no age to report.
            None => None,
        };
        match lag {
            Some(secs) => {
                self.cursor_lag.get_or_create(&labels).set(secs);
            }
            None => {
                self.cursor_lag.remove(&labels);
            }
        }
    }

    /// Rows waiting that leave Meta's window soon, and those already outside it; no series
    /// when they cannot be counted (a text event_time), rather than a misleading 0.
    pub fn set_expiry(&self, model_name: &str, expiry: Option<&crate::source::Expiry>) {
        self.ensure_model(model_name);
        let labels = model(model_name);
        match expiry {
            Some(e) => {
                self.rows_expiring.get_or_create(&labels).set(e.expiring);
                self.rows_expired_waiting
                    .get_or_create(&labels)
                    .set(e.expired);
            }
            None => {
                self.rows_expiring.remove(&labels);
                self.rows_expired_waiting.remove(&labels);
            }
        }
    }

    /// Whether a warning of rows leaving Meta's window at `earliest` is the first for the
    /// model at that time (and notes it).
    pub fn first_expiry_warning(
        &self,
        model_name: &str,
        earliest: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        let mut warned = self.expiry_warned.lock().unwrap_or_else(|e| e.into_inner());
        warned.insert(model_name.to_string(), earliest) != Some(earliest)
    }

    /// Rows of the model's output the reader cannot see, as a run counted them.
    pub fn set_unreadable(&self, model_name: &str, rows: crate::source::UnreadableRows) {
        self.ensure_model(model_name);
        for (reason, count) in [
            ("null_cursor", rows.null_cursor),
            ("null_key", rows.null_key),
        ] {
            let labels = ReasonLabels {
                model: model_name.to_string(),
                reason: reason.to_string(),
            };
            self.rows_unreadable.get_or_create(&labels).set(count);
        }
    }

    /// The text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing metrics into a String cannot fail");
        out
    }
}

impl RunObserver for Metrics {
    fn rows_read(&self, model_name: &str, rows: u64) {
        self.ensure_model(model_name);
        self.rows_read
            .get_or_create(&model(model_name))
            .inc_by(rows);
    }

    fn batch_done(&self, model_name: &str, events_sent: u64, refused: &[RefusedRow]) {
        self.ensure_model(model_name);
        self.events_sent
            .get_or_create(&model(model_name))
            .inc_by(events_sent);
        for r in refused {
            let labels = ReasonLabels {
                model: model_name.to_string(),
                reason: r.reason.clone(),
            };
            self.rows_refused.get_or_create(&labels).inc();
        }
    }

    fn batch_latency(&self, model_name: &str, elapsed: Duration) {
        self.ensure_model(model_name);
        self.batch_duration
            .get_or_create(&model(model_name))
            .observe(elapsed.as_secs_f64());
    }

    fn retry(&self, model_name: &str, class: ErrorClass) {
        self.ensure_model(model_name);
        let labels = ClassLabels {
            model: model_name.to_string(),
            class: class_label(class),
        };
        self.retries.get_or_create(&labels).inc();
        if class == ErrorClass::Throttled {
            self.throttles.get_or_create(&model(model_name)).inc();
        }
    }

    fn run_finished(&self, summary: &RunSummary) {
        let c = &summary.counters;
        if let (Some(null_cursor), Some(null_key)) = (c.rows_null_cursor, c.rows_null_key) {
            let rows = crate::source::UnreadableRows {
                null_cursor,
                null_key,
            };
            self.set_unreadable(&summary.model, rows);
        }
        self.ensure_model(&summary.model);
        let labels = model(&summary.model);
        self.runs.get_or_create(&labels).inc();
        if summary.status == RunStatus::Failed {
            self.run_failures.get_or_create(&labels).inc();
        }
        if summary.status == RunStatus::Succeeded {
            self.set_last_success(&summary.model, chrono::Utc::now());
        }
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(summary.model.clone());
        self.run_ended.notify_one();
    }

    fn run_started(&self, model_name: &str, delay: Duration) {
        self.ensure_model(model_name);
        self.run_start_delay
            .get_or_create(&model(model_name))
            .observe(delay.as_secs_f64());
    }

    fn run_queue(&self, waiting: usize, running: usize) {
        self.runs_waiting.set(waiting as i64);
        self.runs_in_progress.set(running as i64);
    }

    fn requests_in_flight_limit(&self, pixel_id: &str, limit: usize) {
        self.requests_in_flight_limit
            .get_or_create(&PixelLabels {
                pixel: pixel_id.to_string(),
            })
            .set(limit as i64);
    }
}

#[cfg(test)]
mod tests;
