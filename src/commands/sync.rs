//! `capi-sync sync`: the named models (all enabled ones when none is) sync once, now, with
//! a progress display, and a summary line each. `--from` starts a backfill at a cursor value;
//! `--dry-run` maps and counts without sending.

use super::{load_config, select_models, Exit, UsageError};
use crate::pipeline::{sync_model_once, RunOptions, RunStatus};
use std::sync::Arc;

/// `sync`'s flags.
#[derive(Debug, Clone, Default)]
pub struct SyncArgs {
    pub dry_run: bool,
    pub test_event_code: Option<String>,
    pub from: Option<String>,
    pub json_logs: bool,
}

/// Syncs the named models (all enabled ones when none is) once, one after another.
pub async fn run(path: &std::path::Path, names: &[String], args: SyncArgs) -> anyhow::Result<Exit> {
    let config = load_config(path)?;
    let models = select_models(&config, names)?;
    if args.from.is_some() && models.len() != 1 {
        return Err(UsageError(format!(
            "--from takes a value of one model's cursor; name exactly one model (got {})",
            models.len()
        ))
        .into());
    }
    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config.clone(), cancel).await?;
    let dry_run = args.dry_run;
    let mut exit = Exit::Ok;
    for model in models {
        // Where this run starts: a backfill's point (checked, and its rows outside Meta's
        // window reported, before anything is read), else the stored cursor.
        let after = match &args.from {
            Some(v) => super::reset::backfill_start(&ctx, model, v).await?,
            None => ctx.state.cursor(&model.name).await.ok().flatten(),
        };
        let (progress, _count) = start_progress(&ctx, model, after, args.json_logs);
        let opts = RunOptions {
            trigger: if args.from.is_some() {
                "backfill"
            } else {
                "manual"
            }
            .into(),
            from: args.from.clone(),
            dry_run,
            test_event_code: args.test_event_code.clone(),
            observer: Some(progress.clone()),
            ..Default::default()
        };
        let summary = sync_model_once(&ctx, model, &opts).await;
        progress.finish();
        println!("{}", super::summary::format_summary(&summary, dry_run));
        if matches!(summary.status, RunStatus::Failed | RunStatus::Skipped) {
            // The first failed run's error kind gives the code; a skipped run (another
            // process holds the model) has none and counts as a model that did not sync.
            if exit == Exit::Ok {
                exit = summary
                    .error_kind
                    .map_or(Exit::SyncFailed, |k| k.exit_code());
            }
            eprintln!(
                "capi-sync: model {} {}: {}",
                summary.model,
                summary.status.as_str(),
                summary.error.as_deref().unwrap_or("unknown error")
            );
        }
    }
    Ok(exit)
}

/// A progress bar or progress log lines for one run, and the count of the rows waiting that
/// gives it an estimate: counted beside the run, not before it. The count reads the whole
/// backlog (for a 5M-row backfill about a second of the warehouse's time, and more on larger
/// tables), and the run's first pages need not wait for it. Dropping the guard stops a count
/// still going.
fn start_progress(
    ctx: &crate::pipeline::SyncContext,
    model: &crate::config::ModelConfig,
    after: Option<crate::state::CursorPosition>,
    json_logs: bool,
) -> (
    Arc<crate::progress::Progress>,
    crate::pipeline::deadline::AbortOnDrop<()>,
) {
    let progress = crate::progress::Progress::start(
        &model.name,
        crate::progress::ProgressStyle::detect(json_logs),
    );
    let (warehouse, model, told) = (ctx.warehouse.clone(), model.clone(), progress.clone());
    let count = crate::pipeline::deadline::AbortOnDrop::spawn(async move {
        // The estimate only feeds the ETA: when it cannot be had, the run goes on without one.
        if let Ok(b) = super::model_backlog(&warehouse, &model, after.as_ref()).await {
            told.set_estimate(b.rows.max(0) as u64);
        }
    });
    (progress, count)
}
