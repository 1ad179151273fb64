//! `capi-sync sandbox`: the Graph API stand-in on a port, with the faults asked for, until
//! SIGINT or SIGTERM. Point `meta.graph_url` at it.

use super::Exit;
use crate::sandbox::{serve, SandboxConfig};
use anyhow::Context;

/// Serves the sandbox on `host:port` with `config` until the process is told to stop.
pub async fn run(host: &str, port: u16, config: SandboxConfig) -> anyhow::Result<Exit> {
    let addr: std::net::SocketAddr = format!("{host}:{port}")
        .parse()
        .with_context(|| format!("`{host}:{port}` is not an address to listen on"))?;
    let cancel = crate::app::shutdown_token();
    tracing::info!(%addr, record = ?config.record, "sandbox listening; point meta.graph_url at http://{addr}");
    if config.count_only {
        tracing::warn!(
            "sandbox counts events without validating them (--count-only): for benchmarks only"
        );
    }
    serve(addr, config, cancel)
        .await
        .with_context(|| format!("while serving the sandbox on {addr}"))?;
    Ok(Exit::Ok)
}
