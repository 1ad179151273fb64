//! Sandbox: a local stand-in for the Graph API `POST /vNN.N/{pixel_or_dataset_id}/events`
//! endpoint of Meta's Conversions API, validating requests as strictly as Meta documents.
//!
//! Used by `capi-sync sandbox` (offline testing), by the integration tests (started in-process
//! with [`start`]) and by the benchmarks. It depends on nothing of capi-sync, so that it stays
//! a separate check of what capi-sync sends (the compiler holds that: this crate cannot see it).
//!
//! # Requests
//! * `POST /vNN.N/{numeric id}/events` only; anything else is HTTP 400, code 100, subcode 33
//!   ("Unsupported post request", type `GraphMethodException`).
//! * Access token from the `access_token` query parameter, an `access_token` body field (JSON,
//!   form or multipart) or `Authorization: Bearer T`. Every token given must be valid. Missing or
//!   wrong: HTTP 401, code 190, "Invalid OAuth access token - Cannot parse access token". The
//!   token is never logged nor echoed.
//! * Bodies: `application/json` (an object with `data`), `application/x-www-form-urlencoded`
//!   and `multipart/form-data` (text fields; `data` is a JSON-encoded array). Elements of `data`
//!   may be objects or JSON strings holding an object (Python SDK style). Top-level keys other
//!   than `data`, `access_token`, `appsecret_proof` (not checked), `test_event_code`,
//!   `partner_agent`, `namespace_id`, `upload_id`, `upload_tag`, `upload_source` are rejected.
//! * Order of checks: route, body syntax, token, injected fail/throttle faults, events.
//!
//! # Error codes and subcodes
//! All payload errors are HTTP 400, code 100, type `OAuthException`, `is_transient: false`.
//! Messages name the event index and field (`data[3].user_data.em[0]`), never a value.
//!
//! | rule | subcode | status of the subcode |
//! |---|---|---|
//! | bad method/path/version/id | 33 | observed (Graph) |
//! | body not decodable, unknown top-level key, `data` missing or not an array, element not an object | none (generic `(#100)`) | Graph style |
//! | 0 or more than 1,000 events | 2804001 | UNCONFIRMED, chosen |
//! | `event_time` older than 7 days (62 for `physical_store`) | 2804003 | observed |
//! | `event_time` more than 10 minutes in the future | 2804004 | UNCONFIRMED, chosen |
//! | missing required field (`event_name`, `event_time`, `action_source`, `user_data`; `event_source_url` and `user_data.client_user_agent` for website; `app_data.*` for app; `custom_data.lead_event_source` for CRM) | 2804007 | UNCONFIRMED, chosen |
//! | wrong type/value of an event field (event_time not an integer, unknown action_source, empty event_id, opt_out not bool, unknown event key, bad `extinfo`, ...) and **injected rejections** (`reject_rate`, `reject_event_ids`) | 2804016 | UNCONFIRMED, chosen |
//! | unknown `user_data` key, wrong type, bad IP, bad `fbc`/`fbp`, null value | 2804017 | UNCONFIRMED, chosen |
//! | Purchase without numeric `value` or valid `currency`; `value` not a number; currency not ISO 4217 | 2804019 | UNCONFIRMED (one third-party fixture) |
//! | LDU without `data_processing_options_country` (0/1) and `_state` (0 or 1000-range) | 2804030 | historical (2020) |
//! | `lead_id` not a JSON integer of 15-17 digits | 2804036 | third-party capture |
//! | hashed key (`em ph fn ln ct st zp country db ge`) not lowercase 64-hex (+ optional `.` 8-char appendix): unhashed PII | 2804048 | UNCONFIRMED, chosen |
//! | no identifier, or only a subset of {ct,country,st,zp,ge,client_user_agent}, {db,client_user_agent}, {fn,ge}, {ln,ge} | 2804050 | observed |
//! | `business_messaging` without the channel's ids | 2804116 | third-party capture |
//!
//! Deliberate choices where Meta is silent or lenient:
//! * `lead_id` must be a JSON integer; a digit string is rejected (Meta: UNCONFIRMED). capi-sync
//!   sends integers, so a regression to strings shows up here.
//! * Website events need `client_user_agent` although one live capture saw Meta accept an event
//!   without it: the docs require it.
//! * `null` values in `user_data` are rejected (omit the key); an empty array counts as absent.
//! * Unknown event-level keys are rejected.
//!
//! Injected faults: HTTP 500 code 2 `is_transient: true` (fail); HTTP 400 code 17 subcode 2446079
//! `is_transient: true` with `Retry-After: 1` (throttle); see [`Faults`].
//!
//! Misanswers ([`SandboxHandle::misanswer`], for a window of requests): a web server's 404 or 405
//! HTML page, a proxy's 413 page or 302 redirect, a load balancer's 502 page, a 2xx with junk,
//! without `events_received` or over 2 MiB, a Graph envelope with an unknown code (12345) or a
//! code 100 without a subcode. These are what a sender sees when `graph_url` leads elsewhere.
//!
//! Success: HTTP 200 `{"events_received": n, "messages": [], "fbtrace_id": "..."}`.
//!
//! `GET /vNN.N/dataset_quality?dataset_id=...&fields=web{...}` answers Meta's Dataset Quality
//! API with scores derived from the events received for that pixel (see `quality.rs`).
//!
//! `GET /vNN.N/{numeric id}` (any query, e.g. `?fields=id`) with a valid token answers
//! `{"id": "<id>"}`: the request `capi-sync check` makes to prove the token works without
//! creating an event. A missing or wrong token gets the same 401/190 as a POST.

