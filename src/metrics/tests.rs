//! The metrics as Prometheus reads them: names, types, labels and values.

use super::*;

#[test]
fn match_quality_renders_per_event_name_and_identifier() {
    let m = Metrics::new(["visits"]);
    let score = crate::state::QualityScore {
        event_name: "Lead".into(),
        composite_score: Some(6.5),
        match_keys: [("email".to_string(), 100.0)].into(),
        ..Default::default()
    };
    m.set_quality("visits", &[score]);
    let text = m.render();
    assert!(
        text.contains("capi_sync_event_match_quality{model=\"visits\",event_name=\"Lead\"} 6.5\n"),
        "{text}"
    );
    assert!(
        text.contains("capi_sync_match_key_coverage_meta_percent{model=\"visits\",event_name=\"Lead\",identifier=\"email\"} 100.0\n"),
        "{text}"
    );
}

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
    assert!(text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"0.05\"} 0\n"));
    assert!(text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"0.1\"} 1\n"));
    assert!(text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"5\"} 2\n"));
    assert!(text.contains("capi_sync_batch_duration_seconds_bucket{model=\"m\",le=\"+Inf\"} 2\n"));
    assert!(text.contains("capi_sync_batch_duration_seconds_count{model=\"m\"} 2\n"));
}

#[test]
fn label_values_are_escaped() {
    let m = Metrics::new(["a\"b\\c\nd"]);
    let text = m.render();
    assert!(
        text.contains("capi_sync_rows_read_total{model=\"a\\\"b\\\\c\\nd\"} 0\n"),
        "{text}"
    );
}

#[test]
fn every_family_keeps_its_name_type_and_help() {
    let m = Metrics::new(["m"]);
    // A family shows once it has a series (an empty one is left out of the exposition).
    let refused = RefusedRow {
        row_key: vec!["1".into()],
        event_id: None,
        reason: "event_time_too_old".into(),
        detail: String::new(),
        meta_code: None,
        meta_subcode: None,
        cursor_value: None,
    };
    m.batch_done("m", 1, &[refused]);
    m.retry("m", ErrorClass::Transient);
    m.set_last_success("m", chrono::Utc::now());
    m.set_backlog("m", 1, Some(2.0));
    let expiry = crate::source::Expiry {
        expiring: 1,
        expired: 0,
        earliest: None,
    };
    m.set_expiry("m", Some(&expiry));
    let rows = crate::source::UnreadableRows {
        null_cursor: 0,
        null_key: 0,
    };
    m.set_unreadable("m", rows);
    m.requests_in_flight_limit("123456789012345", 5);
    let text = m.render();
    let descriptors: Vec<&str> = text.lines().filter(|l| l.starts_with('#')).collect();
    let expected = [
        ("capi_sync_rows_read_total", "counter", "Rows read from the warehouse."),
        ("capi_sync_events_sent_total", "counter", "Events Meta acknowledged."),
        ("capi_sync_rows_refused_total", "counter", "Rows not sent, by reason (see `capi-sync refused`)."),
        ("capi_sync_retries_total", "counter", "Requests to the Graph API retried, by error class (transient or throttled)."),
        ("capi_sync_throttles_total", "counter", "Requests Meta answered with a rate limit."),
        ("capi_sync_runs_total", "counter", "Runs finished, in any status."),
        ("capi_sync_run_failures_total", "counter", "Runs that failed (the cursor stayed at the last acknowledged batch)."),
        ("capi_sync_batch_duration_seconds", "histogram", "Time to deliver one batch, retries and splits included."),
        ("capi_sync_last_success_timestamp_seconds", "gauge", "When the model's last successful run finished (Unix time)."),
        ("capi_sync_cursor_lag_seconds", "gauge", "Age of the oldest row waiting after the cursor; 0 when none waits."),
        ("capi_sync_rows_unreadable", "gauge", "Rows of the model's output that are never read: a NULL cursor or a NULL in the primary key (as the last run counted)."),
        ("capi_sync_rows_waiting", "gauge", "Rows after the cursor, not yet read by a run."),
        ("capi_sync_rows_expiring", "gauge", "Rows waiting whose event_time leaves Meta's window (7 days; 62 for physical_store) within service.expiring_within."),
        ("capi_sync_rows_expired_waiting", "gauge", "Rows waiting whose event_time is already outside Meta's window: the next run refuses them (event_time_too_old)."),
        ("capi_sync_run_start_delay_seconds", "histogram", "How long after its schedule's fire time each scheduled run started (waiting for a free slot of service.max_concurrent_runs)."),
        ("capi_sync_runs_waiting", "gauge", "Scheduled runs that are due and wait for a free slot (service.max_concurrent_runs)."),
        ("capi_sync_runs_in_progress", "gauge", "Runs going now (at most service.max_concurrent_runs)."),
        ("capi_sync_requests_in_flight_limit", "gauge", "Requests the pixel may have in flight now: from meta.concurrency, grown while Meta answers fast up to meta.max_concurrency, halved on throttles."),
    ];
    let want: Vec<String> = expected
        .iter()
        .flat_map(|(name, kind, help)| {
            [
                format!("# HELP {name} {help}"),
                format!("# TYPE {name} {kind}"),
            ]
        })
        .collect();
    assert_eq!(descriptors, want);
    assert!(
        text.contains("capi_sync_requests_in_flight_limit{pixel=\"123456789012345\"} 5\n"),
        "{text}"
    );
}

