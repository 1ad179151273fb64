//! Progress of a `sync` run: a progress bar in a terminal (rows read against an estimate of
//! the rows waiting, events sent, rate, ETA), or a progress log line every few seconds when
//! stderr is not a terminal or logs are JSON, so long runs are never silent.

use crate::pipeline::observer::RunObserver;
use crate::state::RefusedRow;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The bar on screen, if any: log lines are written around it instead of through it.
static SHOWN: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// stderr for the tracing subscriber: each log line is written whole, and while a progress
/// bar is drawn the bar steps aside for it (otherwise the line and the bar garble each other).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One log line on its way to stderr.
pub struct LogLine(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::with_capacity(256))
    }
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let bar = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let write = || {
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match bar {
            Some(b) => b.suspend(write),
            None => write(),
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// An indicatif bar on stderr.
    Bar,
    /// A `progress` log line at this interval.
    Log(Duration),
}

impl ProgressStyle {
    /// A bar when stderr is a terminal and logs are text; log lines every 5 s otherwise.
    pub fn detect(json_logs: bool) -> ProgressStyle {
        use std::io::IsTerminal;
        if !json_logs && std::io::stderr().is_terminal() {
            ProgressStyle::Bar
        } else {
            ProgressStyle::Log(Duration::from_secs(5))
        }
    }
}

/// Counts so far, and what can be said from them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub rows_read: u64,
    pub events_sent: u64,
    pub rows_refused: u64,
    /// Rows read per second since the start.
    pub rate: f64,
    /// Seconds left at the current rate, when the total is estimated.
    pub eta_secs: Option<f64>,
}

/// One run's progress. Create with [`Progress::start`], pass as the run's observer, then
/// [`Progress::finish`].
#[derive(Debug)]
pub struct Progress {
    model: String,
    /// Rows waiting when the run started (a count of the rows after the cursor), once known:
    /// the count runs beside the run, not before it (see [`Progress::set_estimate`]).
    estimate: OnceLock<u64>,
    rows_read: AtomicU64,
    events_sent: AtomicU64,
    rows_refused: AtomicU64,
    /// The pixel's requests in flight allowed now, once a batch has reported it (0 before).
    in_flight_limit: AtomicU64,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    stop: CancellationToken,
}

