//! `capi-sync migrate`: creates or upgrades our own tables. It runs without a config file,
//! from the environment alone, so that a deployment can migrate before it is configured.

use super::Exit;
use crate::config::Config;

/// Migrates the state schema named by the config at `path` (or by the environment when
/// there is no such file).
pub async fn run(path: &std::path::Path) -> anyhow::Result<Exit> {
    let config = if path.exists() {
        Config::load(path)?
    } else {
        Config::from_env_only()?
    };
    let state = crate::app::connect_state(&config).await?;
    println!(
        "capi-sync tables are up to date in schema `{}`",
        state.schema()
    );
    Ok(Exit::Ok)
}
