//! Inline SVG drawn on the server: the runs of a model over time, and the small bars of
//! match-key coverage. Colours come from the page's stylesheet by class (the CSP allows no
//! `style` attributes), and every figure is also written as text (`<title>`, labels), so the
//! charts read without colour or a mouse.

use super::view::RunView;
use chrono::{DateTime, Utc};
use maud::{html, Markup};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
/// Room for the axis labels.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 10.0;
/// The widest a run's slot gets.
const MAX_SLOT: f64 = 24.0;

/// Events sent and rows refused per run as stacked bars, oldest run on the left; `runs` come
/// newest first, as the runs table gives them.
pub fn runs_chart(runs: &[RunView]) -> Markup {
    let runs: Vec<&RunView> = runs.iter().rev().collect();
    let most = runs
        .iter()
        .map(|r| r.events_sent + r.rows_refused)
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    // A few runs are narrow bars on the left, as many runs will be, not a wall of colour.
    let slot = (plot_w / runs.len().max(1) as f64).min(MAX_SLOT);
    let bar = (slot * 0.7).max(1.0);
    let y = |n: i64| plot_h * n as f64 / most as f64;
    let label = format!(
        "Events sent and rows refused in each of the last {} runs",
        runs.len()
    );
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby="chart-title" data-chart="runs" {
            title id="chart-title" { (label) }
            line class="axis" x1=(LEFT) y1=(TOP + plot_h) x2=(WIDTH - 4.0) y2=(TOP + plot_h) {}
            line class="axis" x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + plot_h) {}
            text class="tick" x=(LEFT - 6.0) y=(TOP + 8.0) text-anchor="end" { (most) }
            text class="tick" x=(LEFT - 6.0) y=(TOP + plot_h) text-anchor="end" { "0" }
            @for (i, r) in runs.iter().enumerate() {
                @let x = LEFT + 2.0 + slot * i as f64 + (slot - bar) / 2.0;
                @let sent_h = y(r.events_sent);
                @let refused_h = y(r.rows_refused);
                g class=(format!("run run-{}", r.status)) {
                    title {
                        "run " (r.id) " (" (r.status) "): " (r.events_sent) " sent, "
                        (r.rows_refused) " refused"
                        @if let Some(t) = r.started_at { ", started " (crate::human::utc(t)) }
                    }
                    rect class="sent" x=(fmt(x)) y=(fmt(TOP + plot_h - sent_h)) width=(fmt(bar)) height=(fmt(sent_h)) {}
                    rect class="refused" x=(fmt(x)) y=(fmt(TOP + plot_h - sent_h - refused_h)) width=(fmt(bar)) height=(fmt(refused_h)) {}
                    @if r.status == "failed" {
                        circle class="failed" cx=(fmt(x + bar / 2.0)) cy=(fmt(TOP + plot_h + 8.0)) r="3" {}
                    }
                }
            }
            @if let (Some(first), Some(last)) = (runs.first().and_then(|r| r.started_at), runs.last().and_then(|r| r.started_at)) {
                text class="tick" x=(LEFT) y=(HEIGHT - 4.0) { (first.format("%m-%d %H:%M")) }
                @if runs.len() > 1 {
                    // Under the last bar, or at the right edge when the bars are too few to
                    // leave room between the two labels.
                    @let end = LEFT + slot * runs.len() as f64;
                    @let end = if end - LEFT < 180.0 { WIDTH - 4.0 } else { end };
                    text class="tick" x=(fmt(end)) y=(HEIGHT - 4.0) text-anchor="end" { (last.format("%m-%d %H:%M")) }
                }
            }
        }
    }
}

