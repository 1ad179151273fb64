//! The `run` service's HTTP endpoints on `service.metrics_addr`: `/healthz` (the process is
//! alive), `/readyz` (the warehouse and the state database answer `SELECT 1` within
//! [`READY_TIMEOUT`], and no run is past its deadline) and `/metrics` (Prometheus text format).
//! The routes are an axum `Router`; each connection is served by hyper's HTTP/1 server, whose
//! header read timeout axum's own `serve` does not expose. Stops with its cancellation token.
//!
//! The endpoints face whatever can reach `service.metrics_addr`, so a client cannot hold them:
//! a connection must send its request headers within [`EndpointLimits::header_read_timeout`]
//! (an idle keep-alive connection too), at most [`EndpointLimits::max_connections`] are served
//! at once (the next ones wait in the listen backlog until one closes), and `/readyz` asks the
//! databases at most once per [`EndpointLimits::readiness_ttl`], so a flood of probes cannot
//! take the pool connections the runs need.
//!
//! The dashboard (`crate::dashboard`) is served beside them, or on `service.ui_addr` by a
//! listener of its own that keeps the same limits.

use crate::config::UiPlacement;
use crate::dashboard::Dashboard;
use crate::metrics::Metrics;
use crate::pipeline::observer::RunObserver;
use crate::pipeline::SyncContext;
use crate::source::{Expiry, ExpiryCount};
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long each database may take to answer `/readyz`'s `SELECT 1`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the service measures each model's rows waiting and cursor lag (one aggregate
/// query per model on the warehouse), besides right after each run.
pub const BACKLOG_REFRESH: Duration = Duration::from_secs(60);

/// What keeps slow, idle or numerous clients from holding the endpoints.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    /// A connection that has not sent a whole request head within this time is closed.
    /// Scrapers and probes send theirs at once; a client that trickles bytes (or keeps an idle
    /// connection open) would otherwise hold a connection for as long as it likes.
    pub header_read_timeout: Duration,
    /// Connections served at once. Past it, new connections wait in the listen backlog and
    /// are served as others close: a handful of Prometheus servers and kubelets need a few.
    pub max_connections: usize,
    /// How long one `/readyz` answer is given again before the databases are asked anew.
    pub readiness_ttl: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
            // Probes come every few seconds (kubelet's default period is 10 s): an answer two
            // seconds old is as good as a new one to them.
            readiness_ttl: Duration::from_secs(2),
        }
    }
}

/// The endpoints, listening.
pub struct Endpoints {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    readiness: Arc<ReadinessCache>,
}

impl Endpoints {
    /// Waits until the server stopped (after its token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    /// How many times `/readyz` has asked the databases.
    pub fn readiness_probes(&self) -> u64 {
        self.readiness.probes.load(Ordering::Relaxed)
    }
}

/// Binds `addr` and serves until `stop` is cancelled, with the default limits.
pub async fn start(
    addr: SocketAddr,
    ctx: SyncContext,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<Endpoints> {
    start_with_limits(addr, ctx, metrics, stop, EndpointLimits::default()).await
}

/// Binds `addr` and serves until `stop` is cancelled.
pub async fn start_with_limits(
    addr: SocketAddr,
    ctx: SyncContext,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    limits: EndpointLimits,
) -> std::io::Result<Endpoints> {
    start_serving(addr, ctx, metrics, stop, limits, None).await
}

/// Binds `addr` and serves the endpoints, with the dashboard beside them when given, until
/// `stop` is cancelled.
pub async fn start_serving(
    addr: SocketAddr,
    ctx: SyncContext,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    limits: EndpointLimits,
    dashboard: Option<Dashboard>,
) -> std::io::Result<Endpoints> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let readiness = Arc::new(ReadinessCache::new(limits.readiness_ttl));
    let routes = router(
        Served {
            ctx,
            metrics,
            readiness: readiness.clone(),
        },
        dashboard,
    );
    let task = tokio::spawn(accept_loop(listener, routes, limits, stop));
    Ok(Endpoints {
        addr,
        task,
        readiness,
    })
}

/// Binds `addr` and serves the dashboard alone (`service.ui_addr`), with the endpoints'
/// limits, until `stop` is cancelled.
pub async fn start_dashboard(
    addr: SocketAddr,
    dashboard: Dashboard,
    stop: CancellationToken,
    limits: EndpointLimits,
) -> std::io::Result<Endpoints> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let routes = dashboard
        .router()
        .merge(crate::dashboard::not_found_router());
    let task = tokio::spawn(accept_loop(listener, routes, limits, stop));
    Ok(Endpoints {
        addr,
        task,
        readiness: Arc::new(ReadinessCache::new(limits.readiness_ttl)),
    })
}

