//! The `run` service's dashboard: `/` (every model: its state, schedule, last run, rows
//! waiting, lag, refusals and match-key coverage) and `/models/{name}` (its runs over time,
//! its latest refused rows, its cursor and its ledger), with the actions of [`actions`].
//!
//! Server-rendered HTML (maud, which escapes what it inserts), readable without JavaScript; a
//! small inline script refreshes `<main>`. The figures come from `crate::report::collect`,
//! as `status --json`'s do. Every answer carries a Content-Security-Policy that lets only this
//! answer's inline style and script run (by a nonce drawn per answer), and frames nothing.
//! Pages show keys, ids, counts, reasons and times: never a row's values.

pub mod actions;
mod chart;
mod lag;
mod ledger_counts;
mod pages;
pub mod view;

use crate::pipeline::SyncContext;
use crate::report::ModelStatus;
use crate::scheduler::RunRequests;
use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::Utc;
pub use lag::LagHistory;
use std::sync::Arc;
use std::time::{Duration, Instant};
use view::{ModelView, RunView};

/// Runs drawn on a model's chart.
const CHART_RUNS: i64 = 60;
/// Refused rows listed on a model's page.
const REFUSED_SHOWN: i64 = 50;
/// How long the overview's figures are given again before they are gathered anew: each
/// gathering asks the state database and the warehouse (one backlog query per model), and
/// every open page refreshes every few seconds.
const OVERVIEW_TTL: Duration = Duration::from_secs(2);

/// What the dashboard's handlers read.
#[derive(Clone)]
pub struct Dashboard {
    ctx: SyncContext,
    /// The service's run queue; None where no scheduler runs (the actions then answer 503).
    requests: Option<RunRequests>,
    overview: Arc<OverviewCache>,
    lag: LagHistory,
    ledger_counts: Arc<ledger_counts::LedgerCounts>,
}

#[derive(Default)]
struct OverviewCache {
    last: std::sync::Mutex<Option<(Instant, Arc<Vec<ModelStatus>>)>>,
    gathering: tokio::sync::Mutex<()>,
}

/// The nonce of one answer's inline style and script.
#[derive(Clone)]
struct Nonce(String);

impl Dashboard {
    pub fn new(ctx: SyncContext, requests: Option<RunRequests>) -> Dashboard {
        Dashboard {
            ctx,
            requests,
            overview: Arc::default(),
            lag: LagHistory::default(),
            ledger_counts: Arc::default(),
        }
    }

    /// Where the service records each model's lag for the model pages' lag chart.
    pub fn lag_history(&self) -> LagHistory {
        self.lag.clone()
    }

    /// The dashboard's routes, each answer with the security headers. No fallback: the
    /// listener that serves them adds its own.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(overview))
            .route("/models/{name}", get(model_page))
            .route("/models/{name}/run", post(actions::run_now))
            .route("/models/{name}/retry", post(actions::retry))
            .layer(axum::middleware::from_fn(security_headers))
            .with_state(self)
    }

    /// Whether `path` is an action, which is POSTed (the probes' listener answers any other
    /// method than GET with 405 before routing).
    pub fn is_action_path(path: &str) -> bool {
        path.strip_prefix("/models/").is_some_and(|rest| {
            rest.split_once('/')
                .is_some_and(|(_, a)| a == "run" || a == "retry")
        })
    }

    async fn statuses(&self) -> anyhow::Result<Arc<Vec<ModelStatus>>> {
        let fresh = || {
            let last = self.overview.last.lock().unwrap_or_else(|e| e.into_inner());
            last.as_ref()
                .filter(|(at, _)| at.elapsed() < OVERVIEW_TTL)
                .map(|(_, s)| s.clone())
        };
        if let Some(s) = fresh() {
            return Ok(s);
        }
        // One gathering at a time, however many pages refresh.
        let _gathering = self.overview.gathering.lock().await;
        if let Some(s) = fresh() {
            return Ok(s);
        }
        let now = Utc::now();
        let mut all = Vec::with_capacity(self.ctx.config.models.len());
        for model in &self.ctx.config.models {
            let s = crate::report::collect(
                Some(&self.ctx.warehouse),
                Some(&self.ctx.state),
                model,
                now,
                self.ctx.config.service.expiring_within,
            )
            .await?;
            all.push(s);
        }
        let all = Arc::new(all);
        *self.overview.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), all.clone()));
        Ok(all)
    }
}

