//! `capi-sync run`: the service. Every enabled model syncs on its cron schedule, with the
//! probes and metrics served, until SIGINT or SIGTERM.

use super::{load_config, Exit};

/// Runs the service on the config at `path` until it is told to stop.
pub async fn run(path: &std::path::Path) -> anyhow::Result<Exit> {
    let config = load_config(path)?;
    if config.models.iter().all(|m| !m.enabled) {
        anyhow::bail!(
            "no enabled models in {}; nothing to schedule",
            config.source
        );
    }
    let cancel = crate::app::shutdown_token_with_grace(config.service.shutdown_grace);
    let ctx = crate::app::connect(config, cancel).await?;
    crate::http_server::run_service(ctx).await?;
    Ok(Exit::Ok)
}