/// What the handlers read.
#[derive(Clone)]
struct Served {
    ctx: SyncContext,
    metrics: Arc<Metrics>,
    readiness: Arc<ReadinessCache>,
}

/// The three endpoints, and the dashboard's pages when given; any other path is a 404, any
/// method but GET (and HEAD) a 405, except the dashboard's actions, which are POSTed.
fn router(served: Served, dashboard: Option<Dashboard>) -> Router {
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(served);
    let routes = match dashboard {
        Some(d) => probes.merge(d.router()).fallback(not_found_with_dashboard),
        None => probes.fallback(not_found),
    };
    routes.layer(axum::middleware::from_fn(only_get))
}

async fn accept_loop(
    listener: TcpListener,
    routes: Router,
    limits: EndpointLimits,
    stop: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // A connection is accepted only with a slot in hand: past the cap, the kernel holds the
    // next connections in the listen backlog, unanswered, until a served one closes.
    let mut slot: Option<OwnedSemaphorePermit> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            freed = slots.clone().acquire_owned(), if slot.is_none() => slot = freed.ok(),
            accepted = listener.accept(), if slot.is_some() => match accepted {
                Ok((stream, _)) => {
                    let held = slot.take();
                    let (svc, stop) = (TowerToHyperService::new(routes.clone()), stop.clone());
                    conns.spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(limits.header_read_timeout)
                            .serve_connection(TokioIo::new(stream), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = stop.cancelled() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                            }
                        }
                        drop(held);
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

/// The last `/readyz` answer, given again for `ttl`; one request at a time asks the databases.
#[derive(Debug)]
struct ReadinessCache {
    ttl: Duration,
    last: std::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    asking: tokio::sync::Mutex<()>,
    probes: AtomicU64,
}

impl ReadinessCache {
    fn new(ttl: Duration) -> ReadinessCache {
        ReadinessCache {
            ttl,
            last: std::sync::Mutex::new(None),
            asking: tokio::sync::Mutex::new(()),
            probes: AtomicU64::new(0),
        }
    }

    fn cached(&self, fresh_only: bool) -> Option<Arc<Vec<String>>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(at, _)| !fresh_only || at.elapsed() < self.ttl)
            .map(|(_, problems)| problems.clone())
    }

    /// The databases' problems (none: both answer), asked at most once per `ttl`.
    async fn answer(&self, ctx: &SyncContext) -> Arc<Vec<String>> {
        if let Some(fresh) = self.cached(true) {
            return fresh;
        }
        let _asking = match self.asking.try_lock() {
            Ok(guard) => guard,
            // Another request is asking the databases: the previous answer stands meanwhile,
            // and only the very first requests wait for one.
            Err(_) => match self.cached(false) {
                Some(previous) => return previous,
                None => self.asking.lock().await,
            },
        };
        if let Some(fresh) = self.cached(true) {
            return fresh;
        }
        self.probes.fetch_add(1, Ordering::Relaxed);
        let problems = Arc::new(database_problems(ctx).await);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), problems.clone()));
        problems
    }
}

/// Probes and scrapers only read: anything but GET (or HEAD) is refused before routing, but
/// for the dashboard's actions (which need their token, and answer 404 where no dashboard is
/// served).
async fn only_get(req: Request, next: Next) -> Response {
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && !Dashboard::is_action_path(req.uri().path())
    {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n").into_response();
    }
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(served): State<Served>) -> Response {
    // The databases' answer may be a second or two old; the runs are read now (no I/O), so a
    // run that just ended is no longer reported.
    let databases = served.readiness.answer(&served.ctx).await;
    let problems: Vec<String> = databases
        .iter()
        .cloned()
        .chain(overdue_runs(&served.ctx))
        .collect();
    if problems.is_empty() {
        "ready\n".into_response()
    } else {
        let body = format!("not ready: {}\n", problems.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(served): State<Served>) -> Response {
    let content_type = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    ([(CONTENT_TYPE, content_type)], served.metrics.render()).into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found; try /healthz, /readyz or /metrics\n",
    )
}

async fn not_found_with_dashboard() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found; try /, /healthz, /readyz or /metrics\n",
    )
}

