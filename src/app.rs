//! Wiring: connects the warehouse, the state schema (migrating it) and the Graph client.

use crate::config::{redact_url, Config};
use crate::pipeline::SyncContext;
use crate::sink::GraphClient;
use crate::source::Warehouse;
use crate::state::StateStore;
use anyhow::Context;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The most connections to Postgres the `run` service opens at once: the warehouse pool, the
/// state pool, and one lock session per run going (at most `service.max_concurrent_runs`).
/// It does not grow with the number of models. (The migrations' one session at start-up is
/// closed before the service starts.)
pub fn connection_budget(config: &Config) -> u32 {
    config.warehouse.max_connections
        + crate::state::POOL_CONNECTIONS
        + config.service.max_concurrent_runs
}

pub async fn connect_state(config: &Config) -> anyhow::Result<StateStore> {
    let limits = crate::state::StateLimits {
        statement_timeout: config.state.statement_timeout,
        ..Default::default()
    };
    let state = StateStore::connect_with_limits(config.state_url(), &config.state.schema, &limits)
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
        runs: Default::default(),
    })
}

/// Exit status when a second signal, or the end of the shutdown grace, stops the process
/// before its runs settled (128 + SIGINT, as shells report an interrupted command).
pub const EXIT_FORCED: i32 = 130;

/// A token cancelled by SIGINT or SIGTERM. A second signal exits the process at once.
pub fn shutdown_token() -> CancellationToken {
    shutdown_token_within(None)
}

/// [`shutdown_token`] for commands that run syncs: after the first signal, the runs stop
/// reading and settle what is in flight; if they have not finished within `grace`
/// (`service.shutdown_grace`), or a second signal comes, the process exits at once. Whatever
/// was not recorded then is sent again by the next run under the same event ids.
pub fn shutdown_token_with_grace(grace: std::time::Duration) -> CancellationToken {
    shutdown_token_within(Some(grace))
}

fn shutdown_token_within(grace: Option<std::time::Duration>) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Registered now, before the caller goes on: a signal from here on is seen.
    let mut signals = Signals::new();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!(
            grace = ?grace,
            "shutdown requested; letting the batches in flight settle (a second signal exits at once)"
        );
        t.cancel();
        let grace_over = async {
            match grace {
                Some(g) => tokio::time::sleep(g).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.next() => {
                tracing::warn!("second shutdown signal; exiting now without waiting for runs to settle");
            }
            _ = grace_over => {
                tracing::warn!(grace = ?grace, "runs did not settle within service.shutdown_grace; exiting now");
            }
        }
        std::process::exit(EXIT_FORCED);
    });
    token
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
                int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
