//! The dashboard's actions: `POST /models/{name}/run` queues a sync of the model, `POST
//! /models/{name}/retry` queues a retry of its refused rows (what `capi-sync retry` does).
//! Both go through the service's run queue (`crate::scheduler::RunRequests`), so they wait for
//! a free run slot and for the model's own run to end, and the model's lock is taken as for
//! any run.
//!
//! Each needs `Authorization: Bearer <service.admin_token>`. Without a configured token every
//! action answers 401, as a wrong or missing token does: the dashboard is read-only by default
//! and says how to turn the actions on. GET on an action answers 405 (an action is never a
//! link a crawler or a prefetch could follow).

use super::Dashboard;
use crate::scheduler::Asked;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(super) async fn run_now(
    State(d): State<Dashboard>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    ask(&d, &name, &headers, Asked::Sync)
}

pub(super) async fn retry(
    State(d): State<Dashboard>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    ask(&d, &name, &headers, Asked::RetryRefused)
}

fn ask(d: &Dashboard, name: &str, headers: &HeaderMap, kind: Asked) -> Response {
    if let Err(why) = authorize(d, headers) {
        return unauthorized(why);
    }
    let Some(model) = d.ctx.config.model(name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no model `{name}` in the config\n"),
        );
    };
    if !model.enabled {
        return text(
            StatusCode::CONFLICT,
            format!("model `{name}` is disabled (enabled = false): the service does not run it\n"),
        );
    }
    let Some(requests) = &d.requests else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no scheduler runs in this process to queue the run\n".into(),
        );
    };
    requests.ask(name, kind);
    let what = match kind {
        Asked::Sync => "a run",
        Asked::RetryRefused => "a retry of the refused rows",
    };
    text(
        StatusCode::ACCEPTED,
        format!("{what} of model `{name}` is queued: it starts when a run slot is free and the model's own run has ended\n"),
    )
}

/// Ok when the request carries the configured admin token; otherwise why not, as the 401's
/// body.
fn authorize(d: &Dashboard, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(token) = &d.ctx.config.service.admin_token else {
        return Err("the dashboard is read-only: set service.admin_token (CAPI_SYNC_SERVICE__ADMIN_TOKEN) to turn its actions on\n");
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same_secret(given, token.expose()) => Ok(()),
        _ => Err("send the admin token (service.admin_token) as `Authorization: Bearer <token>`\n"),
    }
}

fn unauthorized(why: &str) -> Response {
    let mut r = text(StatusCode::UNAUTHORIZED, why.to_string());
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"capi-sync\""),
    );
    r
}

/// Compares the digests in constant time, so neither the token's bytes nor its length show
/// in how long a wrong guess takes.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.as_slice().ct_eq(b.as_slice()).into()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn only_the_same_token_matches() {
        assert!(same_secret("a-long-admin-token-1", "a-long-admin-token-1"));
        assert!(!same_secret("a-long-admin-token-2", "a-long-admin-token-1"));
        assert!(!same_secret("", "a-long-admin-token-1"));
    }
}
