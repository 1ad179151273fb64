//! Progress hooks: a `RunObserver` given to a run hears of every row read, event sent,
//! refusal, retry and the run's end.

use crate::helpers::*;
use capi_sync::observer::RunObserver;
use capi_sync::pipeline::{sync_model_once, RunOptions, RunStatus, RunSummary, SyncContext};
use capi_sync::state::RefusedRow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Counting {
    rows: AtomicU64,
    events: AtomicU64,
    refused: AtomicU64,
    retries: AtomicU64,
    finished: AtomicU64,
}

impl RunObserver for Counting {
    fn rows_read(&self, _: &str, rows: u64) {
        self.rows.fetch_add(rows, Ordering::SeqCst);
    }
    fn batch_done(&self, _: &str, events: u64, refused: &[RefusedRow]) {
        self.events.fetch_add(events, Ordering::SeqCst);
        self.refused
            .fetch_add(refused.len() as u64, Ordering::SeqCst);
    }
    fn retry(&self, _: &str, _: capi_sync::sink::ErrorClass) {
        self.retries.fetch_add(1, Ordering::SeqCst);
    }
    fn run_finished(&self, _: &capi_sync::pipeline::RunSummary) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// One run of the `leads` model with `observer` listening.
async fn sync_observed(ctx: &SyncContext, observer: Arc<Counting>) -> RunSummary {
    let model = ctx.config.model("leads").unwrap().clone();
    sync_model_once(
        ctx,
        &model,
        &RunOptions {
            trigger: "test".into(),
            observer: Some(observer),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn the_run_observer_sees_every_row_read_event_sent_and_refusal() {
    let (db, sandbox) = leads_and_sandbox(250).await;
    make_too_old(&db, 7).await;
    let models = LEADS_MODEL.replace(
        "cursor = \"updated_at\"",
        "cursor = \"updated_at\"\nbatch_size = 100",
    );
    let ctx = context(config(&db, &sandbox.base_url(), &models)).await;
    let counting = Arc::new(Counting::default());
    let run = sync_observed(&ctx, counting.clone()).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(counting.rows.load(Ordering::SeqCst), 250);
    assert_eq!(counting.events.load(Ordering::SeqCst), 249);
    assert_eq!(counting.refused.load(Ordering::SeqCst), 1);
    assert_eq!(counting.finished.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_run_observer_is_told_of_each_retry() {
    let (db, sandbox) = leads_and_sandbox(3).await;
    let ctx = context(config(&db, &sandbox.base_url(), LEADS_MODEL)).await;
    sandbox.fail_next(1);
    let counting = Arc::new(Counting::default());
    let run = sync_observed(&ctx, counting.clone()).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(counting.retries.load(Ordering::SeqCst), 1);
}
