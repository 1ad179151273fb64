//! One model run: lock → describe → read → map → send → settle. Only this module decides,
//! from an error's class, whether to retry, split a batch, refuse rows or stop the run.

use crate::config::{Config, ModelConfig};
use crate::mapping::event::{Identifiers, IDENTIFIER_NAMES};
use crate::mapping::{MappedEvent, ModelPlan, Refusal};
use crate::observer::RunObserver;
use crate::sink::retry::RetryPolicy;
use crate::sink::{ErrorClass, GraphClient, GraphError, SinkError};
use crate::source::{LowerBound, ReadRange, SourceRow, Warehouse};
use crate::state::{
    CursorPosition, Delivered, LockProof, RefusedRow, RunCounters, Settlement, StateStore,
};
use deadline::{passed_deadline, AbortOnDrop};
pub use deadline::{OverdueRun, RunRegistry};
use early_ledger::EarlyLedger;
use futures::stream::{FuturesOrdered, StreamExt};
use futures::FutureExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

pub mod deadline;
pub mod early_ledger;

/// Everything a run needs, shared by the runs the scheduler starts.
#[derive(Clone)]
pub struct SyncContext {
    pub config: Arc<Config>,
    pub warehouse: Warehouse,
    pub state: StateStore,
    pub graph: GraphClient,
    pub cancel: CancellationToken,
    /// The runs in progress, for `/readyz`.
    pub runs: RunRegistry,
}

/// What a run reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Rows after the model's cursor (plus the lookback window).
    #[default]
    Incremental,
    /// The model's refused rows, re-read by key; the cursor does not move.
    RetryRefused,
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub mode: RunMode,
    /// Backfill: read rows whose cursor is at least this value, instead of after the cursor.
    pub from: Option<String>,
    /// `schedule`, `manual`, `demo`, ...
    pub trigger: String,
    /// Map everything, send nothing, move no cursor.
    pub dry_run: bool,
    /// Overrides the model's and the global test_event_code.
    pub test_event_code: Option<String>,
    /// Told about rows read, batches done, retries and the run's end (progress, metrics).
    pub observer: Option<Arc<dyn RunObserver>>,
    /// The schedule's fire time this run was due at (service runs), recorded with the run.
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    /// Stopped by shutdown after settling what was in flight.
    Cancelled,
    /// Another process holds the model's lock.
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub model: String,
    pub run_id: Option<i64>,
    pub status: RunStatus,
    pub counters: RunCounters,
    pub error: Option<String>,
    /// The first event sent (hashed, as sent), for demos and previews.
    pub sample_event: Option<String>,
    pub elapsed: Duration,
}

/// A row on its way: an event to send or a refusal to record.
#[derive(Debug)]
struct PendingEvent {
    event: MappedEvent,
    key: Vec<String>,
    cursor_text: String,
}

/// A batch: the events to send plus every row settled alongside them (refused rows, rows
/// already in the ledger), and the position of the last row it covers.
#[derive(Debug, Default)]
struct Batch {
    seq: u64,
    events: Vec<PendingEvent>,
    refused: Vec<RefusedRow>,
    changed: Vec<String>,
    /// Row keys of rows whose event the ledger already held.
    already_sent: Vec<Vec<String>>,
    last: Option<CursorPosition>,
}

impl Batch {
    fn for_events(capacity: usize) -> Batch {
        Batch {
            events: Vec::with_capacity(capacity),
            ..Batch::default()
        }
    }
}

struct BatchResult {
    batch: Batch,
    delivered: Vec<Delivered>,
    /// Row keys of delivered events already written to the ledger by the batch itself.
    recorded: Vec<Vec<String>>,
    meta_refused: Vec<RefusedRow>,
    /// Identifiers of the delivered events.
    coverage: Coverage,
    requests: i64,
    retries: i64,
    error: Option<SinkError>,
    /// `error` is the answer the batch was waiting to retry when shutdown came.
    stopped_by_shutdown: bool,
}

/// Why a run stops early. Either way the cursor stays at the last acknowledged batch.
enum Stop {
    Failed(String),
    /// Shutdown came while a batch waited to retry. Meta accepted none of it, so there is
    /// nothing to settle, and the next run sends it again.
    Shutdown,
}

fn refused_row(key: &[String], cursor: &str, r: Refusal) -> RefusedRow {
    RefusedRow {
        row_key: key.to_vec(),
        event_id: r.event_id,
        reason: r.reason.to_string(),
        detail: r.detail,
        meta_code: None,
        meta_subcode: None,
        cursor_value: Some(cursor.to_string()),
    }
}

/// Runs one model once, now.
pub async fn sync_model_once(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
) -> RunSummary {
    let started = Instant::now();
    let mut summary = RunSummary {
        model: model.name.clone(),
        run_id: None,
        status: RunStatus::Failed,
        counters: RunCounters::default(),
        error: None,
        sample_event: None,
        elapsed: Duration::ZERO,
    };
    let run_deadline = ctx.config.service.run_deadline;
    let deadline = tokio::time::Instant::now() + run_deadline;
    let _running = ctx.runs.enter(&model.name, deadline);
    let lock = match tokio::time::timeout_at(deadline, ctx.state.try_lock_model(&model.name))
        .await
        .unwrap_or_else(|_| Err(timed_out("taking the model's lock")))
    {
        Ok(Some(l)) => l,
        Ok(None) => {
            info!(model = %model.name, "another capi-sync process is syncing this model; skipping");
            summary.status = RunStatus::Skipped;
            summary.error = Some("another process holds this model's lock".into());
            return summary;
        }
        Err(e) => {
            summary.error = Some(format!(
                "cannot take the model's lock in the state database ({e}); check that it is reachable (state.url, or warehouse.url when they are the same)"
            ));
            return summary;
        }
    };
    let run_id = if opts.dry_run {
        None
    } else {
        match tokio::time::timeout_at(
            deadline,
            ctx.state
                .start_scheduled_run(&model.name, &opts.trigger, opts.scheduled_for),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("recording the run's start")))
        {
            Ok(id) => Some(id),
            Err(e) => {
                summary.error = Some(format!(
                    "cannot record the run in schema `{}` ({e}); run `capi-sync migrate` and check that the database role may write there",
                    ctx.config.state.schema
                ));
                release(lock).await;
                return summary;
            }
        }
    };
    summary.run_id = run_id;
    let span = info_span!("run", model = %model.name, run_id = run_id.unwrap_or(0));
    // The reading loop stops at the deadline; what is in flight then has the grace to settle.
    // Past that, the run is dropped, and its tasks with it (see `deadline`).
    let hard_stop = deadline + ctx.config.service.shutdown_grace;
    let proof = lock.proof();
    let result = tokio::time::timeout_at(
        hard_stop,
        run_inner(ctx, model, opts, run_id, deadline, proof, &mut summary).instrument(span),
    )
    .await
    .unwrap_or_else(|_| {
        Err(passed_deadline(
            run_deadline,
            &format!(
                "and what was in flight did not settle within service.shutdown_grace ({:?}); it was stopped where it stood",
                ctx.config.service.shutdown_grace
            ),
        ))
    });
    summary.elapsed = started.elapsed();
    match result {
        Ok(status) => summary.status = status,
        Err(message) => {
            summary.status = RunStatus::Failed;
            summary.error = Some(message);
        }
    }
    if let Some(id) = run_id {
        let finish = ctx.state.finish_run(
            id,
            summary.status.as_str(),
            &summary.counters,
            summary.error.as_deref(),
        );
        // Bounded like every wait of a run: a state database that stopped answering leaves
        // the row `running`, and the next run of the model closes it as interrupted.
        match tokio::time::timeout(END_TIMEOUT, finish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(model = %model.name, error = %e, "could not record the run's end"),
            Err(_) => warn!(model = %model.name, "recording the run's end timed out"),
        }
    }
    release(lock).await;
    if let Some(o) = &opts.observer {
        o.run_finished(&summary);
    }
    info!(
        model = %model.name,
        status = summary.status.as_str(),
        rows_read = summary.counters.rows_read,
        events_sent = summary.counters.events_sent,
        rows_refused = summary.counters.rows_refused,
        rows_already_sent = summary.counters.rows_already_sent,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "run finished"
    );
    summary
}