/// The HTML 404 of the dashboard's own listener (`service.ui_addr`).
pub fn not_found_router() -> Router {
    Router::new()
        .fallback(|Extension(nonce): Extension<Nonce>| async move {
            page(
                StatusCode::NOT_FOUND,
                "Not found",
                &nonce,
                pages::problem("Not found", "There is no page here."),
            )
        })
        .layer(axum::middleware::from_fn(security_headers))
}

fn page(status: StatusCode, title: &str, nonce: &Nonce, main: maud::Markup) -> Response {
    let html = pages::layout(title, &nonce.0, main).into_string();
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

fn unavailable(nonce: &Nonce, e: &anyhow::Error) -> Response {
    let line = crate::error_line::one_line(e);
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        nonce,
        pages::problem("The figures cannot be read right now", &line),
    )
}

async fn overview(State(d): State<Dashboard>, Extension(nonce): Extension<Nonce>) -> Response {
    let statuses = match d.statuses().await {
        Ok(s) => s,
        Err(e) => return unavailable(&nonce, &e),
    };
    let running = d.ctx.runs.running_models();
    let views: Vec<ModelView> = statuses
        .iter()
        .map(|s| ModelView::new(s, running.contains(&s.model)))
        .collect();
    page(
        StatusCode::OK,
        "Models",
        &nonce,
        pages::overview(&views, Utc::now()),
    )
}

async fn model_page(
    State(d): State<Dashboard>,
    Path(name): Path<String>,
    Extension(nonce): Extension<Nonce>,
) -> Response {
    let Some(model) = d.ctx.config.model(&name) else {
        return page(
            StatusCode::NOT_FOUND,
            "No such model",
            &nonce,
            pages::problem(
                "No such model",
                &format!("There is no model `{name}` in the config."),
            ),
        );
    };
    let now = Utc::now();
    let gathered = async {
        let state = &d.ctx.state;
        let status = crate::report::collect(
            Some(&d.ctx.warehouse),
            Some(state),
            model,
            now,
            d.ctx.config.service.expiring_within,
        )
        .await?;
        let records = state.recent_runs(&model.name, CHART_RUNS).await?;
        let runs: Vec<RunView> = records
            .iter()
            .map(|r| RunView::from_json(&crate::report::run_json(r)))
            .collect();
        let refused = state.refused_rows(&model.name, REFUSED_SHOWN).await?;
        let latest_run = records.first().map(|r| (r.id, r.finished_at.is_some()));
        let ledger = d
            .ledger_counts
            .get(
                &model.name,
                latest_run,
                Instant::now(),
                state.ledger_count(&model.name),
            )
            .await?;
        let after_runs = state.lag_after_runs(&model.name, CHART_RUNS).await?;
        anyhow::Ok((status, runs, refused, ledger, after_runs))
    };
    let (status, runs, refused, (ledger_events, ledger_last), after_runs) = match gathered.await {
        Ok(g) => g,
        Err(e) => return unavailable(&nonce, &e),
    };
    let running = d.ctx.runs.running_models().contains(&model.name);
    let view = ModelView::new(&status, running);
    let p = pages::ModelPage {
        view: &view,
        runs: &runs,
        refused: &refused,
        ledger_events,
        ledger_last,
        lag: lag::merged(&after_runs, &d.lag.of(&model.name)),
        actions: d.ctx.config.service.admin_token.is_some(),
    };
    page(StatusCode::OK, &model.name, &nonce, pages::model(&p, now))
}

/// Draws the answer's nonce and sets the headers every answer of the dashboard carries.
async fn security_headers(mut req: Request, next: Next) -> Response {
    let nonce = Nonce(format!("{:032x}", rand::random::<u128>()));
    req.extensions_mut().insert(nonce.clone());
    let mut resp = next.run(req).await;
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{n}'; style-src 'nonce-{n}'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        n = nonce.0
    );
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::Dashboard;

    #[test]
    fn the_actions_are_told_from_the_pages_by_their_path() {
        assert!(Dashboard::is_action_path("/models/leads/run"));
        assert!(Dashboard::is_action_path("/models/leads/retry"));
        assert!(!Dashboard::is_action_path("/models/leads"));
        assert!(!Dashboard::is_action_path("/metrics"));
        assert!(!Dashboard::is_action_path("/models/leads/other"));
    }
}
