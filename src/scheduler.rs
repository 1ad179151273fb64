//! The long-lived service: each enabled model syncs on its own cron schedule, runs of one
//! model never overlap, and shutdown lets the batch in flight settle first.

use crate::config::{ModelConfig, Schedule};
use crate::pipeline::observer::RunObserver;
use crate::pipeline::{sync_model_once, RunOptions, RunStatus, SyncContext};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long to wait from `now` until the schedule's next fire time.
pub fn delay_until_next(
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, Duration)> {
    let next = schedule.next_after(now)?;
    let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
    Some((next, wait))
}

/// One model's loop: sleep until the next fire time (waking on shutdown), run, repeat.
pub async fn model_loop(
    ctx: SyncContext,
    model: ModelConfig,
    observer: Option<Arc<dyn RunObserver>>,
) {
    loop {
        let Some((next, wait)) = delay_until_next(&model.schedule, Utc::now()) else {
            warn!(model = %model.name, schedule = %model.schedule.expression, "the schedule has no future fire time; the model will not run");
            return;
        };
        info!(model = %model.name, next_run = %next.to_rfc3339(), "next run scheduled");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.cancel.cancelled() => return,
        }
        tick_observed(&ctx, &model, observer.clone()).await;
        if ctx.cancel.is_cancelled() {
            return;
        }
    }
}

/// One scheduled run of one model.
pub async fn tick(ctx: &SyncContext, model: &ModelConfig) -> RunStatus {
    tick_observed(ctx, model, None).await
}

/// One scheduled run of one model, watched by `observer` (the service's metrics).
pub async fn tick_observed(
    ctx: &SyncContext,
    model: &ModelConfig,
    observer: Option<Arc<dyn RunObserver>>,
) -> RunStatus {
    let opts = RunOptions {
        trigger: "schedule".into(),
        observer,
        ..Default::default()
    };
    let summary = sync_model_once(ctx, model, &opts).await;
    if let Some(e) = &summary.error {
        if summary.status == RunStatus::Failed {
            warn!(model = %model.name, error = %e, "run failed");
        }
    }
    summary.status
}

/// Runs every enabled model on its schedule until `ctx.cancel` fires, then waits for the
/// runs in progress to settle.
pub async fn run_service(ctx: SyncContext) {
    run_service_observed(ctx, None).await
}

/// [`run_service`], with every run watched by `observer`.
pub async fn run_service_observed(ctx: SyncContext, observer: Option<Arc<dyn RunObserver>>) {
    let mut tasks = Vec::new();
    for model in ctx.config.models.iter().filter(|m| m.enabled).cloned() {
        tasks.push(tokio::spawn(model_loop(
            ctx.clone(),
            model,
            observer.clone(),
        )));
    }
    let pruner_ctx = ctx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            match pruner_ctx
                .state
                .prune_ledger(pruner_ctx.config.state.ledger_retention)
                .await
            {
                Ok(n) if n > 0 => info!(pruned = n, "pruned old delivery-ledger entries"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "could not prune the delivery ledger"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = pruner_ctx.cancel.cancelled() => return,
            }
        }
    }));
    info!(
        models = ctx.config.models.iter().filter(|m| m.enabled).count(),
        "capi-sync service started"
    );
    for t in tasks {
        let _ = t.await;
    }
    info!("capi-sync service stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fire_time_for_a_quarter_hour_schedule() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-03-01T12:07:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let (next, wait) = delay_until_next(&s, now).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-03-01T12:15:00+00:00");
        assert_eq!(wait, Duration::from_secs(450));
    }
}