impl Progress {
    /// Starts showing progress, without an estimate until [`Progress::set_estimate`] gives
    /// one; with [`ProgressStyle::Log`], a task logs a line per interval (needs a Tokio
    /// runtime).
    pub fn start(model: &str, style: ProgressStyle) -> Arc<Progress> {
        let bar = match style {
            ProgressStyle::Bar => Some(make_bar(model)),
            _ => None,
        };
        if let Some(b) = &bar {
            *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
        }
        let p = Arc::new(Progress {
            model: model.to_string(),
            estimate: OnceLock::new(),
            rows_read: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            rows_refused: AtomicU64::new(0),
            in_flight_limit: AtomicU64::new(0),
            started: Instant::now(),
            bar,
            stop: CancellationToken::new(),
        });
        if let ProgressStyle::Log(every) = style {
            let watched = p.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => watched.log_line(),
                        _ = watched.stop.cancelled() => return,
                    }
                }
            });
        }
        p
    }

    /// The count of rows waiting, arrived while the run goes on: the bar gets its length and
    /// the log lines their ETA. Only the first count counts.
    pub fn set_estimate(&self, rows: u64) {
        if self.estimate.set(rows).is_err() {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_length(rows);
            style_bar(bar, Some(rows));
            self.update_bar();
        }
    }

    fn estimate(&self) -> Option<u64> {
        self.estimate.get().copied()
    }

    pub fn snapshot(&self) -> Snapshot {
        let rows_read = self.rows_read.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = rows_read as f64 / elapsed;
        let eta_secs = self
            .estimate()
            .filter(|_| rate > 0.0)
            .map(|total| total.saturating_sub(rows_read) as f64 / rate);
        Snapshot {
            rows_read,
            events_sent: self.events_sent.load(Ordering::Relaxed),
            rows_refused: self.rows_refused.load(Ordering::Relaxed),
            rate,
            eta_secs,
        }
    }

    fn log_line(&self) {
        let s = self.snapshot();
        tracing::info!(
            model = %self.model,
            rows_read = s.rows_read,
            rows_estimated = self.estimate(),
            events_sent = s.events_sent,
            rows_refused = s.rows_refused,
            rows_per_sec = s.rate.round() as u64,
            eta_secs = s.eta_secs.map(|e| e.round() as u64),
            in_flight_limit = Some(self.in_flight_limit.load(Ordering::Relaxed)).filter(|&l| l > 0),
            "progress"
        );
    }

    fn update_bar(&self) {
        if let Some(bar) = &self.bar {
            let s = self.snapshot();
            bar.set_position(s.rows_read);
            bar.set_message(self.describe(&s));
        }
    }

    /// "7 500 / 30 040 rows, 7 000 events sent, 9 refused, 2 802 rows/s, ETA 8s"
    pub fn describe(&self, s: &Snapshot) -> String {
        use crate::human::group_digits;
        let n = |v: u64| group_digits(v as i64);
        let read = match self.estimate() {
            Some(total) => format!("{} / {} rows", n(s.rows_read), n(total.max(s.rows_read))),
            None => format!("{} rows", n(s.rows_read)),
        };
        let eta = s
            .eta_secs
            .map(|e| format!(", ETA {}", crate::human::human_duration(e)))
            .unwrap_or_default();
        format!(
            "{read}, {} events sent, {} refused, {} rows/s{eta}",
            n(s.events_sent),
            n(s.rows_refused),
            n(s.rate.round() as u64)
        )
    }

    /// Stops the log lines and clears the bar (the run's summary follows).
    pub fn finish(&self) {
        self.stop.cancel();
        if let Some(bar) = &self.bar {
            SHOWN.lock().unwrap_or_else(|e| e.into_inner()).take();
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A spinner until the estimate arrives.
fn make_bar(model: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    style_bar(&bar, None);
    bar.set_prefix(model.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar against the estimate, or a spinner until there is one.
fn style_bar(bar: &indicatif::ProgressBar, estimate: Option<u64>) {
    let template = match estimate {
        Some(_) => "{prefix} [{bar:30}] {msg}",
        None => "{prefix} {spinner} {msg}",
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
}

impl RunObserver for Progress {
    fn rows_read(&self, _model: &str, rows: u64) {
        self.rows_read.fetch_add(rows, Ordering::Relaxed);
        self.update_bar();
    }

    fn batch_done(&self, _model: &str, events_sent: u64, refused: &[RefusedRow]) {
        self.events_sent.fetch_add(events_sent, Ordering::Relaxed);
        self.rows_refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        self.update_bar();
    }

    fn requests_in_flight_limit(&self, _pixel_id: &str, limit: usize) {
        self.in_flight_limit.store(limit as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_eta_comes_from_the_estimate_and_the_rate() {
        let p = Progress::start("m", ProgressStyle::Log(Duration::from_secs(3600)));
        p.set_estimate(1000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.rows_read("m", 250);
        p.batch_done("m", 200, &[]);
        let s = p.snapshot();
        p.finish();
        assert_eq!((s.rows_read, s.events_sent), (250, 200));
        let eta = s.eta_secs.expect("an estimate gives an ETA");
        // 750 rows left at the measured rate.
        assert!((eta - 750.0 / s.rate).abs() < 1e-6, "{eta}");
        let text = p.describe(&s);
        assert!(
            text.starts_with("250 / 1 000 rows, 200 events sent, 0 refused, "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn without_an_estimate_there_is_no_eta() {
        let p = Progress::start("m", ProgressStyle::Log(Duration::from_secs(3600)));
        p.rows_read("m", 10);
        assert_eq!(p.snapshot().eta_secs, None);
        p.finish();
    }

    #[tokio::test]
    async fn an_estimate_that_arrives_during_the_run_gives_the_eta_from_then_on() {
        let p = Progress::start("m", ProgressStyle::Log(Duration::from_secs(3600)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.rows_read("m", 100);
        assert_eq!(p.snapshot().eta_secs, None);
        assert!(p.describe(&p.snapshot()).starts_with("100 rows, "));
        p.set_estimate(400);
        // A second count does not replace the first.
        p.set_estimate(9);
        let s = p.snapshot();
        let eta = s.eta_secs.expect("the estimate arrived");
        assert!((eta - 300.0 / s.rate).abs() < 1e-6, "{eta}");
        assert!(p.describe(&s).starts_with("100 / 400 rows, "));
        p.finish();
    }
}
