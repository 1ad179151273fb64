//! `capi-sync retry`: a model's refused rows are read again by key, and those that are now
//! valid are sent; the others stay refused.

use super::{load_config, select_models, Exit};
use crate::pipeline::{sync_model_once, RunOptions, RunStatus};

/// Sends the model's refused rows again, read by key, where they are now valid.
pub async fn run(path: &std::path::Path, name: &str) -> anyhow::Result<Exit> {
    let config = load_config(path)?;
    let model = select_models(&config, &[name.to_string()])?[0];
    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config.clone(), cancel).await?;
    let opts = RunOptions {
        trigger: "retry".into(),
        mode: crate::pipeline::RunMode::RetryRefused,
        ..Default::default()
    };
    let summary = sync_model_once(&ctx, model, &opts).await;
    println!("{}", super::summary::format_summary(&summary, false));
    let missing = summary.counters.rows_requested - summary.counters.rows_read;
    if missing > 0 {
        println!(
            "  {missing} refused rows are no longer returned by the model's query and stay refused"
        );
    }
    if summary.status != RunStatus::Succeeded {
        eprintln!(
            "capi-sync: model {} {}: {}",
            summary.model,
            summary.status.as_str(),
            summary.error.as_deref().unwrap_or("unknown error")
        );
        return Ok(summary
            .error_kind
            .map_or(Exit::SyncFailed, |k| k.exit_code()));
    }
    Ok(Exit::Ok)
}