/// What keeps the service from working: each database that does not answer in time.
async fn database_problems(ctx: &SyncContext) -> Vec<String> {
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
    w.into_iter().chain(s).collect()
}

/// Each run past its deadline: it is draining what was in flight, or stuck where no bound
/// reaches; either way the model is not syncing on schedule.
fn overdue_runs(ctx: &SyncContext) -> impl Iterator<Item = String> {
    ctx.runs.overdue().into_iter().map(|r| {
        format!(
            "the run of model `{}` is {}s past its deadline (service.run_deadline; running for {}s)",
            r.model,
            r.past_deadline_by.as_secs(),
            r.running_for.as_secs()
        )
    })
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
    measure_backlog(ctx, metrics, only, None).await
}

/// [`refresh_backlog_of`], also recording each lag measured into `lag` (the dashboard's).
async fn measure_backlog(
    ctx: &SyncContext,
    metrics: &Metrics,
    only: Option<&std::collections::BTreeSet<String>>,
    lag: Option<&crate::dashboard::LagHistory>,
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
        let horizon = ctx.config.service.expiring_within;
        let backlog = crate::source::model_backlog_with_expiry(
            &ctx.warehouse,
            model,
            after.as_ref(),
            horizon,
        );
        match backlog.await {
            Ok(b) => {
                metrics.set_backlog(&model.name, b.rows, b.oldest_age_secs);
                // As `status` reads it: nothing waiting is no lag.
                let secs = if b.rows == 0 {
                    Some(0.0)
                } else {
                    b.oldest_age_secs
                };
                if let Some(secs) = secs {
                    if let Some(history) = lag {
                        history.record(&model.name, chrono::Utc::now(), secs);
                    }
                    // The first measurement after a run is that run's lag (the dashboard's
                    // lag line over the runs, which outlives a restart).
                    if let Err(e) = ctx.state.record_lag_after_run(&model.name, secs).await {
                        warn!(model = %model.name, error = %e, "cannot record the lag after the run");
                    }
                }
                match &b.expiry {
                    Some(ExpiryCount::Counted(e)) => {
                        metrics.set_expiry(&model.name, Some(e));
                        warn_if_too_late(model, e, metrics, chrono::Utc::now());
                    }
                    _ => metrics.set_expiry(&model.name, None),
                }
            }
            Err(e) => warn!(model = %model.name, error = %e, "cannot measure the rows waiting"),
        }
    }
}

/// Where the service listens, once it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// `/healthz`, `/readyz` and `/metrics` (`service.metrics_addr`).
    pub endpoints: Option<SocketAddr>,
    /// The dashboard: on the endpoints' address, or on `service.ui_addr`.
    pub dashboard: Option<SocketAddr>,
}

/// Warns when the model's next scheduled run comes after the earliest moment a waiting row
/// leaves Meta's window: that row will be refused (`event_time_too_old`) unless a run comes
/// sooner (`capi-sync sync`, or a tighter schedule). Once per earliest deadline, not at every
/// refresh. Counts and times only.
fn warn_if_too_late(
    model: &crate::config::ModelConfig,
    expiry: &Expiry,
    metrics: &Metrics,
    now: chrono::DateTime<chrono::Utc>,
) {
    let Some(earliest) = expiry.earliest else {
        return;
    };
    let next = model.schedule.next_after(now);
    if next.is_some_and(|n| n <= earliest) || !metrics.first_expiry_warning(&model.name, earliest) {
        return;
    }
    warn!(
        model = %model.name,
        rows_expiring = expiry.expiring,
        rows_expired_waiting = expiry.expired,
        earliest_expiry = %earliest.to_rfc3339(),
        next_run = %next.map(|n| n.to_rfc3339()).unwrap_or_else(|| "never".into()),
        "rows waiting leave Meta's window before the model's next run; they will be refused as event_time_too_old unless they are sent sooner (capi-sync sync, or a more frequent schedule)"
    );
}

/// The `run` service: the scheduler, with the HTTP endpoints on `service.metrics_addr`
/// (none when it is empty), the dashboard, and the metrics fed by every run. Returns after
/// shutdown.
pub async fn run_service(ctx: SyncContext) -> anyhow::Result<()> {
    run_service_announced(ctx, None).await
}

