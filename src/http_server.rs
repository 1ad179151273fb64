//! The `run` service's HTTP endpoints on `service.metrics_addr`: `/healthz` (the process is
//! alive), `/readyz` (the warehouse and the state database answer `SELECT 1` within
//! [`READY_TIMEOUT`], and no run is past its deadline) and `/metrics` (Prometheus text format). Served with hyper, like the
//! sandbox; stops with its cancellation token.

use crate::metrics::Metrics;
use crate::observer::RunObserver;
use crate::pipeline::SyncContext;
use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long each database may take to answer `/readyz`'s `SELECT 1`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the service measures each model's rows waiting and cursor lag (one aggregate
/// query per model on the warehouse), besides right after each run.
pub const BACKLOG_REFRESH: Duration = Duration::from_secs(60);

/// The endpoints, listening.
pub struct Endpoints {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoints {
    /// Waits until the server stopped (after its token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves until `stop` is cancelled.
pub async fn start(
    addr: SocketAddr,
    ctx: SyncContext,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<Endpoints> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, ctx, metrics, stop));
    Ok(Endpoints { addr, task })
}

async fn accept_loop(
    listener: TcpListener,
    ctx: SyncContext,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (ctx, metrics, stop) = (ctx.clone(), metrics.clone(), stop.clone());
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let (ctx, metrics) = (ctx.clone(), metrics.clone());
                            async move { Ok::<_, Infallible>(route(&ctx, &metrics, &req).await) }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = stop.cancelled() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                            }
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn route(
    ctx: &SyncContext,
    metrics: &Metrics,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let problems = readiness(ctx).await;
            if problems.is_empty() {
                text(StatusCode::OK, PLAIN, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {}\n", problems.join("; ")),
                )
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

/// What keeps the service from working: each database that does not answer in time.
async fn readiness(ctx: &SyncContext) -> Vec<String> {
    let ping = |pool: sqlx::PgPool, what: &'static str| async move {
        match tokio::time::timeout(READY_TIMEOUT, sqlx::query("SELECT 1").execute(&pool)).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("{what} does not answer ({e})")),
            Err(_) => Some(format!(
                "{what} did not answer within {}s",
                READY_TIMEOUT.as_secs()
            )),
        }
    };
    let (w, s) = tokio::join!(
        ping(ctx.warehouse.pool().clone(), "the warehouse"),
        ping(ctx.state.pool().clone(), "the state database")
    );
    // A run past its deadline is draining what was in flight, or stuck where no bound
    // reaches; either way the model is not syncing on schedule.
    let overdue = ctx.runs.overdue().into_iter().map(|r| {
        format!(
            "the run of model `{}` is {}s past its deadline (service.run_deadline; running for {}s)",
            r.model,
            r.past_deadline_by.as_secs(),
            r.running_for.as_secs()
        )
    });
    w.into_iter().chain(s).chain(overdue).collect()
}

/// Measures every enabled model's waiting rows and lag into the metrics.
pub async fn refresh_backlog(ctx: &SyncContext, metrics: &Metrics) {
    refresh_backlog_of(ctx, metrics, None).await
}

/// Measures the waiting rows and lag of these enabled models (all when `only` is None).
pub async fn refresh_backlog_of(
    ctx: &SyncContext,
    metrics: &Metrics,
    only: Option<&std::collections::BTreeSet<String>>,
) {
    let chosen = |m: &&crate::config::ModelConfig| only.is_none_or(|o| o.contains(&m.name));
    for model in ctx
        .config
        .models
        .iter()
        .filter(|m| m.enabled)
        .filter(chosen)
    {
        let after = match ctx.state.cursor(&model.name).await {
            Ok(a) => a,
            Err(e) => {
                warn!(model = %model.name, error = %e, "cannot read the cursor to measure the lag");
                continue;
            }
        };
        match crate::ops::model_backlog(&ctx.warehouse, model, after.as_ref()).await {
            Ok(b) => metrics.set_backlog(&model.name, b.rows, b.oldest_age_secs),
            Err(e) => warn!(model = %model.name, error = %e, "cannot measure the rows waiting"),
        }
    }
}

/// The `run` service: the scheduler, with the HTTP endpoints on `service.metrics_addr`
/// (none when it is empty) and the metrics fed by every run. Returns after shutdown.
pub async fn run_service(ctx: SyncContext) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(
        ctx.config
            .models
            .iter()
            .filter(|m| m.enabled)
            .map(|m| m.name.as_str()),
    ));
    for model in ctx.config.models.iter().filter(|m| m.enabled) {
        if let Ok(Some(at)) = ctx.state.last_success(&model.name).await {
            metrics.set_last_success(&model.name, at);
        }
    }
    let stop = CancellationToken::new();
    let endpoints = match ctx
        .config
        .service
        .metrics_addr
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        Some(text) => {
            let addr: SocketAddr = text.parse().map_err(|_| {
                crate::ops::UsageError(format!(
                    "service.metrics_addr `{text}` is not an address to listen on (like 127.0.0.1:9464); set it to \"\" to serve no endpoints"
                ))
            })?;
            let e = start(addr, ctx.clone(), metrics.clone(), stop.clone())
                .await
                .with_context(|| {
                    format!("while listening on service.metrics_addr {addr} for /healthz, /readyz and /metrics (is another process using it? set service.metrics_addr to another address, or \"\" to serve none)")
                })?;
            info!(addr = %e.addr, "serving /healthz, /readyz and /metrics");
            Some(e)
        }
        None => None,
    };
    let refresher = {
        let (ctx, metrics, stop) = (ctx.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            // Every model each BACKLOG_REFRESH; in between, only those whose runs ended.
            let mut next_full = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= next_full {
                    next_full = tokio::time::Instant::now() + BACKLOG_REFRESH;
                    metrics.take_ended();
                    refresh_backlog(&ctx, &metrics).await;
                } else {
                    refresh_backlog_of(&ctx, &metrics, Some(&metrics.take_ended())).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next_full) => {}
                    _ = metrics.run_ended.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    let observer: Arc<dyn RunObserver> = metrics.clone();
    crate::scheduler::run_service_observed(ctx, Some(observer)).await;
    stop.cancel();
    let _ = refresher.await;
    if let Some(e) = endpoints {
        e.stopped().await;
    }
    Ok(())
}
