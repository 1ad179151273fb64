//! Wiring: connects the warehouse, the state schema (migrating it) and the Graph client.

use crate::config::{redact_url, Config};
use crate::pipeline::SyncContext;
use crate::sink::GraphClient;
use crate::source::Warehouse;
use crate::state::StateStore;
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub async fn connect_state(config: &Config) -> anyhow::Result<StateStore> {
    let state = StateStore::connect(config.state_url(), &config.state.schema)
        .await
        .with_context(|| {
            format!(
                "while connecting to the state database at {} (set state.url, or warehouse.url when they are the same)",
                redact_url(config.state_url().expose())
            )
        })?;
    state.migrate().await.with_context(|| {
        format!(
            "while creating or upgrading capi-sync's tables in schema `{}`",
            config.state.schema
        )
    })?;
    Ok(state)
}

pub async fn connect_warehouse(config: &Config) -> anyhow::Result<Warehouse> {
    Warehouse::connect(
        &config.warehouse.url,
        config.warehouse.statement_timeout,
        config.warehouse.max_connections,
    )
    .await
    .with_context(|| {
        format!(
            "while connecting to the warehouse at {} (set warehouse.url, CAPI_SYNC_WAREHOUSE__URL or DATABASE_URL)",
            redact_url(config.warehouse.url.expose())
        )
    })
    .map(|w| w.with_page_bytes(config.warehouse.page_bytes))
}

pub async fn connect(
    config: Arc<Config>,
    cancel: CancellationToken,
) -> anyhow::Result<SyncContext> {
    let warehouse = connect_warehouse(&config).await?;
    let state = connect_state(&config).await?;
    let graph = GraphClient::new(&config.meta).context("while building the HTTP client")?;
    Ok(SyncContext {
        config,
        warehouse,
        state,
        graph,
        cancel,
    })
}

/// A token cancelled by SIGINT or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutdown requested; letting the batches in flight settle");
        t.cancel();
    });
    token
}
