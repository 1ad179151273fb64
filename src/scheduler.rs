//! The long-lived service: each enabled model syncs on its own cron schedule, at most
//! `service.max_concurrent_runs` runs go at once (the most overdue model first, see
//! [`queue`]), runs of one model never overlap, and shutdown lets the runs in flight settle.

pub mod queue;

pub use queue::{Asked, RunQueue, Start};

use crate::config::{ModelConfig, Schedule};
use crate::pipeline::observer::RunObserver;
use crate::pipeline::{sync_model_once, RunMode, RunOptions, RunStatus, SyncContext};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// The longest the scheduler sleeps without reading the clock again, so a wall clock stepped
/// forward or back (NTP, a resumed VM) is followed within it.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A run waiting this long for a free slot is logged (shorter waits are the timer's own).
const LATE_START_LOGGED: Duration = Duration::from_secs(5);

/// How long to wait from `now` until the schedule's next fire time.
pub fn delay_until_next(
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, Duration)> {
    let next = schedule.next_after(now)?;
    let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
    Some((next, wait))
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
    scheduled_run(ctx, model, None, observer).await
}

/// Runs asked for by hand (the dashboard's actions), handed to the service's queue. Cloned
/// handles share one list; the service takes what was asked on its next turn.
#[derive(Clone, Default)]
pub struct RunRequests {
    asked: Arc<std::sync::Mutex<Vec<(String, Asked)>>>,
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for RunRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunRequests")
    }
}