/// The lag over time as a line, from its measurements (oldest first, at least two).
pub fn lag_chart(samples: &[(DateTime<Utc>, f64)]) -> Markup {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return html! {};
    };
    let most = samples.iter().map(|s| s.1).fold(0.0_f64, f64::max).max(1.0);
    let span = ((last.0 - first.0).num_milliseconds() as f64).max(1.0);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let points: Vec<String> = samples
        .iter()
        .map(|(at, lag)| {
            let x = LEFT + plot_w * (*at - first.0).num_milliseconds() as f64 / span;
            let y = TOP + plot_h - plot_h * lag / most;
            format!("{},{}", fmt(x), fmt(y))
        })
        .collect();
    let latest = crate::human::human_duration(last.1);
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-labelledby="lag-title" data-chart="lag" {
            title id="lag-title" { "Lag over time: " (samples.len()) " measurements, the latest " (latest) }
            line class="axis" x1=(LEFT) y1=(TOP + plot_h) x2=(WIDTH - 4.0) y2=(TOP + plot_h) {}
            line class="axis" x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + plot_h) {}
            text class="tick" x=(LEFT - 6.0) y=(TOP + 8.0) text-anchor="end" { (crate::human::human_duration(most)) }
            text class="tick" x=(LEFT - 6.0) y=(TOP + plot_h) text-anchor="end" { "0" }
            polyline class="lag" fill="none" points=(points.join(" ")) {}
            text class="tick" x=(LEFT) y=(HEIGHT - 4.0) { (first.0.format("%m-%d %H:%M")) }
            text class="tick" x=(WIDTH - 4.0) y=(HEIGHT - 4.0) text-anchor="end" { (last.0.format("%m-%d %H:%M")) }
        }
    }
}

/// A small bar for one identifier's share of the events (0 to 1), labelled with its percent.
pub fn share_bar(key: &str, share: f64) -> Markup {
    let pct = (share.clamp(0.0, 1.0) * 100.0).round();
    html! {
        span class="cov" data-key=(key) data-share=(format!("{share:.4}")) {
            span class="cov-key" { (key) }
            svg class="bar" viewBox="0 0 100 8" width="60" height="8" aria-hidden="true" {
                rect class="bar-bg" x="0" y="0" width="100" height="8" {}
                rect class="bar-fill" x="0" y="0" width=(pct) height="8" {}
            }
            span class="cov-pct" { (pct) "%" }
        }
    }
}

/// Coordinates with one decimal: enough for a screen, and a short page.
fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(id: i64, sent: i64, refused: i64) -> RunView {
        RunView {
            id,
            trigger: "schedule".into(),
            status: "succeeded".into(),
            started_at: None,
            finished_at: None,
            rows_read: sent + refused,
            events_sent: sent,
            rows_refused: refused,
            refused_by_reason: BTreeMap::new(),
            coverage: BTreeMap::new(),
            error: None,
        }
    }

    #[test]
    fn each_run_is_a_bar_scaled_to_the_largest_run() {
        let svg = runs_chart(&[run(2, 50, 0), run(1, 100, 20)]).into_string();
        assert_eq!(svg.matches("class=\"sent\"").count(), 2);
        assert!(
            svg.contains("run 1 (succeeded): 100 sent, 20 refused"),
            "{svg}"
        );
        // The largest run (120) fills the plot's height.
        assert!(svg.contains(">120</text>"), "{svg}");
    }

    #[test]
    fn the_lag_line_spans_the_plot_from_the_first_to_the_last_measurement() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let svg = lag_chart(&[(t0, 0.0), (t0 + chrono::Duration::minutes(1), 120.0)]).into_string();
        // From the left edge at the bottom to the right edge at the top.
        assert!(svg.contains("points=\"44.0,158.0 636.0,10.0\""), "{svg}");
        assert!(svg.contains("the latest 2m 0s"), "{svg}");
    }

    #[test]
    fn a_share_bar_is_as_wide_as_its_percent() {
        let bar = share_bar("em", 0.255).into_string();
        assert!(bar.contains("width=\"26\""), "{bar}");
        assert!(bar.contains("26%"), "{bar}");
    }
}