/// How long the run's end (its row in `runs`, the lock's session closing) may take.
const END_TIMEOUT: Duration = Duration::from_secs(15);

fn timed_out<T: From<sqlx::Error>>(what: &str) -> T {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} did not finish by the run's deadline (service.run_deadline)"),
    ))
    .into()
}

/// Closes the lock's session; if the state database does not answer, the session is dropped
/// (its socket closed), which frees the lock all the same once the server notices.
async fn release(lock: crate::state::ModelLock) {
    let _ = tokio::time::timeout(END_TIMEOUT, lock.release()).await;
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    ctx: &SyncContext,
    model: &ModelConfig,
    opts: &RunOptions,
    run_id: Option<i64>,
    deadline: tokio::time::Instant,
    lock: LockProof,
    summary: &mut RunSummary,
) -> Result<RunStatus, String> {
    let run_deadline = ctx.config.service.run_deadline;
    let (query, columns) = tokio::time::timeout_at(deadline, ctx.warehouse.describe(model))
        .await
        .map_err(|_| passed_deadline(run_deadline, "while describing the model's query"))?
        .map_err(|e| {
            format!(
                "{e}; check the model's SQL ({}); `capi-sync check {}` lists every problem",
                model.sql_origin, model.name
            )
        })?;
    let plan = Arc::new(ModelPlan::new(model, &columns).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        format!(
            "the model's columns do not map to events: {}; `capi-sync check {}` lists every problem",
            list.join("; "),
            model.name
        )
    })?);
    let plan_maps_event_id = plan.maps_event_id();
    let batch_size = model.batch_size;
    let (tx_rows, rx_rows) = mpsc::channel::<Vec<SourceRow>>(2);
    let warehouse = ctx.warehouse.clone();
    let reader_query = query.clone();
    let chunk = batch_size.max(100);
    let reader = match opts.mode {
        RunMode::Incremental => {
            let stored = ctx
                .state
                .cursor(&model.name)
                .await
                .map_err(|e| format!("cannot read the model's cursor ({e})"))?;
            let ranges = read_ranges(model, &query, stored, opts.from.clone())?;
            AbortOnDrop::spawn(async move {
                warehouse
                    .stream_rows(&reader_query, ranges, tx_rows, chunk)
                    .await
            })
        }
        RunMode::RetryRefused => {
            let keys = ctx
                .state
                .refused_keys(&model.name)
                .await
                .map_err(|e| e.to_string())?;
            summary.counters.rows_requested = keys.len() as i64;
            AbortOnDrop::spawn(async move {
                let mut total = 0u64;
                for part in keys.chunks(chunk) {
                    let mut rows = warehouse.rows_by_key(&reader_query, part).await?;
                    for r in &mut rows {
                        r.reread = true;
                    }
                    total += rows.len() as u64;
                    if tx_rows.send(rows).await.is_err() {
                        break;
                    }
                }
                Ok(total)
            })
        }
    };
    // Deliveries clear earlier refusals of the same rows; when the model has none (the usual
    // backfill), that statement is skipped.
    let clear_refused = opts.mode == RunMode::RetryRefused
        || ctx
            .state
            .has_refused(&model.name)
            .await
            .map_err(|e| e.to_string())?;

    // Rows read in this run cannot be in the ledger when the model has never delivered an
    // event (a first backfill): then the per-chunk lookups are skipped.
    let ledger_state = if ctx
        .state
        .has_deliveries(&model.name)
        .await
        .map_err(|e| format!("cannot read the delivery ledger ({e})"))?
    {
        Some(ctx.state.clone())
    } else {
        None
    };
    let (tx_mapped, mut rx_mapped) = mpsc::channel::<MappedChunk>(2);
    let mapper = AbortOnDrop::spawn(map_stage(
        plan,
        ledger_state,
        ctx.state.clone(),
        model.name.clone(),
        opts.mode,
        rx_rows,
        tx_mapped,
    ));

    let test_event_code = opts
        .test_event_code
        .clone()
        .or_else(|| model.test_event_code.clone())
        .or_else(|| ctx.config.meta.test_event_code.clone());
    let sender = BatchSender {
        graph: ctx.graph.clone(),
        pixel_id: model.pixel_id.clone(),
        test_event_code,
        policy: RetryPolicy::new(ctx.config.meta.max_attempts),
        throttled: Arc::new(AtomicU64::new(0)),
        model: model.name.clone(),
        observer: opts.observer.clone(),
        cancel: ctx.cancel.clone(),
        ledger: run_id.map(|run_id| {
            EarlyLedger::start(ctx.state.clone(), model.name.clone(), run_id, clear_refused)
        }),
    };
    let mut pacer = Pacer::new(ctx.config.meta.concurrency);
    let requests = RequestSlots::default();
    let settler = Settler::start(
        ctx.state.clone(),
        model.name.clone(),
        run_id,
        clear_refused,
        lock,
    );

    let mut in_flight: FuturesOrdered<AbortOnDrop<BatchResult>> = FuturesOrdered::new();
    let mut pending = Batch::for_events(batch_size);
    let mut seq = 0u64;
    let mut failure: Option<Stop> = None;
    let mut status = RunStatus::Succeeded;
    // Batches not yet settled: those with a request in flight, and as many again answered and
    // waiting for their ledger write.
    let mut taken = TakenIds::new(plan_maps_event_id, 2 * ctx.config.meta.concurrency);

    'read: loop {
        if ctx.cancel.is_cancelled() {
            status = RunStatus::Cancelled;
            break;
        }
        if tokio::time::Instant::now() > deadline {
            failure = Some(Stop::Failed(passed_deadline(run_deadline, "while reading")));
            break;
        }
        if let Some(e) = settler.failure() {
            failure = Some(Stop::Failed(e));
            break;
        }
        let mapped = tokio::select! {
            c = rx_mapped.recv() => c,
            _ = ctx.cancel.cancelled() => { status = RunStatus::Cancelled; break 'read; }
            // A warehouse read that stopped answering (a failover, a half-open connection)
            // is given up here rather than waited on.
            _ = tokio::time::sleep_until(deadline) => {
                failure = Some(Stop::Failed(passed_deadline(run_deadline, "while reading")));
                break 'read;
            }
        };
        let Some(mapped) = mapped else { break };
        let MappedChunkData {
            rows,
            outcomes,
            dropped,
            ledger,
            known_refusals,
        } = match mapped {
            Ok(m) => m,
            Err(e) => {
                failure = Some(Stop::Failed(e));
                break;
            }
        };
        summary.counters.rows_read += rows.len() as i64;
        if let Some(o) = &opts.observer {
            o.rows_read(&model.name, rows.len() as u64);
        }
        for d in dropped {
            *summary
                .counters
                .dropped_by_field
                .entry(format!("{}:{}", d.field, d.reason))
                .or_default() += 1;
        }

        let suspects = taken.suspects(
            outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok())
                .filter(|e| !ledger.contains_key(&e.event_id)),
        );
        let older: Older = if suspects.is_empty() {
            HashMap::new()
        } else {
            ctx.state
                .delivered_rows(&model.name, &suspects)
                .await
                .map_err(|e| format!("cannot read the delivery ledger ({e})"))?
        };
        let chunk_len = rows.len();
        for (i, (row, outcome)) in rows.into_iter().zip(outcomes).enumerate() {
            // A batch is cut when it holds `batch_size` events, or as many rows found already
            // sent (a re-read of delivered rows sends nothing; its batches only settle them).
            // The batch's position is only needed where a batch is cut and at the chunk's
            // end; cloning it for every row cost more than mapping some fields.
            let may_cut = (outcome.is_ok() && pending.events.len() + 1 >= batch_size)
                || pending.already_sent.len() + 1 >= batch_size;
            let position = (!row.reread && (may_cut || i + 1 == chunk_len)).then(|| row.position());
            match outcome {
                // A re-read row refused before (by us or by Meta) keeps its verdict until it
                // changes or `retry` is asked for; it is neither re-sent nor re-recorded.
                _ if row.reread && known_refusals.contains(&row.key) => {}
                Err(refusal) => {
                    pending
                        .refused
                        .push(refused_row(&row.key, &row.cursor_text, refusal))
                }
                Ok(event) => {
                    if let Some(fp) = ledger.get(&event.event_id) {
                        summary.counters.rows_already_sent += 1;
                        pending.already_sent.push(row.key);
                        if *fp != event.fingerprint() {
                            pending.changed.push(event.event_id.clone());
                        }
                    } else {
                        match taken.take(&event, &row.key, &older) {
                            Taken::SameRow { changed } => {
                                // The row changed after its first reading and moved further
                                // along the cursor. That reading's event is sent (or refused
                                // by Meta) in this run: not sent twice, not refused either.
                                summary.counters.rows_already_sent += 1;
                                if changed {
                                    pending.changed.push(event.event_id.clone());
                                }
                            }
                            Taken::OtherRow => pending.refused.push(refused_row(
                                &row.key,
                                &row.cursor_text,
                                Refusal::new(
                                    "duplicate_event_id",
                                    "another row in this run maps to the same event_id; Meta would count only one",
                                )
                                .with_event_id(Some(event.event_id.clone())),
                            )),
                            Taken::New => {
                                if summary.sample_event.is_none() {
                                    summary.sample_event = Some(event.json.clone());
                                }
                                pending.events.push(PendingEvent {
                                    event,
                                    key: row.key,
                                    cursor_text: row.cursor_text,
                                });
                            }
                        }
                    }
                }
            }
            if position.is_some() {
                pending.last = position;
            }
            if pending.events.len() >= batch_size || pending.already_sent.len() >= batch_size {
                seq += 1;
                taken.batch_cut();
                if let (Some(ledger), false) = (&sender.ledger, pending.refused.is_empty()) {
                    ledger.refusals.store(true, Ordering::Relaxed);
                }
                // The next batch's vector is made at its full size: grown by doubling, each
                // batch copied its events about twice over.
                let mut batch = std::mem::replace(&mut pending, Batch::for_events(batch_size));
                batch.seq = seq;
                if opts.dry_run {
                    count_dry(&mut summary.counters, &batch, &model.name, &opts.observer);
                    continue;
                }
                let slot = requests.acquire(pacer.limit).await;
                in_flight.push_back(AbortOnDrop::spawn(sender.clone().send_batch(batch, slot)));
                // Batches answered by Meta and waiting for their ledger write hold no request
                // slot; they are settled in order as they finish, and at most as many again
                // as requests in flight wait so.
                loop {
                    let done = if in_flight.len() >= pacer.limit + ctx.config.meta.concurrency {
                        in_flight.next().await
                    } else {
                        match in_flight.next().now_or_never() {
                            Some(done) => done,
                            None => break,
                        }
                    };
                    let Some(done) = done else { break };
                    if let Err(stop) = forward(&settler, model, summary, done).await {
                        failure = Some(stop);
                        break 'read;
                    }
                    pacer.after_batch(sender.throttled.load(Ordering::Relaxed), &model.name);
                }
            }
        }
    }
    drop(rx_mapped);
    // A run that stops early does not wait for its reader: the read may be the very thing
    // that stalled, and it holds a warehouse connection.
    if failure.is_some() || status != RunStatus::Succeeded {
        reader.abort();
        mapper.abort();
    }

    // The last partial batch goes only when the read finished normally.
    if failure.is_none()
        && status == RunStatus::Succeeded
        && (!pending.events.is_empty() || pending.last.is_some() || !pending.refused.is_empty())
    {
        seq += 1;
        let mut batch = std::mem::take(&mut pending);
        batch.seq = seq;
        if opts.dry_run {
            count_dry(&mut summary.counters, &batch, &model.name, &opts.observer);
        } else if batch.events.is_empty() {
            if let Some(o) = &opts.observer {
                o.batch_done(&model.name, 0, &batch.refused);
            }
            let empty = BatchResult {
                batch,
                delivered: vec![],
                recorded: vec![],
                meta_refused: vec![],
                coverage: Coverage::default(),
                requests: 0,
                retries: 0,
                error: None,
                stopped_by_shutdown: false,
            };
            in_flight.push_back(AbortOnDrop::spawn(async move { empty }));
        } else {
            let slot = requests.acquire(pacer.limit).await;
            in_flight.push_back(AbortOnDrop::spawn(sender.clone().send_batch(batch, slot)));
        }
    }
    // Whatever is in flight finishes and is recorded, even after a failure or on shutdown:
    // an acknowledged event always reaches the ledger.
    while let Some(done) = in_flight.next().await {
        if failure.is_some() {
            if let Ok(r) = done {
                record_acks_only(&settler, summary, r).await;
            }
            continue;
        }
        if let Err(stop) = forward(&settler, model, summary, done).await {
            failure = Some(stop);
        }
    }
    if let Some(ledger) = &sender.ledger {
        tracing::debug!(
            model = %model.name,
            transactions = ledger.writes(),
            "ledger transactions tried for acknowledged events"
        );
    }
    if let Err(e) = settler.finish().await {
        failure.get_or_insert(Stop::Failed(e));
    }

    summary.counters.throttles = sender.throttled.load(Ordering::Relaxed) as i64;
    let _ = mapper.await;
    match reader.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if failure.is_none() && status == RunStatus::Succeeded => {
            failure = Some(Stop::Failed(format!(
                "{e}; check the model's SQL ({})",
                model.sql_origin
            )));
        }
        Ok(Err(_)) => {}
        Err(e) if failure.is_none() && status == RunStatus::Succeeded => {
            failure = Some(Stop::Failed(format!("the warehouse reader stopped: {e}")))
        }
        Err(_) => {}
    }
    match failure {
        Some(Stop::Failed(f)) => Err(f),
        Some(Stop::Shutdown) => Ok(RunStatus::Cancelled),
        None => Ok(status),
    }
}