#[test]
fn a_models_counters_show_from_the_start_and_its_gauges_once_measured() {
    let text = Metrics::new(["m"]).render();
    for counter in [
        "rows_read",
        "events_sent",
        "throttles",
        "runs",
        "run_failures",
    ] {
        assert!(
            text.contains(&format!("capi_sync_{counter}_total{{model=\"m\"}} 0\n")),
            "{text}"
        );
    }
    assert!(!text.contains("capi_sync_rows_waiting{"), "{text}");
}

#[test]
fn an_integer_cursor_has_no_lag_and_an_empty_backlog_has_none() {
    let m = Metrics::new(["m"]);
    m.set_backlog("m", 0, None);
    assert!(m
        .render()
        .contains("capi_sync_cursor_lag_seconds{model=\"m\"} 0"));
    m.set_backlog("m", 4, None);
    let text = m.render();
    assert!(!text.contains("capi_sync_cursor_lag_seconds{"), "{text}");
    assert!(
        text.contains("capi_sync_rows_waiting{model=\"m\"} 4\n"),
        "{text}"
    );
}

#[test]
fn expiry_gauges_show_the_counts_and_vanish_when_unknown() {
    let m = Metrics::new(["m"]);
    let expiry = crate::source::Expiry {
        expiring: 3,
        expired: 2,
        earliest: None,
    };
    m.set_expiry("m", Some(&expiry));
    let text = m.render();
    assert!(
        text.contains("capi_sync_rows_expiring{model=\"m\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("capi_sync_rows_expired_waiting{model=\"m\"} 2\n"),
        "{text}"
    );
    m.set_expiry("m", None);
    let text = m.render();
    assert!(!text.contains("capi_sync_rows_expiring{"), "{text}");
    assert!(!text.contains("capi_sync_rows_expired_waiting{"), "{text}");
}

#[test]
fn the_last_success_only_moves_forward() {
    let m = Metrics::new(["m"]);
    let later = chrono::DateTime::from_timestamp(2_000_000_000, 0).unwrap();
    let earlier = chrono::DateTime::from_timestamp(1_000_000_000, 0).unwrap();
    m.set_last_success("m", later);
    m.set_last_success("m", earlier);
    let text = m.render();
    let value: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("capi_sync_last_success_timestamp_seconds{model=\"m\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(value, 2_000_000_000.0);
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
        text.contains("capi_sync_run_start_delay_seconds_bucket{model=\"a\",le=\"0.5\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("capi_sync_run_start_delay_seconds_bucket{model=\"a\",le=\"30\"} 1\n"));
    assert!(text.contains("capi_sync_run_start_delay_seconds_bucket{model=\"a\",le=\"60\"} 2\n"));
    assert!(
        text.contains("capi_sync_run_start_delay_seconds_sum{model=\"a\"} 45.02\n"),
        "{text}"
    );
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
        error_kind: None,
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