impl RunRequests {
    /// Asks for a run of the model named `model`. It waits its turn in the queue, after the
    /// model's own run if one is going, so runs of one model never overlap.
    pub fn ask(&self, model: &str, kind: Asked) {
        self.lock().push((model.to_string(), kind));
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<(String, Asked)> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Asked)>> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One run of `model`: of the schedule, due at its fire time `scheduled_for`, or asked for.
async fn scheduled_run(
    ctx: &SyncContext,
    model: &ModelConfig,
    scheduled_for: Option<DateTime<Utc>>,
    observer: Option<Arc<dyn RunObserver>>,
) -> RunStatus {
    queued_run(ctx, model, scheduled_for, None, observer).await
}

/// One run the queue started.
async fn queued_run(
    ctx: &SyncContext,
    model: &ModelConfig,
    scheduled_for: Option<DateTime<Utc>>,
    asked: Option<Asked>,
    observer: Option<Arc<dyn RunObserver>>,
) -> RunStatus {
    let (trigger, mode, scheduled_for) = match asked {
        None => ("schedule", RunMode::Incremental, scheduled_for),
        Some(Asked::Sync) => ("dashboard", RunMode::Incremental, None),
        Some(Asked::RetryRefused) => ("retry", RunMode::RetryRefused, None),
    };
    let opts = RunOptions {
        trigger: trigger.into(),
        mode,
        observer,
        scheduled_for,
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
    run_service_asked(ctx, observer, RunRequests::default()).await
}

/// [`run_service_observed`], also starting the runs asked for through `requests`.
pub async fn run_service_asked(
    ctx: SyncContext,
    observer: Option<Arc<dyn RunObserver>>,
    requests: RunRequests,
) {
    let pruner = tokio::spawn(prune_ledger_hourly(ctx.clone()));
    // The enabled models, as indexes into the config: nothing per model is held here beyond
    // its place in the queue; a run's buffers exist while it runs.
    let config = ctx.config.clone();
    let models: Vec<usize> = (0..config.models.len())
        .filter(|&i| config.models[i].enabled)
        .collect();
    let model = |queued: usize| &config.models[models[queued]];
    let capacity = ctx.config.service.max_concurrent_runs.max(1) as usize;
    let mut queue = RunQueue::new(
        models.iter().map(|&i| &config.models[i].schedule),
        capacity,
        Utc::now(),
    );
    for i in queue.never_due() {
        let m = model(i);
        warn!(model = %m.name, schedule = %m.schedule.expression, "the schedule has no future fire time; the model will not run");
    }
    info!(
        models = models.len(),
        max_concurrent_runs = capacity,
        "capi-sync service started"
    );
    // Each run's task, by its task id, to free the model's slot whatever way the task ends.
    let mut runs: JoinSet<()> = JoinSet::new();
    let mut model_of: HashMap<tokio::task::Id, usize> = HashMap::new();
    while !ctx.cancel.is_cancelled() {
        let now = Utc::now();
        for (name, kind) in requests.take() {
            match models.iter().position(|&i| config.models[i].name == name) {
                Some(queued) => {
                    let new = queue.ask(queued, kind, now);
                    info!(model = %name, kind = ?kind, already_waiting = !new, "run asked for");
                }
                None => {
                    warn!(model = %name, "a run was asked for a model that is not scheduled (unknown or disabled)")
                }
            }
        }
        for start in queue.start_due(now) {
            let name = &model(start.model).name;
            let delay = start.delay.to_std().unwrap_or(Duration::ZERO);
            if let Some(o) = &observer {
                o.run_started(name, delay);
            }
            if delay >= LATE_START_LOGGED {
                info!(model = %name, due_at = %start.due_at.to_rfc3339(), late_by_secs = delay.as_secs(), "run starting late: every run slot was busy (service.max_concurrent_runs)");
            } else {
                debug!(model = %name, due_at = %start.due_at.to_rfc3339(), "run starting");
            }
            let (ctx, observer, index) = (ctx.clone(), observer.clone(), models[start.model]);
            let handle = runs.spawn(async move {
                let model = &ctx.config.models[index];
                queued_run(&ctx, model, Some(start.due_at), start.asked, observer).await;
            });
            model_of.insert(handle.id(), start.model);
        }
        if let Some(o) = &observer {
            o.run_queue(queue.waiting(now), queue.running());
        }
        let wait = queue
            .next_due_after(now)
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        tokio::select! {
            _ = ctx.cancel.cancelled() => {}
            Some(ended) = runs.join_next_with_id(), if !runs.is_empty() => {
                run_ended(&mut queue, &mut model_of, model, ended);
            }
            _ = tokio::time::sleep(wait) => {}
            _ = requests.wake.notified() => {}
        }
    }
    // Shutdown: the runs see the same token, stop reading and settle what is in flight.
    while let Some(ended) = runs.join_next_with_id().await {
        run_ended(&mut queue, &mut model_of, model, ended);
    }
    if let Some(o) = &observer {
        o.run_queue(0, 0);
    }
    let _ = pruner.await;
    info!("capi-sync service stopped");
}

/// Frees the slot of the model whose run task ended.
fn run_ended<'a>(
    queue: &mut RunQueue<'_>,
    model_of: &mut HashMap<tokio::task::Id, usize>,
    model: impl Fn(usize) -> &'a ModelConfig,
    ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
) {
    let id = match &ended {
        Ok((id, ())) => *id,
        Err(e) => e.id(),
    };
    if let Some(i) = model_of.remove(&id) {
        if let Err(e) = ended {
            warn!(model = %model(i).name, error = %e, "a run's task ended abnormally");
        }
        queue.finish(i);
    }
}

/// Removes delivery-ledger entries past `state.ledger_retention`, hourly, until shutdown.
async fn prune_ledger_hourly(ctx: SyncContext) {
    loop {
        match ctx
            .state
            .prune_ledger(ctx.config.state.ledger_retention)
            .await
        {
            Ok(n) if n > 0 => info!(pruned = n, "pruned old delivery-ledger entries"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not prune the delivery ledger"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = ctx.cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(service: &str) -> Result<Config, crate::config::ConfigError> {
        let text = format!(
            "[warehouse]\nurl = \"postgres://localhost/w\"\n[meta]\naccess_token = \"t\"\n[service]\n{service}\n"
        );
        Config::from_toml_str(&text, std::path::Path::new("."))
    }

    #[test]
    fn four_runs_at_once_by_default_and_at_least_one() {
        let c = config("").unwrap();
        assert_eq!(c.service.max_concurrent_runs, 4);
        // The budget does not grow with the runs going: they share the pools and the one
        // lock session.
        assert_eq!(
            crate::app::ConnectionBudget::of(&c).total(),
            crate::app::ConnectionBudget::of(&config("max_concurrent_runs = 12").unwrap()).total()
        );
        assert_eq!(
            config("max_concurrent_runs = 12")
                .unwrap()
                .service
                .max_concurrent_runs,
            12
        );
        let e = config("max_concurrent_runs = 0").unwrap_err().to_string();
        assert!(e.contains("service.max_concurrent_runs"), "{e}");
    }

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