/// Event ids queued in this run. A row can be read twice in one run: changed after its first
/// reading, it moves further along the cursor and a later page returns it again, before its
/// first event is in the ledger (still in flight, or refused by Meta). That second reading
/// must be neither sent again nor refused as a duplicate; only another row repeating a
/// model's own `event_id` is a duplicate.
///
/// Memory stays constant whatever the run's size: ids of the last batches are kept exactly
/// (two generations, rotated every `batches_per_generation` batches, which covers every batch
/// not yet committed), and every id of the run goes into a fixed 4 MiB Bloom filter (a few
/// false positives per million new ids at a million ids, 6% at five million; each costs a
/// ledger lookup, batched per chunk). An id the filter may have seen but that is not recent
/// is settled by the ledger (`suspects` and `take`'s `older` argument); a false positive is
/// then found new and sent.
struct TakenIds {
    model_maps_event_id: bool,
    bloom: Vec<u64>,
    current: IdMap,
    previous: IdMap,
    batches_in_current: u64,
    batches_per_generation: u64,
}

/// Derived ids (32 hex digits) as numbers, other ids as text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdKey {
    Derived(u128),
    Other(String),
}

/// A derived id is already a uniform hash (SHA-256 bits): its bits are the map's hash, with
/// no SipHash pass per lookup (two lookups per event of a backfill). Other ids go through
/// XXH3 once.
impl std::hash::Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(match self {
            IdKey::Derived(n) => *n as u64 ^ (*n >> 64) as u64,
            IdKey::Other(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        })
    }
}