/// [`run_service`], telling `listening` where it serves once its listeners are bound.
pub async fn run_service_announced(
    ctx: SyncContext,
    listening: Option<tokio::sync::oneshot::Sender<Listening>>,
) -> anyhow::Result<()> {
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
        // The last count of a previous life of the service, until this one's first run.
        if let Some(run) = ctx
            .state
            .recent_runs(&model.name, 1)
            .await
            .ok()
            .and_then(|r| r.into_iter().next())
        {
            if let (Some(null_cursor), Some(null_key)) = (run.rows_null_cursor, run.rows_null_key) {
                let rows = crate::source::UnreadableRows {
                    null_cursor,
                    null_key,
                };
                metrics.set_unreadable(&model.name, rows);
            }
        }
        // The last scores a previous life of the service read, until this one reads Meta's.
        if let Ok(q) = ctx.state.latest_quality(&model.name).await {
            metrics.set_quality(&model.name, &q.scores);
        }
    }
    let stop = CancellationToken::new();
    let requests = crate::scheduler::RunRequests::default();
    let dashboard = Dashboard::new(ctx.clone(), Some(requests.clone()));
    let lag = dashboard.lag_history();
    let limits = EndpointLimits::default();
    let (beside, own) = match ctx.config.service.ui {
        UiPlacement::WithEndpoints => (Some(dashboard), None),
        UiPlacement::Own(addr) => (None, Some((addr, dashboard))),
        UiPlacement::Off => (None, None),
    };
    let mut where_ = Listening {
        endpoints: None,
        dashboard: None,
    };
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
                crate::exit::UsageError(format!(
                    "service.metrics_addr `{text}` is not an address to listen on (like 127.0.0.1:9464); set it to \"\" to serve no endpoints"
                ))
            })?;
            let with_ui = beside.is_some();
            let e = start_serving(addr, ctx.clone(), metrics.clone(), stop.clone(), limits, beside)
                .await
                .with_context(|| {
                    format!("while listening on service.metrics_addr {addr} for /healthz, /readyz and /metrics (is another process using it? set service.metrics_addr to another address, or \"\" to serve none)")
                })?;
            info!(addr = %e.addr, "serving /healthz, /readyz and /metrics");
            where_.endpoints = Some(e.addr);
            if with_ui {
                info!(url = %format!("http://{}/", e.addr), "serving the dashboard");
                where_.dashboard = Some(e.addr);
            }
            Some(e)
        }
        None => None,
    };
    let ui = match own {
        Some((addr, dashboard)) => {
            let e = start_dashboard(addr, dashboard, stop.clone(), limits)
                .await
                .with_context(|| {
                    format!("while listening on service.ui_addr {addr} for the dashboard (is another process using it? set service.ui_addr to another address, or \"\" to serve none)")
                })?;
            info!(url = %format!("http://{}/", e.addr), "serving the dashboard");
            where_.dashboard = Some(e.addr);
            Some(e)
        }
        None => None,
    };
    if where_.dashboard.is_none() {
        info!("the dashboard is not served (service.ui_addr is \"\", or unset with service.metrics_addr \"\")");
    }
    if let Some(tx) = listening {
        let _ = tx.send(where_);
    }
    let refresher = {
        let (ctx, metrics, stop) = (ctx.clone(), metrics.clone(), stop.clone());
        let lag = Some(lag);
        tokio::spawn(async move {
            // Every model each BACKLOG_REFRESH; in between, only those whose runs ended.
            let mut next_full = tokio::time::Instant::now();
            loop {
                if tokio::time::Instant::now() >= next_full {
                    next_full = tokio::time::Instant::now() + BACKLOG_REFRESH;
                    metrics.take_ended();
                    measure_backlog(&ctx, &metrics, None, lag.as_ref()).await;
                } else {
                    let ended = metrics.take_ended();
                    measure_backlog(&ctx, &metrics, Some(&ended), lag.as_ref()).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next_full) => {}
                    _ = metrics.run_ended.notified() => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    let quality = {
        let (ctx, metrics, stop) = (ctx.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            crate::quality::fetch_periodically(&ctx.config, &ctx.graph, &ctx.state, stop, |round| {
                for q in round {
                    metrics.set_quality(&q.model, &q.scores);
                }
            })
            .await
        })
    };
    let observer: Arc<dyn RunObserver> = metrics.clone();
    crate::scheduler::run_service_asked(ctx, Some(observer), requests).await;
    stop.cancel();
    let _ = refresher.await;
    let _ = quality.await;
    for e in endpoints.into_iter().chain(ui) {
        e.stopped().await;
    }
    Ok(())
}