mod count_only;
mod currency;
mod error;
mod faults;
mod json;
mod misanswer;
mod quality;
mod record;
mod request;
mod server;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::faults::Faults;
pub use self::misanswer::{Misanswer, OVERSIZED_BYTES, UNKNOWN_CODE};
pub use self::quality::{composite_score, IDENTIFIERS};

/// Sandbox settings. `Debug` redacts the token.
#[derive(Clone, Default)]
pub struct SandboxConfig {
    /// Required access token; `None` accepts any non-empty token.
    pub token: Option<String>,
    /// Append each accepted event as one compact JSON line (the event object as received, after
    /// un-stringifying; keys come out in sorted order).
    pub record: Option<PathBuf>,
    pub faults: Faults,
    /// Keep accepted events in memory for [`SandboxHandle::events`] (tests; off for the CLI).
    pub keep_in_memory: bool,
    /// Answer every authenticated JSON events request with its count of `data` entries,
    /// without validating the events: for benchmarks that
    /// measure the sender, with an endpoint that costs next to nothing. Never for tests of what
    /// is sent.
    pub count_only: bool,
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("record", &self.record)
            .field("faults", &self.faults)
            .field("keep_in_memory", &self.keep_in_memory)
            .field("count_only", &self.count_only)
            .finish()
    }
}

/// Counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SandboxStats {
    /// Every HTTP request received.
    pub requests: u64,
    /// Requests whose events were accepted (including dropped acknowledgements).
    pub accepted_requests: u64,
    /// Requests rejected as invalid (route, auth, payload, injected rejections).
    pub rejected_requests: u64,
    /// Rejected requests by Graph error code (100, 190).
    pub rejected_by_code: BTreeMap<i64, u64>,
    /// Rejected requests by error subcode (when the error has one).
    pub rejected_by_subcode: BTreeMap<i64, u64>,
    /// Injected HTTP 500 failures (and record-file write failures).
    pub failed: u64,
    /// Injected throttling answers.
    pub throttled: u64,
    /// Accepted requests whose acknowledgement was dropped.
    pub dropped: u64,
    /// Events accepted (and recorded).
    pub events_accepted: u64,
    /// Requests answered with a [`Misanswer`].
    pub misanswered: u64,
    /// The `test_event_code` of the last accepted request that carried one.
    pub last_test_event_code: Option<String>,
    /// The most requests being answered at once (Meta limits requests per pixel and app).
    pub max_in_flight: u64,
}

/// A running sandbox. Dropping it stops the server without waiting; prefer [`Self::shutdown`].
pub struct SandboxHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the value for the config's Graph base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepted events (only with `keep_in_memory`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stats(&self) -> SandboxStats {
        self.shared.stats()
    }

    /// Replaces the faults at runtime (the random generator is re-seeded from `faults.seed`).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.set(faults);
    }

    /// The next `n` authenticated requests get an injected HTTP 500 transient error.
    pub fn fail_next(&self, n: u32) {
        self.shared.faults.fail_next(n);
    }

    /// Once this many requests were accepted, every request fails with HTTP 500 until cleared
    /// with `u64::MAX`.
    pub fn fail_after(&self, accepted_requests: u64) {
        self.shared.faults.fail_after(accepted_requests);
    }

    /// Answers like something other than the Graph API (see [`Misanswer`]): counted from now,
    /// requests are answered normally `skip` times, then `count` requests (of any route,
    /// before any check) get `answer`, then the sandbox answers normally again. `count` =
    /// `u64::MAX` misanswers from then on; a new call replaces the previous window.
    pub fn misanswer(&self, answer: Misanswer, skip: u64, count: u64) {
        *self
            .shared
            .misanswer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(misanswer::Window {
            answer,
            skip,
            count,
            seen: 0,
        });
    }

    /// From now on `GET /vNN.N/dataset_quality` for this pixel answers code 10, as Meta does
    /// when the app or user lacks the permission to read the dataset's quality.
    pub fn deny_quality(&self, pixel_id: &str) {
        self.shared.quality.deny(pixel_id);
    }

    /// Whether `fields=offline{...}` of the Dataset Quality API is served (on by default). Off,
    /// it answers code 100, as for an app without the offline beta.
    pub fn set_offline_quality_beta(&self, on: bool) {
        self.shared.quality.set_offline_beta(on);
    }

    /// Stops accepting, finishes in-flight requests (at most 10 s), flushes the record file.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(rec) = &self.shared.recorder {
            rec.close().await;
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts a sandbox on `addr` (port 0 picks a free port) and returns at once.
pub async fn start(addr: SocketAddr, config: SandboxConfig) -> std::io::Result<SandboxHandle> {
    let recorder = match &config.record {
        Some(path) => Some(record::Recorder::open(path)?),
        None => None,
    };
    let listener = server::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(server::Shared {
        token: config.token,
        faults: faults::FaultState::new(config.faults),
        recorder,
        keep_in_memory: config.keep_in_memory,
        count_only: config.count_only,
        events: Mutex::new(Vec::new()),
        counters: Default::default(),
        last_test_event_code: Mutex::new(None),
        misanswer: Mutex::new(None),
        quality: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server::accept_loop(
        listener,
        shared.clone(),
        shutdown.clone(),
    ));
    Ok(SandboxHandle {
        addr,
        shared,
        shutdown,
        task: Some(task),
    })
}

/// For the CLI: runs until `shutdown` is cancelled, then drains and flushes. Prints nothing.
pub async fn serve(
    addr: SocketAddr,
    config: SandboxConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let handle = start(addr, config).await?;
    shutdown.cancelled().await;
    handle.shutdown().await;
    Ok(())
}
