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
    let limits = crate::state::StateLimits {
        statement_timeout: config.state.statement_timeout,
        ..Default::default()
    };
    let state = StateStore::connect_with_pool(
        config.state_url(),
        &config.state.schema,
        &limits,
        config.state.max_connections,
    )
    .await
        .with_context(|| {
            format!(
                "while connecting to the state database at {} (set state.url, or warehouse.url when they are the same)",
                redact_url(config.state_url().expose())
            )
        })?
        .with_ledger_partition_bytes(config.state.ledger_partition_bytes);
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
        runs: Default::default(),
        pixels: Default::default(),
    })
}

/// The most connections a syncing process (`run`, `sync`) opens, however many models it
/// has: the warehouse pool, the state pool, and the one session holding every model lock.
/// The readiness probe and `/metrics` use the pools' sessions. At startup the migrations
/// take one session of their own, closed before any run starts and any lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    pub warehouse: u32,
    pub state: u32,
    pub lock_sessions: u32,
}

/// Sessions holding the model locks: one per process (see `state::lock_keeper`).
pub const LOCK_SESSIONS: u32 = 1;

impl ConnectionBudget {
    pub fn of(config: &Config) -> ConnectionBudget {
        ConnectionBudget {
            warehouse: config.warehouse.max_connections,
            state: config.state.max_connections,
            lock_sessions: LOCK_SESSIONS,
        }
    }

    pub fn total(&self) -> u32 {
        self.warehouse + self.state + self.lock_sessions
    }
}

impl std::fmt::Display for ConnectionBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} = warehouse.max_connections ({}) + state.max_connections ({}) + {} model-lock session, however many models run",
            self.total(),
            self.warehouse,
            self.state,
            self.lock_sessions
        )
    }
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