/// The hasher of [`IdKey`] maps: takes the one `u64` the key writes.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

type IdMap = HashMap<IdKey, Reading, std::hash::BuildHasherDefault<IdHasher>>;

#[derive(Debug, Clone)]
struct Reading {
    /// The row that took the id (own event ids only; derived ids embed their row).
    key: Option<Vec<String>>,
    /// A hash of the event as first read.
    hash: u64,
}

/// What the ledger says of an id the run may have taken earlier: its row and fingerprint.
type Older = HashMap<String, (Vec<String>, String)>;

enum Taken {
    New,
    /// The row that took the id, read again; `changed` when its event differs.
    SameRow {
        changed: bool,
    },
    OtherRow,
}

const BLOOM_BITS: usize = 1 << 25;
const BLOOM_PROBES: u64 = 8;
/// Batches not yet committed, beyond those in flight: the settle queue, the job being
/// committed, the batch being cut, and a margin.
const UNCOMMITTED_BEYOND_IN_FLIGHT: u64 = 8;

impl TakenIds {
    /// `max_in_flight`: the most batches sent and not yet settled (with a request in flight or
    /// waiting for their ledger write). An id stays recent for at least one generation after
    /// its batch is cut, so a generation spans every batch that can be uncommitted at once.
    fn new(model_maps_event_id: bool, max_in_flight: usize) -> TakenIds {
        TakenIds {
            model_maps_event_id,
            bloom: Vec::new(),
            current: IdMap::default(),
            previous: IdMap::default(),
            batches_in_current: 0,
            batches_per_generation: max_in_flight as u64 + UNCOMMITTED_BEYOND_IN_FLIGHT,
        }
    }

    fn id_key(&self, id: &str) -> IdKey {
        if !self.model_maps_event_id {
            if let Ok(n) = u128::from_str_radix(id, 16) {
                if id.len() == 32 {
                    return IdKey::Derived(n);
                }
            }
        }
        IdKey::Other(id.to_string())
    }

    fn id_hash(key: &IdKey) -> u128 {
        match key {
            IdKey::Derived(n) => *n,
            IdKey::Other(s) => xxhash_rust::xxh3::xxh3_128(s.as_bytes()),
        }
    }

    /// The filter's bits for an id: all in one 512-bit block (one cache line), so a check
    /// or an insert costs one memory access. The hash's low 16 bits pick the block and each
    /// probe takes its own next 9 bits, so no two probes of an id are derived from one
    /// another (probes computed as multiples of one number fall into a few hundred
    /// patterns, and ids sharing a block then matched each other's bits far more often).
    fn bloom_bits(key: &IdKey) -> impl Iterator<Item = usize> {
        const BLOCKS_LOG2: u32 = (BLOOM_BITS / 512).trailing_zeros();
        let h = Self::id_hash(key);
        let block = (h as usize & (BLOOM_BITS / 512 - 1)) * 512;
        (0..BLOOM_PROBES as u32).map(move |i| block + ((h >> (BLOCKS_LOG2 + 9 * i)) as usize & 511))
    }

    fn bloom_may_contain(&self, key: &IdKey) -> bool {
        !self.bloom.is_empty()
            && Self::bloom_bits(key).all(|bit| self.bloom[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn bloom_insert(&mut self, key: &IdKey) {
        if self.bloom.is_empty() {
            self.bloom = vec![0u64; BLOOM_BITS / 64];
        }
        for bit in Self::bloom_bits(key) {
            self.bloom[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn recent(&self, key: &IdKey) -> Option<&Reading> {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// Ids of these events that this run may have taken before, not among the recent ones:
    /// the caller asks the ledger about them.
    fn suspects<'a>(&self, events: impl Iterator<Item = &'a MappedEvent>) -> Vec<String> {
        events
            .filter(|e| {
                let k = self.id_key(&e.event_id);
                self.recent(&k).is_none() && self.bloom_may_contain(&k)
            })
            .map(|e| e.event_id.clone())
            .collect()
    }

    /// Called when a batch is cut: rotates the exact generations.
    fn batch_cut(&mut self) {
        self.batches_in_current += 1;
        if self.batches_in_current >= self.batches_per_generation {
            // Swapped and cleared, not reallocated: the maps keep their capacity.
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
            self.batches_in_current = 0;
        }
    }

    fn take(&mut self, event: &MappedEvent, key: &[String], older: &Older) -> Taken {
        let hash = event.digest as u64;
        let id = self.id_key(&event.event_id);
        if let Some(first) = self.recent(&id) {
            return match &first.key {
                Some(k) if k.as_slice() != key => Taken::OtherRow,
                _ => Taken::SameRow {
                    changed: first.hash != hash,
                },
            };
        }
        if let Some((row_key, fingerprint)) = older.get(&event.event_id) {
            return if row_key.as_slice() == key {
                Taken::SameRow {
                    changed: *fingerprint != event.fingerprint(),
                }
            } else {
                Taken::OtherRow
            };
        }
        self.bloom_insert(&id);
        let reading = Reading {
            key: matches!(id, IdKey::Other(_)).then(|| key.to_vec()),
            hash,
        };
        self.current.insert(id, reading);
        Taken::New
    }
}

/// A chunk of rows with what became of each, and what the ledger knows of them.
struct MappedChunkData {
    rows: Vec<SourceRow>,
    outcomes: Vec<Result<MappedEvent, Refusal>>,
    dropped: Vec<crate::mapping::DroppedValue>,
    /// Fingerprints of the chunk's events already delivered.
    ledger: HashMap<String, String>,
    /// Re-read rows (lookback) already recorded as refused.
    known_refusals: HashSet<Vec<String>>,
}

type MappedChunk = Result<MappedChunkData, String>;

/// Maps chunks on blocking threads, two at a time (order kept), and looks their event ids up
/// in the ledger, so the batching loop only assembles batches.
async fn map_stage(
    plan: Arc<ModelPlan>,
    ledger: Option<StateStore>,
    state: StateStore,
    model: String,
    mode: RunMode,
    mut rx_rows: mpsc::Receiver<Vec<SourceRow>>,
    tx_mapped: mpsc::Sender<MappedChunk>,
) {
    let mut jobs = FuturesOrdered::new();
    let mut input_open = true;
    loop {
        tokio::select! {
            rows = rx_rows.recv(), if input_open && jobs.len() < 2 => match rows {
                Some(rows) => {
                    let plan = plan.clone();
                    let ledger = ledger.clone();
                    let state = state.clone();
                    let model = model.clone();
                    jobs.push_back(async move { annotate(plan, ledger, state, model, mode, rows).await });
                }
                None => input_open = false,
            },
            Some(done) = jobs.next(), if !jobs.is_empty() => {
                if tx_mapped.send(done).await.is_err() {
                    return;
                }
            }
            else => return,
        }
    }
}

async fn annotate(
    plan: Arc<ModelPlan>,
    ledger: Option<StateStore>,
    state: StateStore,
    model: String,
    mode: RunMode,
    rows: Vec<SourceRow>,
) -> MappedChunk {
    let now = chrono::Utc::now().timestamp();
    let (rows, outcomes, dropped) = crate::map_pool::run(move || {
        let mut rows = rows;
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut dropped = Vec::new();
        for row in &mut rows {
            let out = plan.map_row(&row.values, &row.key, now);
            // The values are not needed past mapping: freed here, on a mapping thread, not
            // by the single task that batches the events.
            row.values = Vec::new();
            dropped.extend(out.dropped);
            outcomes.push(out.result);
        }
        (rows, outcomes, dropped)
    })
    .await?;
    let ledger = match ledger {
        Some(ledger) => {
            let ids: Vec<String> = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().map(|e| e.event_id.clone()))
                .collect();
            ledger
                .delivered_fingerprints(&model, &ids)
                .await
                .map_err(|e| format!("cannot read the delivery ledger ({e})"))?
        }
        None => HashMap::new(),
    };
    let known_refusals = if mode == RunMode::Incremental && rows.iter().any(|r| r.reread) {
        let keys: Vec<Vec<String>> = rows
            .iter()
            .zip(&outcomes)
            .filter(|(r, _)| r.reread)
            .map(|(r, _)| r.key.clone())
            .collect();
        state
            .refused_among(&model, &keys)
            .await
            .map_err(|e| e.to_string())?
    } else {
        HashSet::new()
    };
    Ok(MappedChunkData {
        rows,
        outcomes,
        dropped,
        ledger,
        known_refusals,
    })
}

/// Commits settled batches in order on its own task, so commits overlap with sending: the
/// cursor, refusals, run counters, and any ledger rows a batch could not write itself.
/// Batches that finish close together are merged into one transaction (group commit).
struct Settler {
    tx: Option<mpsc::Sender<SettleJob>>,
    task: AbortOnDrop<Result<(), String>>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

struct SettleJob {
    settlement: Settlement,
    counters: RunCounters,
}

impl Settler {
    fn start(
        state: StateStore,
        model: String,
        run_id: Option<i64>,
        clear_refused: bool,
        lock: LockProof,
    ) -> Settler {
        let (tx, mut rx) = mpsc::channel::<SettleJob>(2);
        let failed = Arc::new(std::sync::Mutex::new(None));
        let failed_task = failed.clone();
        let task = AbortOnDrop::spawn(async move {
            // Once this run has refused a row, a later delivery of that row in this run (it was
            // fixed, or moved to a new stage) must clear the refusal, even when the model had
            // none when the run started.
            let mut clear_refused = clear_refused;
            while let Some(first) = rx.recv().await {
                let mut merged = first.settlement;
                let mut counters = first.counters;
                while merged.delivered.len() < 20_000 {
                    match rx.try_recv() {
                        Ok(next) => {
                            merged.absorb(next.settlement);
                            counters = next.counters;
                        }
                        Err(_) => break,
                    }
                }
                merged.clear_refused = clear_refused;
                let Some(id) = run_id else { continue };
                if let Err(e) = state
                    .settle_holding(&model, id, &merged, &counters, lock)
                    .await
                {
                    let msg = format!(
                        "could not record acknowledged events and the cursor: {e}; the next run resumes at the last recorded batch"
                    );
                    *failed_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
                    return Err(msg);
                }
                clear_refused |= !merged.refused.is_empty();
            }
            Ok(())
        });
        Settler {
            tx: Some(tx),
            task,
            failed,
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn submit(&self, settlement: Settlement, counters: &RunCounters) -> Result<(), String> {
        let job = SettleJob {
            settlement,
            counters: counters.clone(),
        };
        match &self.tx {
            Some(tx) if tx.send(job).await.is_ok() => Ok(()),
            _ => Err(self
                .failure()
                .unwrap_or_else(|| "the state writer stopped".into())),
        }
    }

    async fn finish(mut self) -> Result<(), String> {
        self.tx.take();
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(format!("the state writer stopped unexpectedly: {e}")),
        }
    }
}

/// The ranges an incremental run reads: from a backfill point, or after the stored cursor,
/// plus the lookback window behind it for rows committed late with an earlier cursor value.
fn read_ranges(
    model: &ModelConfig,
    query: &crate::source::ModelQuery,
    stored: Option<CursorPosition>,
    from: Option<String>,
) -> Result<Vec<ReadRange>, String> {
    if !model.lookback.is_zero() && !query.cursor_is_time() {
        return Err(format!(
            "model `{}` sets lookback, but its cursor `{}` is not a timestamp or date column; remove lookback or use a time cursor",
            model.name, model.cursor
        ));
    }
    if let Some(v) = from {
        return Ok(vec![ReadRange {
            lower: LowerBound::CursorAtLeast(v),
            upper: None,
            reread: false,
        }]);
    }
    let Some(stored) = stored else {
        return Ok(vec![ReadRange {
            lower: LowerBound::Beginning,
            upper: None,
            reread: false,
        }]);
    };
    let mut ranges = Vec::new();
    if !model.lookback.is_zero() {
        ranges.push(ReadRange {
            lower: LowerBound::CursorWithin {
                cursor_value: stored.cursor_value.clone(),
                lookback: model.lookback,
            },
            upper: Some(stored.clone()),
            reread: true,
        });
    }
    ranges.push(ReadRange {
        lower: LowerBound::After(stored),
        upper: None,
        reread: false,
    });
    Ok(ranges)
}

fn count_dry(
    c: &mut RunCounters,
    batch: &Batch,
    model: &str,
    observer: &Option<Arc<dyn RunObserver>>,
) {
    if let Some(o) = observer {
        o.batch_done(model, batch.events.len() as u64, &batch.refused);
    }
    c.events_sent += batch.events.len() as i64;
    count_refused(c, &batch.refused);
    let mut coverage = Coverage::default();
    for e in &batch.events {
        coverage.add(e.event.identifiers);
    }
    coverage.apply(c);
}

/// Hands a finished batch to the settler, in order; a failed batch stops the run.
async fn forward(
    settler: &Settler,
    model: &ModelConfig,
    summary: &mut RunSummary,
    done: Result<BatchResult, tokio::task::JoinError>,
) -> Result<(), Stop> {
    let mut r =
        done.map_err(|e| Stop::Failed(format!("a batch task stopped unexpectedly: {e}")))?;
    summary.counters.requests += r.requests;
    summary.counters.retries += r.retries;
    if let Some(err) = r.error.take() {
        let stop = if r.stopped_by_shutdown {
            Stop::Shutdown
        } else {
            Stop::Failed(describe_failure(model, &err))
        };
        record_acks_only(settler, summary, r).await;
        return Err(stop);
    }
    let BatchResult {
        batch,
        delivered,
        recorded,
        meta_refused,
        coverage,
        ..
    } = r;
    let mut refused = batch.refused;
    refused.extend(meta_refused);
    let settlement = Settlement {
        position: batch.last,
        delivered,
        recorded,
        refused,
        already_sent: batch.already_sent,
        changed: batch.changed,
        clear_refused: false,
    };
    apply_counts(&mut summary.counters, &settlement, &coverage);
    settler
        .submit(settlement, &summary.counters)
        .await
        .map_err(Stop::Failed)
}

/// Records acknowledged events in the ledger without moving the cursor (the batch, or one
/// before it, failed): a later run then does not send them again.
async fn record_acks_only(settler: &Settler, summary: &mut RunSummary, r: BatchResult) {
    if r.delivered.is_empty() && r.recorded.is_empty() {
        return;
    }
    summary.counters.events_sent += (r.delivered.len() + r.recorded.len()) as i64;
    let settlement = Settlement {
        position: None,
        delivered: r.delivered,
        recorded: r.recorded,
        refused: vec![],
        already_sent: vec![],
        changed: vec![],
        clear_refused: false,
    };
    if let Err(e) = settler.submit(settlement, &summary.counters).await {
        warn!(error = %e, "could not record acknowledged events of a failed run");
    }
}

fn apply_counts(c: &mut RunCounters, s: &Settlement, coverage: &Coverage) {
    c.events_sent += s.acknowledged() as i64;
    count_refused(c, &s.refused);
    coverage.apply(c);
}

fn count_refused(c: &mut RunCounters, refused: &[RefusedRow]) {
    for r in refused {
        c.rows_refused += 1;
        *c.refused_by_reason.entry(r.reason.clone()).or_default() += 1;
    }
}

/// Events per identifier (bit `i` of [`Identifiers`]), counted in a fixed array and added to
/// the run's map once per batch: this runs for every event of a backfill.
#[derive(Debug, Default)]
struct Coverage([i64; IDENTIFIER_NAMES.len()]);

impl Coverage {
    fn add(&mut self, ids: Identifiers) {
        for (i, n) in self.0.iter_mut().enumerate() {
            *n += i64::from(ids.0 >> i & 1 == 1);
        }
    }

    fn apply(&self, c: &mut RunCounters) {
        for (name, &n) in IDENTIFIER_NAMES.iter().zip(&self.0) {
            if n > 0 {
                *c.coverage.entry(name.to_string()).or_default() += n;
            }
        }
    }
}

fn describe_failure(model: &ModelConfig, err: &SinkError) -> String {
    match err.class() {
        ErrorClass::Auth => format!(
            "Meta refused the credentials for pixel {} ({err}); check meta.access_token and that the token's system user has access to this pixel/dataset (`capi-sync check {}` tests the token without sending)",
            model.pixel_id, model.name
        ),
        ErrorClass::Throttled => format!("Meta kept throttling the requests ({err}); retries ran out, the next run resumes at the last acknowledged batch"),
        ErrorClass::Transient => format!("the Graph API did not accept the batch after retries ({err}); the next run resumes at the last acknowledged batch"),
        ErrorClass::Invalid => format!(
            "Meta rejected a batch ({err}); check meta.graph_url, meta.api_version and the model's pixel_id (`capi-sync check {}` tests them)",
            model.name
        ),
        ErrorClass::Unexpected => format!("an error capi-sync does not classify stopped the run ({err}); nothing was refused, the next run resumes at the last acknowledged batch"),
        ErrorClass::NotGraph => format!(
            "the answer is not the Graph API's ({err}); nothing was refused, the next run resumes at the last acknowledged batch. Check meta.graph_url and any proxy on the way to Meta (`capi-sync check {}` tests it){}",
            model.name,
            if err.status() == Some(413) {
                "; a 413 comes from a proxy that limits request bodies: raise its limit or lower meta.batch_size"
            } else {
                ""
            }
        ),
    }
}

#[derive(Clone)]
struct BatchSender {
    graph: GraphClient,
    pixel_id: String,
    test_event_code: Option<String>,
    policy: RetryPolicy,
    /// Throttled answers seen by any batch of this run.
    throttled: Arc<AtomicU64>,
    model: String,
    observer: Option<Arc<dyn RunObserver>>,
    cancel: CancellationToken,
    /// Where acknowledged events are written as soon as Meta answers (runs that record).
    ledger: Option<EarlyLedger>,
}

/// Usage (percent of a Meta rate limit) at which we slow down before being throttled.
const NEAR_LIMIT_PERCENT: u32 = 90;

/// Requests to Meta in flight for one run. A batch holds its slot from before its first
/// request until Meta's last answer, not through its ledger write, so a busy ledger writer
/// does not hold back the next requests (with eight in flight, the batching loop used to wait
/// on the oldest batch's write while the other seven had long been answered).
#[derive(Default)]
struct RequestSlots {
    busy: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

/// One request slot; freed when dropped.
struct RequestSlot {
    busy: Arc<AtomicUsize>,
    freed: Arc<Notify>,
}

impl RequestSlots {
    /// Waits until fewer than `limit` slots are taken, then takes one. Only the batching loop
    /// takes slots.
    async fn acquire(&self, limit: usize) -> RequestSlot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.busy.load(Ordering::Acquire) < limit.max(1) {
                self.busy.fetch_add(1, Ordering::AcqRel);
                return RequestSlot {
                    busy: self.busy.clone(),
                    freed: self.freed.clone(),
                };
            }
            freed.await;
        }
    }

    #[cfg(test)]
    fn taken(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.busy.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Requests in flight for one model: halved when Meta throttles, grown back by one after
/// a run of calm batches (additive increase, multiplicative decrease).
struct Pacer {
    limit: usize,
    max: usize,
    seen_throttles: u64,
    calm: u32,
}

impl Pacer {
    fn new(max: usize) -> Pacer {
        Pacer {
            limit: max.max(1),
            max: max.max(1),
            seen_throttles: 0,
            calm: 0,
        }
    }

    fn after_batch(&mut self, throttles: u64, model: &str) {
        if throttles > self.seen_throttles {
            self.seen_throttles = throttles;
            self.calm = 0;
            let lower = (self.limit / 2).max(1);
            if lower < self.limit {
                warn!(
                    model,
                    in_flight = lower,
                    "Meta is throttling; lowering requests in flight"
                );
            }
            self.limit = lower;
        } else if self.limit < self.max {
            self.calm += 1;
            if self.calm >= 8 {
                self.calm = 0;
                self.limit += 1;
            }
        }
    }
}

impl BatchSender {
    async fn send_batch(self, batch: Batch, slot: RequestSlot) -> BatchResult {
        let span = info_span!("batch", seq = batch.seq, events = batch.events.len());
        async move {
            let started = Instant::now();
            let mut result = BatchResult {
                delivered: Vec::with_capacity(batch.events.len()),
                recorded: Vec::new(),
                meta_refused: Vec::new(),
                coverage: Coverage::default(),
                requests: 0,
                retries: 0,
                error: None,
                stopped_by_shutdown: false,
                batch: Batch::default(),
            };
            // The whole batch's body is built once, and each event's JSON is freed: retries
            // resend this body, and a part of the batch (bisecting a rejected request) is
            // copied out of it, so a batch in flight holds its events once, not twice.
            let mut batch = batch;
            let (full_body, spans) = if batch.events.is_empty() {
                // Only rows found already sent or refused: nothing to send.
                (bytes::Bytes::new(), Vec::new())
            } else {
                let events: Vec<&str> = batch.events.iter().map(|e| e.event.json.as_str()).collect();
                self.graph
                    .body_with_spans(&events, self.test_event_code.as_deref())
            };
            for e in &mut batch.events {
                e.event.json = String::new();
            }
            let all: Vec<usize> = (0..batch.events.len()).collect();
            // The trace id of the request that delivered each event (the outer `Some`).
            let mut acked: Vec<Option<Option<Arc<str>>>> = vec![None; batch.events.len()];
            // Bisect on code 100 with an event subcode (`ErrorClass::Invalid`, see
            // `sink::classify`): Meta rejects a whole request for one invalid event, so we
            // split until each bad event stands alone (about log2(n) extra requests each).
            // Any other failure stops the batch with nothing refused.
            let mut stack: Vec<Vec<usize>> = vec![all];
            while let Some(part) = stack.pop() {
                if part.is_empty() {
                    continue;
                }
                let body = if part.len() == spans.len() {
                    full_body.clone()
                } else {
                    let events: Vec<&[u8]> =
                        part.iter().map(|&i| &full_body[spans[i].clone()]).collect();
                    self.graph.body(&events, self.test_event_code.as_deref())
                };
                match self.send_with_retries(body, part.len(), &mut result).await {
                    Ok(trace) => {
                        let trace: Option<Arc<str>> = trace.map(Into::into);
                        for &i in &part {
                            acked[i] = Some(trace.clone());
                        }
                    }
                    Err(err) if err.class() == ErrorClass::Invalid => {
                        if part.len() == 1 {
                            let e = &batch.events[part[0]];
                            result.meta_refused.push(meta_refusal(e, &err));
                        } else {
                            let (a, b) = part.split_at(part.len() / 2);
                            stack.push(b.to_vec());
                            stack.push(a.to_vec());
                        }
                    }
                    Err(err) => {
                        result.error = Some(err);
                        break;
                    }
                }
            }
            // Meta has answered (or the batch failed): the next batch may send while this
            // one's events go into the ledger.
            drop(slot);
            if let Some(o) = &self.observer {
                o.batch_latency(&self.model, started.elapsed());
                // A failed batch's refusals are not settled: the next run finds them again.
                let mut refused = Vec::new();
                if result.error.is_none() {
                    refused.extend(batch.refused.iter().cloned());
                    refused.extend(result.meta_refused.iter().cloned());
                }
                let delivered = acked.iter().filter(|a| a.is_some()).count();
                o.batch_done(&self.model, delivered as u64, &refused);
            }
            drop(full_body);
            // The batch waits for the ones before it and for its commit. Its events move into
            // the ledger's rows (the ledger keeps fingerprints, not the JSON), so nothing is
            // copied.
            for (event, trace) in std::mem::take(&mut batch.events).into_iter().zip(acked) {
                let Some(fbtrace_id) = trace else { continue };
                result.coverage.add(event.event.identifiers);
                result.delivered.push(Delivered {
                    fingerprint: event.event.fingerprint(),
                    row_key: event.key,
                    event_id: event.event.event_id,
                    event_name: event.event.event_name,
                    event_time: event.event.event_time,
                    fbtrace_id,
                });
            }
            if let (Some(ledger), false) = (&self.ledger, result.meta_refused.is_empty()) {
                ledger.refusals.store(true, Ordering::Relaxed);
            }
            if let (Some(ledger), false) = (&self.ledger, result.delivered.is_empty()) {
                // Written now by the run's ledger writer; if that fails, the settler writes
                // them with the cursor as before.
                match ledger.record(std::mem::take(&mut result.delivered)).await {
                    (rows, Ok(())) => {
                        result.recorded = rows.into_iter().map(|d| d.row_key).collect();
                    }
                    (rows, Err(e)) => {
                        warn!(
                            error = %e,
                            "could not record acknowledged events yet; they are recorded with the cursor"
                        );
                        result.delivered = rows;
                    }
                }
            }
            result.batch = batch;
            result
        }
        .instrument(span)
        .await
    }

    /// One request body of `events` events, sent until Meta accepts it or the retry policy
    /// gives up.
    async fn send_with_retries(
        &self,
        body: bytes::Bytes,
        events: usize,
        result: &mut BatchResult,
    ) -> Result<Option<String>, SinkError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            result.requests += 1;
            match self.graph.send(&self.pixel_id, body.clone(), events).await {
                Ok(ack) => {
                    // Meta's usage headers warn before it throttles: near the limit, slow
                    // down as if throttled so the pixel is never blocked.
                    if ack.usage_percent.is_some_and(|p| p >= NEAR_LIMIT_PERCENT) {
                        self.throttled.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            usage_percent = ack.usage_percent,
                            "Meta reports rate-limit usage near its limit; lowering requests in flight"
                        );
                    }
                    return Ok(ack.fbtrace_id);
                }
                Err(err) => {
                    let class = err.class();
                    match self.policy.delay(
                        class,
                        attempt,
                        err.retry_after(),
                        rand::random::<f64>(),
                    ) {
                        Some(wait) => {
                            result.retries += 1;
                            if class == ErrorClass::Throttled {
                                self.throttled.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(o) = &self.observer {
                                o.retry(&self.model, class);
                            }
                            warn!(
                                class = ?class,
                                attempt,
                                wait_ms = wait.as_millis() as u64,
                                error = %err,
                                "batch not accepted; retrying"
                            );
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                // Shutdown does not wait out a backoff (up to minutes when
                                // throttled): this part was not accepted, so it is dropped
                                // and the next run sends it from the cursor. A request
                                // already on the wire is still awaited above: its answer may
                                // be an acknowledgement to record.
                                _ = self.cancel.cancelled() => {
                                    result.stopped_by_shutdown = true;
                                    return Err(err);
                                }
                            }
                        }
                        None => return Err(err),
                    }
                }
            }
        }
    }
}

fn meta_refusal(e: &PendingEvent, err: &SinkError) -> RefusedRow {
    let g: GraphError = err.graph_error().cloned().unwrap_or_default();
    let text = g
        .error_user_msg
        .clone()
        .or(g.error_user_title.clone())
        .unwrap_or_else(|| g.message.clone());
    RefusedRow {
        row_key: e.key.clone(),
        event_id: Some(e.event.event_id.clone()),
        reason: "rejected_by_meta".into(),
        detail: format!(
            "Meta rejected the event (code {}{}): {}",
            g.code,
            g.error_subcode.map(|s| format!("/{s}")).unwrap_or_default(),
            text.chars().take(300).collect::<String>()
        ),
        meta_code: Some(g.code as i32),
        meta_subcode: g.error_subcode.map(|s| s as i32),
        cursor_value: Some(e.cursor_text.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, json: &str) -> MappedEvent {
        MappedEvent::new(id.into(), "Lead".into(), 1, json.into(), Default::default())
    }

    fn derived(i: u32) -> String {
        crate::mapping::derive_event_id("m", &[i.to_string()], "Lead")
    }

    /// Every false positive of the filter is a ledger lookup in the batching loop. At a
    /// million ids a sound 4 MiB filter gives a few; probes that were multiples of one
    /// number gave several hundred.
    #[test]
    fn the_filter_rarely_mistakes_a_new_id_at_a_million() {
        let mut t = TakenIds::new(false, 4);
        // SplitMix64: ids spread like derived ones (SHA-256 bits).
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut key = || IdKey::Derived(u128::from(next()) << 64 | u128::from(next()));
        for _ in 0..1_000_000 {
            let k = key();
            t.bloom_insert(&k);
        }
        let false_positives = (0..1_000_000)
            .filter(|_| t.bloom_may_contain(&key()))
            .count();
        assert!(
            false_positives < 50,
            "{false_positives} false positives in a million"
        );
    }

    #[test]
    fn a_row_read_again_soon_is_the_same_row() {
        let mut t = TakenIds::new(false, 4);
        let none = Older::new();
        let id = derived(1);
        assert!(matches!(
            t.take(&event(&id, "{a}"), &["1".into()], &none),
            Taken::New
        ));
        assert!(matches!(
            t.take(&event(&id, "{b}"), &["1".into()], &none),
            Taken::SameRow { changed: true }
        ));
    }

    #[test]
    fn an_old_id_is_settled_by_the_ledger_not_kept_in_memory() {
        let mut t = TakenIds::new(false, 4);
        let none = Older::new();
        let id = derived(7);
        assert!(matches!(
            t.take(&event(&id, "{a}"), &["7".into()], &none),
            Taken::New
        ));
        for _ in 0..(2 * t.batches_per_generation) {
            t.batch_cut();
        }
        assert!(t.current.is_empty() && t.previous.is_empty());
        // The filter still remembers it, so the ledger is asked.
        assert_eq!(t.suspects([event(&id, "{a}")].iter()), vec![id.clone()]);
        let e = event(&id, "{a}");
        let mut older = Older::new();
        older.insert(id.clone(), (vec!["7".into()], e.fingerprint()));
        assert!(matches!(
            t.take(&e, &["7".into()], &older),
            Taken::SameRow { changed: false }
        ));
    }

    #[test]
    fn another_row_with_the_same_own_event_id_is_a_duplicate() {
        let mut t = TakenIds::new(true, 4);
        let none = Older::new();
        assert!(matches!(
            t.take(&event("order-9", "{a}"), &["1".into()], &none),
            Taken::New
        ));
        assert!(matches!(
            t.take(&event("order-9", "{a}"), &["2".into()], &none),
            Taken::OtherRow
        ));
    }

    #[test]
    fn the_filter_rarely_suspects_a_new_id() {
        let mut t = TakenIds::new(false, 4);
        let none = Older::new();
        for i in 0..200_000 {
            t.take(&event(&derived(i), "{}"), &[i.to_string()], &none);
        }
        for _ in 0..(2 * t.batches_per_generation) {
            t.batch_cut();
        }
        let fresh: Vec<MappedEvent> = (200_000..300_000)
            .map(|i| event(&derived(i), "{}"))
            .collect();
        let false_hits = t.suspects(fresh.iter()).len();
        assert!(false_hits < 100, "{false_hits} of 100000 new ids suspected");
        let old: Vec<MappedEvent> = (0..1000).map(|i| event(&derived(i), "{}")).collect();
        assert_eq!(
            t.suspects(old.iter()).len(),
            1000,
            "no taken id may be missed"
        );
    }

    #[tokio::test]
    async fn a_request_slot_is_taken_again_only_once_one_is_dropped() {
        let slots = RequestSlots::default();
        let first = slots.acquire(2).await;
        let _second = slots.acquire(2).await;
        assert_eq!(slots.taken(), 2);
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire(2)).await;
        assert!(
            third.is_err(),
            "a third slot was given while two of two were taken"
        );
        drop(first);
        let _third = tokio::time::timeout(Duration::from_secs(5), slots.acquire(2))
            .await
            .expect("a slot is free again");
        assert_eq!(slots.taken(), 2);
        // A lower limit (Meta throttling) is honoured by the next acquire.
        let fourth = tokio::time::timeout(Duration::from_millis(50), slots.acquire(1)).await;
        assert!(fourth.is_err());
    }

    #[test]
    fn pacer_halves_on_throttling_and_recovers_slowly() {
        let mut p = Pacer::new(16);
        p.after_batch(1, "m");
        assert_eq!(p.limit, 8);
        p.after_batch(3, "m");
        assert_eq!(p.limit, 4);
        for _ in 0..8 {
            p.after_batch(3, "m");
        }
        assert_eq!(p.limit, 5);
        let mut floor = Pacer::new(1);
        floor.after_batch(5, "m");
        assert_eq!(floor.limit, 1);
    }
}
